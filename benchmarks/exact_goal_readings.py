"""Issue 15's goal read two ways, from saved exact_digits.py runs (no training; a second).

    python benchmarks/exact_goal_readings.py                      # the four saved runs under benchmarks/results/
    python benchmarks/exact_goal_readings.py RUN.json [RUN.json]  # other `exact_digits.py --json` outputs

The goal: "S3T keeps accuracy within 2 points of the full model over the first 100 deletions". exact_digits.py reads
"the full model" as a normal model fine-tuned on all deletable data (the strict reading, the one docs/benchmarks.md
reports). It can also be read as the artifact itself before any deletion (S3T's own starting accuracy), which asks
only how gracefully deletions degrade it. This prints both per curve, with the marks the runs saved (0, 1, 5, 10,
20, ..., 100): the largest gap to the full model, and the largest drop from the curve's own accuracy at 0. An
exhausted artifact (nothing left to serve) at a mark fails both. Full retraining's own largest gap (the same marks
where it was run) is printed as the noise floor of one 360-sample test split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_RUNS = ("exact_digits_all.json", "exact_digits_classes.json", "exact_digits_prior_all.json", "exact_digits_prior_classes.json")
HORIZON, BAND = 100, 0.02


def readings(curve: dict[str, float | None], full: float) -> tuple[float | None, float | None]:
    """(largest gap to `full`, largest drop from the curve's value at 0) over marks <= HORIZON; None when exhausted."""
    values = [v for d, v in sorted((int(d), v) for d, v in curve.items()) if d <= HORIZON]
    if any(v is None for v in values):
        return None, None
    return max(full - v for v in values), max(values[0] - v for v in values)


def layout_name(key: str, config: dict) -> str:
    """'S3T 10x5x5' / 'SISA 10x5' from a saved configuration (exact_digits.py's keys: s3t, sisa, s3t-defaults, s3t-wide)."""
    sizes = [config.get(k) for k in ("shards", "slices", "sequences") if config.get(k) is not None]
    role = {"s3t-defaults": " (the tool's defaults)", "s3t-wide": " (the goal attempt)"}.get(key, "")
    return f"{'S3T' if key.startswith('s3t') else 'SISA'} {'x'.join(map(str, sizes))}{role}"


def curves_of(run: dict) -> list[tuple[str, float, dict[str, dict], dict]]:
    """(setting title, full-model accuracy, {curve name: curve}, retraining curve) per setting of a saved run."""
    out = []
    for st in run.get("settings", []):
        curves = {layout_name(k, st["configs"][k]): c for k, c in st["curves"].items()}
        out.append((f"uniform deletions, base pre-trained on {st['pretrain']}", st["full_acc"], curves, st["retrain"]))
    for st in run.get("prior_settings", []):
        for pr in st["priors"]:
            curves = {(k if k.startswith("SISA") else f"S3T {k}"): c for k, c in pr["curves"].items()}
            title = (f"deletion prior ({pr['flagged']} flagged, {pr['prior']['ratio']:g}x as likely), base pre-trained on "
                     f"{st['pretrain']}")
            out.append((title, st["full_acc"], curves, pr["retrain"]))
    return out


def cell(value: float | None) -> str:
    return "exhausted" if value is None else f"{100 * value:.1f}{' (met)' if value <= BAND + 1e-9 else ''}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="*", help="exact_digits.py --json outputs (default: the four saved runs)")
    args = ap.parse_args()
    for path in args.runs or [RESULTS / name for name in DEFAULT_RUNS]:
        run = json.loads(path.read_text())
        for title, full, curves, retrain in curves_of(run):
            floor, _ = readings(retrain, full)
            print(f"\n### {path.name}: {title}\n\nfull model {100 * full:.2f}%; full retraining's own largest gap to it "
                  f"over its marks <= {HORIZON}: {100 * floor:.1f} points\n")
            print(f"| curve | accuracy at 0 | largest gap to the full model over <= {HORIZON} (points) | "
                  f"largest drop from its own accuracy at 0 (points) |")
            print("|---|---:|---:|---:|")
            for name, curve in curves.items():
                gap, drop = readings(curve, full)
                print(f"| {name} | {100 * curve['0']:.2f} | {cell(gap)} | {cell(drop)} |")


if __name__ == "__main__":
    main()
