"""RFA's range target (docs/rfa.md R3) against the retrained model: which layer's features to find neighbours in.

    python benchmarks/rfa_regression_neighbours.py --cache DIR      # both data sets, 3 seeds

For range unlearning RFA's target for a forgotten input is the mean target of its k nearest retained samples in
the teacher's features at the input of one layer (default: the last). Per data set, seed, layer and k this
prints the target's MAE on the forget set next to the retrained model's forget MAE (what the target should
match); no unlearning runs. Same originals and references as benchmarks/regression.py (`--cache` reuses them).

Two other targets that need no reference are printed beside them (issue 14, a range target that follows how far a
retrained model extrapolates): the retained target nearest each forgotten one (what a model that predicts the
closest value it was trained on would give: the range edge), and the posterior mean of a Gaussian process fitted to the retained targets on the teacher's features
at the last layer's input (RBF kernel; length scale and noise picked by marginal likelihood from a grid: far
from the retained data it reverts to their mean, as a model that cannot place an input might).
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


GP_SCALES = (1, 2, 4, 8, 16)  # length scales, in multiples of the median nearest-neighbour distance among retained samples
GP_NOISES = (0.01, 0.1, 0.3)  # noise variances, in shares of the retained targets' variance


def features(model, layer: str, data) -> torch.Tensor:
    store: list[torch.Tensor] = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda _m, inp, _o: store.append(inp[0].detach().flatten(1).double()))
    try:
        with torch.no_grad():
            for x, _ in data.batches(256):
                model(x)
    finally:
        handle.remove()
    return torch.cat(store)


def gp_targets(f_retain: torch.Tensor, y_retain: torch.Tensor, f_forget: torch.Tensor) -> tuple[torch.Tensor, str]:
    """GP posterior mean on the forget inputs (one output), at the grid point of highest log marginal likelihood."""
    y = y_retain.double().flatten()
    d_rr, d_fr = torch.cdist(f_retain, f_retain), torch.cdist(f_forget, f_retain)
    nn1 = d_rr.topk(2, largest=False).values[:, 1].median()
    mean, var = y.mean(), y.var()
    best = None
    for scale in GP_SCALES:
        ell = scale * nn1
        k_rr = var * torch.exp(-d_rr ** 2 / (2 * ell ** 2))
        for noise in GP_NOISES:
            chol = torch.linalg.cholesky(k_rr + noise * var * torch.eye(len(y), dtype=y.dtype))
            alpha = torch.cholesky_solve((y - mean)[:, None], chol)
            lml = float(-0.5 * ((y - mean)[:, None] * alpha).sum() - torch.log(torch.diagonal(chol)).sum())
            if best is None or lml > best[0]:
                post = mean + (var * torch.exp(-d_fr ** 2 / (2 * ell ** 2)) @ alpha).flatten()
                best = (lml, post, f"{scale}x/{noise}")
    return best[1].float()[:, None], best[2]


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
            row = [str(seed), f"{float((out.reshape(y.shape) - y).abs().mean()):.3f}",
                   f"{float(y.mean()):.3f} / {float(out.mean()):.3f} ± {float(out.std()):.3f}"]
            header = ["seed", "retrained forget MAE", "Df mean target / retrained mean output ± sd"]
            for layer in lora.lora_capable_layers(original)[-3:]:
                for k in (10, 30):
                    t = neighbour_targets(original, layer, job.splits.forget, job.splits.retain, job.device, 256, k)
                    row.append(f"{float((t - y).abs().mean()):.3f}")
                    header.append(f"{layer} k={k}")
            y_retain = _matrix(job.splits.retain.targets)
            nearest = y_retain[torch.cdist(y, y_retain).argmin(1)]  # the retained target nearest each forgotten one
            row.append(f"{float((nearest - y).abs().mean()):.3f}")
            head = lora.lora_capable_layers(original)[-1]
            gp, chosen = gp_targets(features(original, head, job.splits.retain), _matrix(job.splits.retain.targets),
                                    features(original, head, job.splits.forget))
            row.append(f"{float((gp - y).abs().mean()):.3f} ({chosen})")
            header += ["nearest retained target", "GP posterior mean (scale/noise)"]
            rows.append(row)
        print(f"## {ds} (range {d['range'][0]}-{d['range'][1]} {d['units']}; target MAE of the neighbours at the input of each layer)\n")
        print("| " + " | ".join(header) + " |\n|" + "---:|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print()


if __name__ == "__main__":
    main()
