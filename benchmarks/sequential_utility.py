"""Where a stream of small deletion requests loses utility: per-step retain/test accuracy of RFA's output against its input.

    python benchmarks/sequential_utility.py                          # 10 requests of 14 digits samples, seeds 0..2, each variant
    python benchmarks/sequential_utility.py --seeds 1 --per-step     # also every step of every run
    python benchmarks/sequential_utility.py --variant "small lr:lr=1e-3,epochs=30"

The requests are those of sequential_digits.py (the same original, the same 14-sample sets per seed), applied
one after another with `apply_request` (each on the previous output, through the ledger). A variant is RFA
parameters and whether `apply --anchor ORIGINAL` is given. Accuracy is the apply summary's, on every test and
retained sample; "cap" counts the steps that ended on the epochs limit rather than on the
stopping rule.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sequential_digits as S  # noqa: E402
from unlearn_tool.pipeline import apply_request  # noqa: E402

VARIANTS = ["default", "anchor:anchor", "w_forget=1:w_forget=1", "lr=3e-3:lr=3e-3,epochs=10", "lr=1e-3:lr=1e-3,epochs=30",
            "epochs=10:epochs=10"]


def parse_variant(text: str) -> tuple[str, dict, bool]:
    """'name:k=v,k=v[,anchor]' -> (name, RFA params, anchored)."""
    from unlearn_tool.request import parse_key_values

    name, _, spec = text.partition(":")
    items = [s for s in spec.split(",") if s]
    return name, parse_key_values([s for s in items if s != "anchor"]), "anchor" in items


def stream(folder: Path, seed: int, steps: int, params: dict, anchored: bool, original: Path) -> list[dict]:
    """Apply the seed's requests in turn; one row per step: accuracy before/after, steps run, why it stopped."""
    S.PARAMS.clear()
    S.PARAMS.update(params)
    order = np.random.default_rng(100 + seed).permutation(1437)
    ckpt, rows = original, []
    tag = f"{len(list(folder.iterdir()))}"
    for k in range(steps):
        req = S.write(folder, f"u{tag}-{k}", {"indices": sorted(int(i) for i in order[14 * k:14 * (k + 1)])}, seed)
        out = folder / f"u{tag}-{k}.safetensors"
        result = apply_request(req, ckpt, output=out, device="cpu", anchor=original if anchored else None, no_anchor=not anchored,
                               summary_samples=None).result
        rows.append({"before": result.before, "after": result.after, "steps": result.info.get("steps"), "stop": result.info.get("stop_reason")})
        ckpt = out
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:K=V,...[,anchor]", help=f"default: {VARIANTS}")
    ap.add_argument("--per-step", action="store_true", help="also print every step")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="unlearn-sequtil-"))
    variants = [parse_variant(v) for v in (args.variant or VARIANTS)]
    table = []
    for seed in range(args.seeds):
        original = folder / f"orig{seed}.safetensors"
        S.train(S.write(folder, f"base{seed}", {"indices": [0]}, seed), original, exclude=False)
        for name, params, anchored in variants:
            rows = stream(folder, seed, args.steps, params, anchored, original)
            table.append((name, seed, rows))
            print(f"# {name} seed {seed} done", file=sys.stderr, flush=True)

    print(f"Utility over {args.steps} sequential requests of 14 random digits samples (builtin MLP, RFA), seeds 0..{args.seeds - 1}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    print("| variant | seed | test acc: original → after the last step (%) | retain acc (%) | worst single-step test loss (points) | steps ended on the epochs cap |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, seed, rows in table:
        first, last = rows[0]["before"], rows[-1]["after"]
        worst = max(100 * (r["before"]["test_acc"] - r["after"]["test_acc"]) for r in rows)
        print(f"| {name} | {seed} | {100 * first['test_acc']:.1f} → {100 * last['test_acc']:.1f} | {100 * first['retain_acc']:.1f} → "
              f"{100 * last['retain_acc']:.1f} | {worst:.1f} | {sum(r['stop'] == 'epochs' for r in rows)}/{len(rows)} |")
    if args.per_step:
        for name, seed, rows in table:
            print(f"\n{name}, seed {seed}: step: test acc in → out, retain acc in → out, forget acc in → out, optimizer steps, stop")
            for k, r in enumerate(rows, 1):
                b, a = r["before"], r["after"]
                print(f"  {k}: {100 * b['test_acc']:.1f} → {100 * a['test_acc']:.1f}, {100 * b['retain_acc']:.1f} → {100 * a['retain_acc']:.1f}, "
                      f"{100 * b['forget_acc']:.1f} → {100 * a['forget_acc']:.1f}, {r['steps']}, {r['stop']}")


if __name__ == "__main__":
    main()
