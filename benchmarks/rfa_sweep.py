"""Quick RFA-LoRA ablation on originals saved by `rfa_speed.py --work DIR` (a development tool, issue 9).

    python benchmarks/rfa_speed.py --work /tmp/rfa --seeds 3        # trains originals and references once
    python benchmarks/rfa_sweep.py --work /tmp/rfa -v "lr 5e-3:lr=5e-3" -v "rank 4:rank=4,alpha=8"
    python benchmarks/rfa_sweep.py --work /tmp/rfa --ablation      # the parameter rows of docs/rfa.md "Speed: what was tried"

The rows of that section for knobs that no longer exist (peft's two-branch forward, no frozen-prefix cache,
no retain pool, the old stopping rule, guards, Adam beta1, ...) were printed by this script at commit
01c3830, where they were still parameters: `git checkout 01c3830 && python benchmarks/rfa_sweep.py --ablation`.

Each variant (name:key=value,key=value; the empty "default" always runs first) runs in this process through
`run_method`, on every case x scenario x seed found in the work folder. The time ratio divides RFA's wall
time by an *estimate* of retraining time taken right before and right after that RFA run: the wall time
of 16 training steps of the case's recipe on the retained data, scaled to the recipe's steps (epochs x
batches). This interleaved estimate keeps ratios comparable on a shared machine without retraining for
every variant; `rfa_speed.py` measures real retraining and the real `apply` path.
Quality, as in rfa_speed.py: class — remaining-class test accuracy change against the original
(target >= -1 point); sample — forget accuracy gap to the saved retrained model (target within 2 points).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from rfa_speed import CASES  # noqa: E402
from unlearn_tool.methods import parse_params, run_method  # noqa: E402
from unlearn_tool.pipeline import prepare, seed_everything, utility  # noqa: E402
from unlearn_tool.request import parse_key_values  # noqa: E402
from unlearn_tool.training import make_optimizer  # noqa: E402

ABLATION = [  # the rows that are still parameters; the removed knobs' rows were measured at commit 01c3830 (docs/rfa.md)
    "all layers (no cut):target_layers=all",
    "sample without the 3-pass cap (at most 30):epochs=30",
    "lr 5e-3:lr=5e-3",
    "no zero-residual term:w_residual=0",
    "batches of 128 + 128:batch_size=128,retain_batch_size=128",
    "retain agreement 1.0:retain_agreement=1.0",
    "rank 4:rank=4,alpha=8",
]


def calibrate(case: str, job, models: dict, k: int = 16) -> float:
    """Estimated retraining seconds: wall time of k training steps of the recipe, scaled to the whole recipe."""
    cfg = CASES[case]["train"]
    m = models.setdefault(case, job.make_model()).train()
    opt = make_optimizer(m.parameters(), cfg.optimizer, 1e-9, 0.0)
    gen = torch.Generator().manual_seed(0)
    batches = [job.splits.retain.sample(cfg.batch_size, gen) for _ in range(k + 2)]
    for i, (x, y) in enumerate(batches):
        if i == 2:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    per_step = (time.perf_counter() - start) / k
    return per_step * math.ceil(len(job.splits.retain) / cfg.batch_size) * cfg.epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder written by rfa_speed.py --work")
    ap.add_argument("--cases", default="mlp,user_mlp60,small_cnn,user_cnn15,user_resnet8")
    ap.add_argument("--scenarios", default="class,sample")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("-v", "--variant", action="append", default=[], help="name:key=value,key=value (repeatable; the name must not contain a colon)")
    ap.add_argument("--ablation", action="store_true", help="run every row of ABLATION")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    specs = ["default:"] + (ABLATION if args.ablation else []) + args.variant
    variants = []
    for spec in specs:
        name, _, kv = spec.partition(":")
        variants.append((name, parse_key_values([p for p in kv.split(",") if p])))
    rows, models = [], {}
    for case in args.cases.split(","):
        for scenario in args.scenarios.split(","):
            for seed in map(int, args.seeds.split(",")):
                folder = args.work / case
                job = prepare(folder / f"{scenario}{seed}.yaml", folder / f"orig{seed}.safetensors", device="cpu")
                before = utility(job.original, job)
                ref = utility(job.load(folder / f"ret_{scenario}{seed}.safetensors")[0], job)
                for name, params in variants:
                    est = calibrate(case, job, models)
                    seed_everything(job.seed)
                    out, wall = run_method("rfa", job.context(), parse_params("rfa", params))
                    est = (est + calibrate(case, job, models)) / 2
                    u = utility(out.model.eval(), job)
                    if scenario == "class":
                        q = 100 * (u["test_remaining_acc"] - before["test_remaining_acc"])
                        ok = q >= -1 and u["forget_acc"] <= 0.05 and u["test_forgotten_acc"] <= 0.02
                    else:
                        q = 100 * (u["forget_acc"] - ref["forget_acc"])
                        ok = abs(q) <= 2
                    rows.append({"case": case, "scenario": scenario, "seed": seed, "variant": name, "ratio": 100 * wall / est,
                                 "quality": q, "ok": ok, "steps": out.info["steps"], "wall": wall, "est_retrain": est})
                    print(f"{case:12s} {scenario:6s} s{seed} {name[:40]:40s} steps {out.info['steps']:3d}  {wall:.3f}s  "
                          f"~{100 * wall / est:5.1f}%  quality {q:+.2f} {'ok' if ok else 'MISS'}", file=sys.stderr, flush=True)
    print(f"RFA-LoRA ablation (rfa_sweep.py), torch {torch.__version__}, 1 thread; ratio = RFA wall time / interleaved "
          f"retraining estimate; quality: class = remaining-class test acc change vs original, sample = forget acc gap to retrain (points)\n")
    print("| case | scenario | variant | RFA / retrain (est.), mean (max) | steps | quality, mean (worst) | seeds meeting targets |")
    print("|---|---|---|---:|---:|---|---|")
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["case"], r["scenario"], r["variant"]), []).append(r)
    for (case, scen, name), rs in groups.items():
        qs = [r["quality"] for r in rs]
        worst = min(qs) if scen == "class" else max(qs, key=abs)
        print(f"| {case} | {scen} | {name} | {statistics.mean(r['ratio'] for r in rs):.1f}% ({max(r['ratio'] for r in rs):.1f}%) | "
              f"{statistics.mean(r['steps'] for r in rs):.1f} | {statistics.mean(qs):+.2f} ({worst:+.2f}) | {sum(r['ok'] for r in rs)}/{len(rs)} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
