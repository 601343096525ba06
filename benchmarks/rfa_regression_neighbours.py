"""RFA's range target (docs/rfa.md R3) against the retrained model: which layer's features to find neighbours in.

    python benchmarks/rfa_regression_neighbours.py --cache DIR      # both data sets, 3 seeds

For range unlearning RFA's target for a forgotten input is the mean target of its k nearest retained samples in
the teacher's features at the input of one layer (default: the last). Per data set, seed, layer and k this
prints the target's MAE on the forget set next to the retrained model's forget MAE (what the target should
match); no unlearning runs. Same originals and references as benchmarks/regression.py (`--cache` reuses them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import regression as R  # noqa: E402

from unlearn_tool import lora  # noqa: E402
from unlearn_tool.evaluate import predict_logits  # noqa: E402
from unlearn_tool.methods.rfa_regression import _matrix, neighbour_targets  # noqa: E402
from unlearn_tool.training import TrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="rotated-digits,diabetes")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=None, help="benchmarks/regression.py's --cache: reuse its trained models.")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"Range target MAE by neighbour layer, seeds 0..{args.seeds - 1}; torch {torch.__version__}, 1 thread\n")
    for ds in args.datasets.split(","):
        d = R.DATASETS[ds]
        cfg = TrainConfig(epochs=d["epochs"], lr_schedule=d.get("lr_schedule", "auto"))
        rows: list[list[str]] = []
        header: list[str] = []
        for seed in range(args.seeds):
            job = R.make_job(ds, "range", seed)
            original, _ = R.train(job, job.splits.train, seed, cfg, args.cache, f"{ds}-original")
            retrained, _ = R.train(job, job.splits.retain, seed + 100, cfg, args.cache, f"{ds}-range-retrained")
            y = _matrix(job.splits.forget.targets)
            out, _ = predict_logits(retrained, job.splits.forget, job.device, 256)
            row = [str(seed), f"{float((out.reshape(y.shape) - y).abs().mean()):.3f}"]
            header = ["seed", "retrained forget MAE"]
            for layer in lora.lora_capable_layers(original)[-3:]:
                for k in (10, 30):
                    t = neighbour_targets(original, layer, job.splits.forget, job.splits.retain, job.device, 256, k)
                    row.append(f"{float((t - y).abs().mean()):.3f}")
                    header.append(f"{layer} k={k}")
            rows.append(row)
        print(f"## {ds} (range {d['range'][0]}-{d['range'][1]} {d['units']}; target MAE of the neighbours at the input of each layer)\n")
        print("| " + " | ".join(header) + " |\n|" + "---:|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print()


if __name__ == "__main__":
    main()
