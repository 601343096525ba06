"""Choose S3T's stage settings for the deletion-prior scenario on a VALIDATION split (issue 15), never the test split.

    python benchmarks/exact_digits_tune.py                         # the search grid below (CONFIGS)
    python benchmarks/exact_digits_tune.py --configs base,rank16   # some of its rows
    python benchmarks/exact_digits_tune.py --json a.json

Setting: exact_digits.py's deletion-prior scenario (`--pretrain all --deletion-prior hot=0.1,ratio=100`), with one
change so that nothing is chosen on the test split (methods.md §6): the 437-sample pre-training pool is cut into
FOLDS (4) seeded folds (seed 3; about 109 samples each). For fold f, its samples are held out of pre-training and
are the validation split; the base is pre-trained (40 epochs, all ten classes) on the other ~328. Each fold is one
full run (base, full model, S3T artifact); the figures are pooled over the folds (correct / 437), so every pool
sample is validated on once: one 100-sample fold alone moves in 1-point steps with a ~2-point standard error, the
size of the gap to resolve. The validation samples are non-deletable data, disjoint from the 1000 fine-tuning samples
(the same 1000 as exact_digits.py) and from the test split, which this script never loads (its jobs' `test` split
is the fold's validation file). The full model is the base fine-tuned on all 1000 (Adam 1e-3, 40 epochs,
batch 64), as in exact_digits.py. The prior, its deletion order and the deletion weights are exact_digits.py's
(hot 10 %, ratio 100, horizon 100).

Each configuration (layout + stage settings) trains one S3T artifact with the prior (order=bms, deletion_weights;
assignment by_weight), replays the prior's first 100 deletions in memory (exact_digits.replay's planner) and
evaluates the served ensemble on the validation split at each mark with every aggregation (mean, vote, weighted;
aggregation changes only how the served shards are combined, not training, so one artifact serves all three). The
criterion is the goal's, on validation: the largest gap to the full model over marks 0..100 (smaller is better).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from exact_digits import (POOL, PRIOR_HORIZON, PRIOR_STAGE, finetune, pretrained_base, prior_of,  # noqa: E402
                          prior_order, replayed, request, test_acc)
from unlearn_tool.data import DataSpec, load_split  # noqa: E402
from unlearn_tool.exact.ensemble import ExhaustedError, build_ensemble  # noqa: E402
from unlearn_tool.exact.params import parse_exact_params  # noqa: E402
from unlearn_tool.exact.run import train_artifact  # noqa: E402
from unlearn_tool.job import prepare  # noqa: E402

FOLDS = 4
PRIOR = {"hot": 0.1, "ratio": 100.0}
MARKS = [0, 1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
AGGREGATIONS = ("mean", "vote", "weighted")
# The search (small on purpose): exact_digits.py's prior-scenario stage settings (`base`), one change at a time on
# the 5x10x10 layout, then two other layouts with the base settings.
L5 = {"shards": 5, "slices": 10, "sequences": 10}
CONFIGS = {
    "base": {**L5, **PRIOR_STAGE},
    "epochs20": {**L5, **PRIOR_STAGE, "epochs": 20},
    "lr5e-3": {**L5, **PRIOR_STAGE, "lr": 5e-3},
    "lr2e-2": {**L5, **PRIOR_STAGE, "lr": 2e-2},
    "rank16": {**L5, **PRIOR_STAGE, "rank": 16, "alpha": 32.0},
    "rank4": {**L5, **PRIOR_STAGE, "rank": 4, "alpha": 8.0},
    "min_steps60": {**L5, **PRIOR_STAGE, "min_steps": 60},
    "5x10x5": {"shards": 5, "slices": 10, "sequences": 5, **PRIOR_STAGE},
    "10x10x5": {"shards": 10, "slices": 10, "sequences": 5, **PRIOR_STAGE},
    "3x10x10": {"shards": 3, "slices": 10, "sequences": 10, **PRIOR_STAGE},
}


def make_data(folder: Path, fold: int) -> None:
    """exact_digits.make_data('all') with fold `fold` of the pool held out of pre-training as the validation split."""
    from safetensors.torch import save_file

    train = load_split(DataSpec(source="sklearn:digits"), "train", folder)
    perm = np.random.default_rng(0).permutation(len(train))
    pool, ft = np.sort(perm[:POOL]), np.sort(perm[POOL:])
    held = np.random.default_rng(3).permutation(len(pool))[fold::FOLDS]
    val, pool = np.sort(pool[held]), np.sort(np.delete(pool, held))
    x, y = train.x, train.targets
    for name, idx in (("ft", ft), ("pool", pool), ("test", val)):  # "test": what the jobs evaluate = the validation split
        save_file({"x": x[idx].contiguous(), "y": y[idx].contiguous()}, str(folder / f"{name}.safetensors"))


def replay_all(folder: Path, job, order: list[int]) -> dict[str, dict[int, float]]:
    """The prior's deletions planned in memory; the served ensemble's validation accuracy at each mark, per aggregation."""
    out: dict[str, dict[int, float]] = {a: {} for a in AGGREGATIONS}
    shards: dict[int, int] = {}
    for d, m in replayed(folder, order, MARKS):
        shards[d] = m.budget()["active_shards"]
        for agg in AGGREGATIONS:
            view = m.model_copy()
            view.aggregation = agg
            try:
                out[agg][d] = test_acc(build_ensemble(view, folder, job.load_context()), job)
            except ExhaustedError:
                out[agg][d] = float("nan")
    return {"acc": out, "shards": shards}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"rows of the search, from: {', '.join(CONFIGS)}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="exact-tune-"))
    try:
        folds = [setup_fold(work / f"fold{f}", f) for f in range(FOLDS)]
        sizes = np.array([len(fd["job"].splits.test) for fd in folds], dtype=float)
        pooled = lambda accs: float(np.dot(accs, sizes) / sizes.sum())  # noqa: E731 - correct over every validated sample
        a_base, a_full = pooled([fd["a_base"] for fd in folds]), pooled([fd["a_full"] for fd in folds])
        n = len(folds[0]["job"].splits.train)
        p, flagged = prior_of(n, PRIOR["hot"], PRIOR["ratio"])
        order = prior_order(p, max(MARKS))
        wfile = work / "weights.txt"
        wfile.write_text("\n".join(f"{v:.6g}" for v in np.minimum(1.0, PRIOR_HORIZON * p)) + "\n")
        print(f"S3T stage-settings search on a validation split; digits, builtin MLP; torch {torch.__version__}, {args.threads} thread(s), "
              f"{platform.machine()} {platform.processor() or ''}".rstrip())
        print(f"validation: {FOLDS} folds of the {POOL}-sample pre-training pool (seed 3; sizes {sizes.astype(int).tolist()}), each held out "
              f"of its fold's pre-training (base on the other samples), figures pooled over the folds; fine-tuning set: the same {n} "
              "samples as exact_digits.py; the test split is not loaded")
        print(f"prior hot={PRIOR['hot']:g},ratio={PRIOR['ratio']:g}: {len(flagged)} flagged; flagged among the first 100 deletions: "
              f"{int(np.isin(order, flagged).sum())}")
        print(f"VALIDATION accuracy (pooled): base alone {100 * a_base:.2f}% (folds {[round(100 * fd['a_base'], 2) for fd in folds]}); "
              f"full model (fine-tuned on all {n}) {100 * a_full:.2f}% (folds {[round(100 * fd['a_full'], 2) for fd in folds]})\n")
        print("| config | layout | epochs | lr | rank | min_steps | aggregation | val acc at 0 | at 50 | at 100 | min over 0..100 "
              "| largest gap to full over 0..100 (points) | per-fold largest gap | shards at 100 (all folds) | train s (4 folds) |")
        print("|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|")
        rows = []
        for name in names:
            cfg = CONFIGS[name]
            params = parse_exact_params("s3t", {**cfg, "order": "bms", "deletion_weights": str(wfile)})
            per_fold, wall, shards100 = [], 0.0, []
            for f, fd in enumerate(folds):
                folder = work / f"fold{f}" / name
                start = time.perf_counter()
                summary = train_artifact(fd["job"], "s3t", params, folder, work / f"fold{f}" / "base.safetensors")
                wall += time.perf_counter() - start
                per_fold.append(replay_all(folder, fd["job"], order))
                shards100.append(per_fold[-1]["shards"][100])
                shutil.rmtree(folder, ignore_errors=True)
            for agg in AGGREGATIONS:
                acc = {d: pooled([r["acc"][agg][d] for r in per_fold]) for d in MARKS}
                gap = max(a_full - v for v in acc.values()) if all(v == v for v in acc.values()) else float("inf")
                fold_gaps = [max(fd["a_full"] - r["acc"][agg][d] for d in MARKS) for fd, r in zip(folds, per_fold)]
                rows.append({"config": name, "params": cfg, "aggregation": agg, "acc": {str(d): v for d, v in acc.items()},
                             "worst_gap": gap, "fold_worst_gaps": fold_gaps, "mean_acc": float(np.mean(list(acc.values()))),
                             "train_s": wall, "sample_epochs": summary["sample_epochs"]})
                print(f"| {name} | {cfg['shards']}x{cfg['slices']}x{cfg['sequences']} | {params.epochs} | {params.lr:g} | {params.rank} | "
                      f"{params.min_steps} | {agg} | {100 * acc[0]:.2f} | {100 * acc[50]:.2f} | {100 * acc[100]:.2f} | "
                      f"{100 * min(acc.values()):.2f} | {100 * gap:.1f} | {', '.join(f'{100 * g:.1f}' for g in fold_gaps)} | "
                      f"{min(shards100)}/{cfg['shards']} | {wall:.1f} |", flush=True)
        best = min(rows, key=lambda r: (round(r["worst_gap"], 6), -r["mean_acc"]))
        print(f"\nchosen on validation (smallest pooled largest gap over 0..100, then highest pooled mean accuracy over the marks): "
              f"{best['config']} {best['params']} aggregation {best['aggregation']}: largest gap {100 * best['worst_gap']:.1f} points, "
              f"val acc at 0 {100 * best['acc']['0']:.2f}, at 100 {100 * best['acc']['100']:.2f}")
        total = time.perf_counter() - t0
        print(f"\ntotal {total:.0f}s")
        if args.json is not None:
            args.json.write_text(json.dumps({"folds": FOLDS, "fold_sizes": sizes.tolist(), "base_val_acc": a_base, "full_val_acc": a_full,
                                             "marks": MARKS, "rows": rows, "chosen": best, "total_s": total, "threads": args.threads,
                                             "torch": torch.__version__}, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def setup_fold(folder: Path, fold: int) -> dict:
    """Fold `fold`'s data, base (pre-trained without the fold) and full model; the job evaluates on the fold."""
    folder.mkdir(parents=True)
    make_data(folder, fold)
    job = prepare(request(folder, "ft.safetensors", [0], "ft"), None, device="cpu")
    base = pretrained_base(folder)
    full, _ = finetune(job, base, job.splits.train)
    return {"job": job, "a_base": test_acc(base, job), "a_full": test_acc(full, job)}


if __name__ == "__main__":
    main()
