"""Is the rotated-digits training recipe converged? Original and reference at several epoch counts (issue 14).

    python benchmarks/regression_recipe.py --cache DIR                      # seed 0, 60, 150 and 300 epochs
    python benchmarks/regression_recipe.py --cache DIR --epochs 60,150,300 --seeds 2

The issue's sample target compares an unlearned model with a reference retrained on the retain split "with the
same recipe". If the recipe stops short of convergence, the reference (10% fewer samples, so 10% fewer steps per
epoch) fits even its own training data worse than the original, and its forget and test errors measure
under-training, not the forgotten data. Per seed and epoch count this prints, for the original (train split,
init seed s) and the reference (the sample scenario's retain split, init seed s + 100) and for the swapped inits
(original with init s + 100, reference with init s): retain, forget and test MAE, and the training seconds. Same
data, model and recipe (Adam 1e-3 decayed on a cosine, batch 64, MSE) as benchmarks/regression.py; `--cache`
shares its trained models (their seconds are those measured when trained).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import regression as R  # noqa: E402

from unlearn_tool import bench as B  # noqa: E402
from unlearn_tool.training import TrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", default="60,150,300", help="Comma-separated epoch counts (default 60,150,300).")
    ap.add_argument("--seeds", type=int, default=1, help="Seeds 0..N-1 (default 1).")
    ap.add_argument("--swap", action="store_true", help="Also train the original with the reference's init seed and vice versa.")
    ap.add_argument("--cache", type=Path, default=None, help="benchmarks/regression.py's --cache.")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"Rotated-digits recipe check: torch {torch.__version__}, 1 thread, {platform.machine()}\n")
    print("| seed | epochs | model | split (init) | retain MAE | forget MAE | test MAE | train s |\n|---:|---:|---|---|---:|---:|---:|---:|")
    for s in range(args.seeds):
        job = R.make_job("rotated-digits", "sample", s)
        runs = [("original", "train", s), ("reference", "retain", s + 100)]
        if args.swap:
            runs += [("original, swapped init", "train", s + 100), ("reference, swapped init", "retain", s)]
        for epochs in (int(e) for e in args.epochs.split(",")):
            config = TrainConfig(epochs=epochs, lr_schedule="cosine")
            for label, split, init in runs:
                key = "rotated-digits-original" if split == "train" else "rotated-digits-sample-retrained"
                model, seconds = R.train(job, getattr(job.splits, split), init, config, args.cache, key)
                m = B.baseline_run(model, job)["metrics"]
                print(f"| {s} | {epochs} | {label} | {split} ({init}) | {m['retain_mae']:.4f} | {m['forget_mae']:.4f} | "
                      f"{m['test_mae']:.4f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
