"""RFA for regression: each row changes one design choice from the default (docs/rfa.md, "Regression").

    python benchmarks/rfa_regression_ablation.py                 # diabetes, both scenarios, 3 seeds
    python benchmarks/rfa_regression_ablation.py --datasets diabetes,rotated-digits --seeds 1

Same data, models, originals and retrained references as benchmarks/regression.py. Per row: forget MAE as a
relative gap to the seed's retrained model's (the target: 0), the utility's relative rise from the original
(test MAE; range unlearning: test MAE outside the range), and RFA's wall time over retraining's; means over seeds.
The default forget weight is 10 for sample and 5 for range unlearning, so one of the weight rows repeats the default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import regression as R  # noqa: E402

from unlearn_tool import bench as B  # noqa: E402
from unlearn_tool.methods import rfa_regression  # noqa: E402
from unlearn_tool.training import TrainConfig  # noqa: E402

ROWS = [  # (label, RFA parameters, rfa_regression module constants to override)
    ("default", {}, {}),
    ("forget target heldout (quantile-matched held-out errors)", {"forget_target": "heldout"}, {}),
    ("neighbours k = 3", {}, {"NEIGHBOURS": 3}),
    ("neighbours k = 30", {}, {"NEIGHBOURS": 30}),
    ("forget weight 1", {"w_forget": 1.0}, {}),
    ("forget weight 5", {"w_forget": 5.0}, {}),
    ("forget weight 10", {"w_forget": 10.0}, {}),
    ("forget weight 20", {"w_forget": 20.0}, {}),
    ("learning rate 0.02", {"lr": 0.02}, {}),
    ("no zero-residual term (w_residual 0)", {"w_residual": 0.0}, {}),
    ("retained drift bound 0.5 x the teacher's error (default 0.75)", {}, {"RETAIN_DRIFT": 0.5}),
    ("retained drift bound 1.0 x the teacher's error", {}, {"RETAIN_DRIFT": 1.0}),
    ("all 30 epochs (no stopping criterion)", {"stop": "epochs"}, {}),
    ("retain MSE on the labels too (w_retain_ce 1)", {"w_retain_ce": 1.0}, {}),
]


def run_row(setup: B.SeedSetup, params: dict, constants: dict) -> dict:
    before = {name: getattr(rfa_regression, name) for name in constants}
    for name, value in constants.items():
        setattr(rfa_regression, name, value)
    try:
        return B.run_one(setup, "rfa", B.method_params("rfa", params))
    finally:
        for name, value in before.items():
            setattr(rfa_regression, name, value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="diabetes")
    ap.add_argument("--scenarios", default="sample,range")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=None, help="benchmarks/regression.py's --cache: reuse its trained models.")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    originals: dict = {}
    print(f"RFA regression ablation, seeds {seeds}, means over seeds; torch {torch.__version__}, 1 thread"
          + (f"; trained models from {args.cache} (retraining times as measured when trained)" if args.cache else "") + "\n")
    for dataset in args.datasets.split(","):
        config = TrainConfig(epochs=R.DATASETS[dataset]["epochs"], lr_schedule=R.DATASETS[dataset].get("lr_schedule", "auto"))
        for scenario in args.scenarios.split(","):
            setups = [R.seed_setup(dataset, scenario, s, config, originals, args.cache) for s in seeds]
            key = "test_remaining_mae" if scenario == "range" else "test_mae"
            print(f"## {dataset}, {scenario} unlearning\n")
            print("| variant | forget MAE gap to retrain | utility rise | time / retrain | epochs run |\n|---|---:|---:|---:|---:|")
            for label, params, constants in ROWS:
                if scenario == "sample" and "NEIGHBOURS" in constants:
                    continue  # neighbour targets are the range default only
                runs = [run_row(s, params, constants) for s in setups]
                gap = np.mean([abs(r["metrics"]["forget_mae"] - s.baseline["metrics"]["forget_mae"]) / s.baseline["metrics"]["forget_mae"]
                               for r, s in zip(runs, setups)])
                rise = np.mean([(r["metrics"][key] - s.original["metrics"][key]) / s.original["metrics"][key] for r, s in zip(runs, setups)])
                frac = np.mean([r["metrics"]["time_fraction"] for r in runs])
                epochs = np.mean([r["info"]["epochs_run"] for r in runs])
                print(f"| {label} | {100 * gap:.1f}% | {100 * rise:+.1f}% | {100 * frac:.1f}% | {epochs:.1f} |")
            print()


if __name__ == "__main__":
    main()
