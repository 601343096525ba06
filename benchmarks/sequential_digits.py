"""Repeated deletion requests on scikit-learn digits: sequential RFA against one combined request, with the relapse check.

    python benchmarks/sequential_digits.py                 # 10 requests of 1% random samples, and class 3 then class 5; seeds 0..2
    python benchmarks/sequential_digits.py --seeds 1 --steps 5

For each seed: the original is `unlearn train`'s MLP; the requests are applied one after another with
`unlearn apply` (each on the previous output, so each leaves the earlier forgotten samples out of its
data through the ledger). After each step the output is audited against a model retrained without
everything forgotten so far (Avg Gap on the step's forget set, and the relapse check of every earlier
step). At the end, the last sequential output and the output of one combined request (all the samples
at once) are audited on the combined forget set against the same retrained model.
Goal: sequential within 1 point of the combined request's Avg Gap, and no relapse.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unlearn_tool.audit import audit_request  # noqa: E402
from unlearn_tool.pipeline import apply_request, prepare, train_checkpoint  # noqa: E402
from unlearn_tool.training import TrainConfig  # noqa: E402


PARAMS: dict = {}  # --param k=v: RFA parameters for every request
ANCHOR = {"on": True}  # --no-anchor: each request without `apply --anchor ORIGINAL`


def write(folder: Path, name: str, forget: dict, seed: int) -> Path:
    req = {"version": 1, "id": name, "model": {"arch": "builtin:mlp", "kwargs": {"num_classes": 10}},
           "data": {"train": {"source": "sklearn:digits"}, "test": {"source": "sklearn:digits"}},
           "forget": forget, "method": {"name": "rfa", "params": dict(PARAMS)}, "seed": seed}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(req, sort_keys=False))
    return path


def train(req: Path, out: Path, exclude: bool) -> None:
    train_checkpoint(prepare(req, None, device="cpu"), out, TrainConfig(), exclude_forget=exclude)


def audit(req: Path, original: Path, unlearned: Path, reference: Path, folder: Path) -> dict:
    report, _ = audit_request(req, original, unlearned, reference=reference, report_dir=folder, device="cpu")
    return report


def sequence(folder: Path, seed: int, forgets: list[dict], label: str) -> dict:
    original = folder / f"{label}-orig.safetensors"
    train(write(folder, f"{label}-base", forgets[0], seed), original, exclude=False)
    so_far: dict = {}
    ckpt, rows, t_seq = original, [], 0.0
    for k, forget in enumerate(forgets, 1):
        req = write(folder, f"{label}-step{k}", forget, seed)
        out = folder / f"{label}-step{k}.safetensors"
        start = time.perf_counter()
        outcome = apply_request(req, ckpt, output=out, device="cpu", anchor=original if ANCHOR["on"] else None, no_anchor=not ANCHOR["on"])
        t_seq += outcome.result.wall_time_s
        so_far = {"classes": so_far.get("classes", []) + forget["classes"]} if "classes" in forget else \
                 {"indices": sorted(so_far.get("indices", []) + forget["indices"])}
        ref = folder / f"{label}-ref{k}.safetensors"
        train(write(folder, f"{label}-sofar{k}", so_far, seed), ref, exclude=True)
        report = audit(req, ckpt, out, ref, folder / f"{label}-audit{k}")
        lineage = report.get("lineage") or {}
        rows.append({"step": k, "avg_gap": report["gaps"]["avg_gap"], "relapse_max": lineage.get("relapse_max"),
                     "relapsed": lineage.get("relapsed", []), "verdict": report["verdict"], "seconds": time.perf_counter() - start})
        ckpt = out
    combined_req = write(folder, f"{label}-combined", so_far, seed)
    combined = folder / f"{label}-combined.safetensors"
    t_comb = apply_request(combined_req, original, output=combined, device="cpu").result.wall_time_s
    final_ref = folder / f"{label}-ref{len(forgets)}.safetensors"
    seq_gap = audit(combined_req, original, ckpt, final_ref, folder / f"{label}-final-seq")["gaps"]["avg_gap"]
    comb_gap = audit(combined_req, original, combined, final_ref, folder / f"{label}-final-comb")["gaps"]["avg_gap"]
    return {"rows": rows, "sequential_gap": seq_gap, "combined_gap": comb_gap, "t_seq": t_seq, "t_comb": t_comb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="sequential 1%% sample requests")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--param", action="append", default=[], metavar="K=V", help="an RFA parameter for every request (repeatable)")
    ap.add_argument("--skip-classes", action="store_true", help="only the sample sequence")
    ap.add_argument("--no-anchor", action="store_true", help="apply each request with --no-anchor (aligned with its input, not the original)")
    args = ap.parse_args()
    from unlearn_tool.request import parse_key_values

    PARAMS.update(parse_key_values(args.param))
    ANCHOR["on"] = not args.no_anchor
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="unlearn-seq-"))
    results: dict[str, list[dict]] = {"samples": [], "classes": []}
    for seed in range(args.seeds):
        order = np.random.default_rng(100 + seed).permutation(1437)
        sample_forgets = [{"indices": sorted(int(i) for i in order[14 * k:14 * (k + 1)])} for k in range(args.steps)]
        results["samples"].append(sequence(folder, seed, sample_forgets, f"s{seed}"))
        if not args.skip_classes:
            results["classes"].append(sequence(folder, seed, [{"classes": [3]}, {"classes": [5]}], f"c{seed}"))
        print(f"# seed {seed} done", file=sys.stderr, flush=True)

    print(f"Sequential deletion requests on scikit-learn digits (builtin MLP, RFA {PARAMS or 'defaults'}, {'apply --anchor ORIGINAL' if ANCHOR['on'] else 'no --anchor'}), seeds 0..{args.seeds - 1}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    for name, runs in results.items():
        if not runs:
            continue
        what = f"{args.steps} requests of 14 random samples (1%) each" if name == "samples" else "class 3, then class 5"
        print(f"## {what}\n")
        print("| step | Avg Gap to the model retrained without everything so far (points) | relapse_max (points) | relapsed steps | verdicts |")
        print("|---:|---:|---:|---|---|")
        for k in range(len(runs[0]["rows"])):
            gaps = [r["rows"][k]["avg_gap"] for r in runs]
            rel = [r["rows"][k]["relapse_max"] for r in runs if r["rows"][k]["relapse_max"] is not None]
            print(f"| {k + 1} | {statistics.fmean(gaps):.2f}±{(statistics.stdev(gaps) if len(gaps) > 1 else 0):.2f} | "
                  f"{'-' if not rel else f'{100 * max(rel):+.1f}'} | {sum(len(r['rows'][k]['relapsed']) for r in runs)} | "
                  f"{', '.join(r['rows'][k]['verdict'] for r in runs)} |")
        seq = [r["sequential_gap"] for r in runs]
        comb = [r["combined_gap"] for r in runs]
        diff = [a - b for a, b in zip(seq, comb)]
        print(f"\nOn the whole forget set against the final retrained model: sequential {statistics.fmean(seq):.2f}±"
              f"{(statistics.stdev(seq) if len(seq) > 1 else 0):.2f}, one combined request {statistics.fmean(comb):.2f}±"
              f"{(statistics.stdev(comb) if len(comb) > 1 else 0):.2f} points (difference {statistics.fmean(diff):+.2f}, worst seed "
              f"{max(diff):+.2f}); method time sequential {statistics.fmean(r['t_seq'] for r in runs):.2f}s in all, combined "
              f"{statistics.fmean(r['t_comb'] for r in runs):.2f}s. Goal: within 1 point and no relapse: "
              f"{'met' if max(diff) <= 1.0 and not any(r['rows'][k]['relapsed'] for r in runs for k in range(len(r['rows']))) else 'NOT met'}.\n")


if __name__ == "__main__":
    main()
