"""Would a stronger base let S3T meet issue 15's goal under uniform deletions? (issue 15)

    python benchmarks/exact_base_strength.py                     # the three bases below; about 10 min, one thread
    python benchmarks/exact_base_strength.py --bases mlp,mlp-shift1

The counting bound (benchmarks/exact_digits.py --bound-only) says that after 100 uniform single-sample deletions the
served S3T ensemble of any layout measured was trained on at most 12% of the remaining deletable data: what serves is
close to the base. So the goal (within 2 points of the full model over the first 100 deletions) needs a base within
about 2 points of the full model. This script asks whether a stronger base, built from the same non-deletable
pre-training pool, gets there, or whether the full model (fine-tuned from that base on the 1000 deletable samples)
gains as much. Bases:

* `mlp`: the `all` stand-in of benchmarks/exact_digits.py (builtin MLP, pre-trained 40 epochs on the 437-sample pool
  of all ten classes);
* `mlp-shift1` / `mlp-shift2`: the same, the pool augmented with every shift of the 8x8 image by up to 1 / 2 pixels
  (9 / 25 copies, vacated pixels zero), a standard way to get more from a small pre-training set;
* `small_cnn`: the builtin small CNN (the issue names the small CNN or the MLP) on the pool as is.

Per base: its test accuracy, the full model's, and S3T with the goal attempt's layout (5 shards x 10 slices x 10
sequences, cyclic; 10 epochs per stage, lr 0.01, min_steps 30: exact_digits.py's S3T_WIDE) served without retraining
along exact_digits.py's uniform deletion order (seeded), with the largest gap to the full model over the first 100.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import exact_digits as E  # noqa: E402

MARKS = [0, 1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
BASES = {  # name: (architecture, pool shift in pixels)
    "mlp": ("builtin:mlp", 0),
    "mlp-shift1": ("builtin:mlp", 1),
    "mlp-shift2": ("builtin:mlp", 2),
    "small_cnn": ("builtin:small_cnn", 0),
}


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Images (N, C, H, W) moved by (dy, dx) pixels; what moves out is dropped, what comes in is zero."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = x[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def shift_pool(pixels: int):
    """An `augment_pool` for exact_digits.setup: the pool file rewritten with every shift up to `pixels` (itself included)."""
    from safetensors.torch import load_file, save_file

    def augment(path: Path) -> None:
        d = load_file(str(path))
        moves = [(dy, dx) for dy in range(-pixels, pixels + 1) for dx in range(-pixels, pixels + 1)]
        save_file({"x": torch.cat([shifted(d["x"], dy, dx) for dy, dx in moves]).contiguous(),
                   "y": d["y"].repeat(len(moves)).contiguous()}, str(path))
    return augment


def run_base(name: str) -> dict:
    arch, pixels = BASES[name]
    E.ARCH = arch
    work = Path(tempfile.mkdtemp(prefix="exact-base-"))
    try:
        start = time.perf_counter()
        job, _, _, a_base, a_full, _ = E.setup(work, "all", shift_pool(pixels) if pixels else None)
        order = [int(i) for i in np.random.default_rng(1).permutation(len(job.splits.train))[:max(MARKS)]]  # exact_digits' order
        E.train_artifact(job, "s3t", E.parse_exact_params("s3t", E.S3T_WIDE), work / "s3t", work / "base.safetensors")
        curve = {d: r["acc"] for d, r in E.replay(work / "s3t", job, order, MARKS).items()}  # nan: exhausted
        worst = max((a_full - a if a == a else float("inf")) for a in curve.values())
        return {"name": name, "arch": arch, "pixels": pixels, "base": a_base, "full": a_full, "curve": curve,
                "worst": worst, "wall": time.perf_counter() - start}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bases", default="mlp,mlp-shift1,mlp-shift2,small_cnn", help=f"comma-separated, of {sorted(BASES)}")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.bases.split(",")
    unknown = sorted(set(names) - set(BASES))
    if unknown:
        ap.error(f"unknown base(s) {unknown}; choose from {sorted(BASES)}")
    started = time.perf_counter()
    rows = []
    for name in names:
        rows.append(run_base(name))
        r = rows[-1]
        print(f"# {name}: base {100 * r['base']:.2f}%, full {100 * r['full']:.2f}%, S3T worst gap {100 * r['worst']:.2f} points ({r['wall']:.0f}s)",
              file=sys.stderr, flush=True)
    print(f"S3T {E.S3T_WIDE} served without retraining along exact_digits.py's uniform deletion order; test accuracy in % "
          f"(360 test samples: one sample is 0.28 points). {platform.machine()} CPU, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); total {time.perf_counter() - started:.0f}s.\n")
    print("| base | pre-training pool | base alone | full model | full - base (points) | "
          + " | ".join(f"S3T at {d}" for d in MARKS) + " | largest gap over <= 100 (points) | goal |")
    print("|---|---|---:|---:|---:|" + "---:|" * len(MARKS) + "---:|---|")
    for r in rows:
        pool = "437 samples" if not r["pixels"] else f"437 x {(2 * r['pixels'] + 1) ** 2} (shifts up to {r['pixels']} px)"
        print(f"| {r['arch']} | {pool} | {100 * r['base']:.2f} | {100 * r['full']:.2f} | {100 * (r['full'] - r['base']):.2f} | "
              + " | ".join(f"{100 * r['curve'][d]:.2f}" if r["curve"][d] == r["curve"][d] else "exhausted" for d in MARKS)
              + f" | {100 * r['worst']:.2f} | {E.verdict(r['worst'], max(MARKS))} |")


if __name__ == "__main__":
    main()
