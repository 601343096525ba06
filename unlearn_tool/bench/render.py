"""Rendering a bench: the comparison table (terminal, markdown, CSV), the plot, and the files (bench.json/.csv/.md/.png).

Columns come from the metric registry (`bench_column`), so a new metric shows up here by itself.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from ..audit.registry import bench_columns, summary_keys
from ..reporting import md_table, png_bytes, prepare_report_dir, pyplot, write_report_file

BENCH_FILES = ("bench.json", "bench.csv", "bench.md", "bench.png")


def default_report_dir(checkpoint: str | Path) -> Path:
    """`<checkpoint stem>.bench/` beside the checkpoint."""
    p = Path(checkpoint)
    stem = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.stem
    return p.with_name(f"{stem}.bench")


def _pm(stat: Optional[dict[str, Any]], scale: float = 100.0, digits: int = 2) -> str:
    if stat is None or stat.get("mean") is None:
        return "-"
    s = f"{scale * stat['mean']:.{digits}f}"
    return s + (f"±{scale * stat['std']:.{digits}f}" if stat.get("std") is not None else "")


def gap_label(bench: dict[str, Any]) -> str:
    return {"retrain": "Avg Gap to retrain", "reference": "Avg Gap to reference", "original": "Avg Gap to original"}[bench["baseline"]]


def _columns(bench: dict[str, Any]) -> list[tuple[str, str, float, int]]:
    """(header, key, scale, digits) per column, from the registry."""
    cols = []
    task = bench["request"].get("task", "classification")
    for m in bench_columns(task, bench["request"]["scenario"]):
        header = gap_label(bench) if m.name == "avg_gap" else m.bench_column
        scale = 100.0 if m.unit == "fraction" else 1.0
        digits = m.digits if m.digits is not None else (3 if m.unit in ("ratio", "distance") else 2)
        cols.append((str(header), m.name, scale, digits))
    return cols


def table(bench: dict[str, Any], include_baselines: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings): one row per method, mean ± std over seeds; accuracies and MIA in %, gaps in points."""
    cols = _columns(bench)
    entries = list(bench["methods"].values())
    if include_baselines:
        entries = [e for e in (bench.get("original"), bench.get("reference")) if e] + entries
    failed = any(e.get("error") for e in entries)
    header = ["method"] + [c[0] for c in cols] + (["error"] if failed else [])
    rows = []
    for e in entries:
        label = e["method"] if e["kind"] == "method" else f"({e['method']})"
        row = [label] + [_pm(e["metrics"].get(key), scale, digits) for _, key, scale, digits in cols]
        if failed:
            err = e.get("error") or ""
            row.append(("FAILED: " if e["status"] == "failed" else f"{len([r for r in e['runs'] if r['error']])}/{len(e['runs'])} seeds failed: " if err else "") + err)
        rows.append(row)
    return header, rows


def best_method(bench: dict[str, Any], exclude: Sequence[str] = ("retrain",)) -> Optional[str]:
    """The method with the lowest mean Avg Gap (ties: first listed), or None.

    `retrain` is left out by default: its gap to another retraining is the seed-noise floor, not a contender.
    """
    scored = [(e["metrics"]["avg_gap"]["mean"], n) for n, e in bench["methods"].items()
              if n not in exclude and e["metrics"]["avg_gap"]["mean"] is not None]
    return min(scored, key=lambda t: t[0])[1] if scored else None


def markdown_table(bench: dict[str, Any], include_baselines: bool = True) -> str:
    header, rows = table(bench, include_baselines)
    return md_table(header, rows, align_right=True)


def render_markdown(bench: dict[str, Any]) -> str:
    req = bench["request"]
    what = f"classes {req['forget_classes']}" if req["scenario"] == "class" else f"{req['forget_size']} samples"
    rt = bench.get("retrain_time_s")
    lines = [
        f"# unlearn bench: request {req['id']}",
        "",
        f"{req['scenario']} unlearning of {what} ({req['forget_size']} of {req['forget_size'] + req['retain_size']} train samples); "
        f"seeds {', '.join(map(str, bench['seeds']))}; device {bench['device']}; checkpoint {bench['checkpoint']['path']}.",
        "",
        markdown_table(bench),
        "Mean ± sample std over seeds. RA retain accuracy, UA = 1 - forget accuracy, TA test accuracy, "
        "MIA-Efficacy the share of the forget set a confidence attack calls non-members, loss AUC the loss attack's AUC "
        f"(0.5 = chance). {gap_label(bench)}: SalUn's mean |gap| over UA, MIA-Efficacy, RA and TA, in points"
        + (" (no retrained reference was given: this is the distance from the original, not a quality score)." if bench["baseline"] == "original" else ".")
        + " Wall time is the method alone (run_method)."
        + (f" Retraining time: {_pm(rt, 1, 2)} s ({'the --retrain runs' if bench['baseline'] == 'retrain' else 'the reference checkpoint metadata'})."
           if rt else " No retraining time was known, so no time fraction (use --retrain, or a reference written by `unlearn train`)."),
        "",
    ]
    best = best_method(bench)
    if best and bench["baseline"] != "original":
        floor = bench["methods"].get("retrain", {}).get("metrics", {}).get("avg_gap", {}).get("mean")
        lines += [f"Lowest {gap_label(bench)}: **{best}**" + (f" (retrain itself: {floor:.2f}, the seed-to-seed floor)." if floor is not None else "."), ""]
    failed = [e for e in bench["methods"].values() if e["error"]]
    if failed:
        lines += ["## Failures", ""] + [f"- {e['method']} ({e['status']}): {e['error']}" for e in failed] + [""]
    return "\n".join(lines)


def render_csv(bench: dict[str, Any]) -> str:
    """One row per method (and the original/reference baselines): mean and std of every figure."""
    keys = summary_keys(bench["request"].get("task", "classification"))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "kind", "status", "error", "n_seeds"] + [f"{k}_{s}" for k in keys for s in ("mean", "std")])
    entries = [e for e in (bench.get("original"), bench.get("reference")) if e] + list(bench["methods"].values())
    for e in entries:
        w.writerow([e["method"], e["kind"], e["status"], e["error"] or "", len(e["runs"])]
                   + ["" if e["metrics"][k][s] is None else f"{e['metrics'][k][s]:.6g}" for k in keys for s in ("mean", "std")])
    return buf.getvalue()


def plot_png(bench: dict[str, Any]) -> bytes:
    """Forgetting (UA) against utility (TA; remaining-class TA for class unlearning): one point per method, std bars."""
    plt = pyplot()
    ykey = "test_remaining_acc" if bench["request"]["scenario"] == "class" else "test_acc"
    fig, ax = plt.subplots(figsize=(7, 5))

    def point(e: dict[str, Any], **style: Any) -> None:
        x, y = e["metrics"]["ua"], e["metrics"][ykey]
        if x["mean"] is None or y["mean"] is None:
            return
        ax.errorbar(100 * x["mean"], 100 * y["mean"], xerr=100 * (x["std"] or 0), yerr=100 * (y["std"] or 0), capsize=3, **style)
        ax.annotate(e["method"], (100 * x["mean"], 100 * y["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)

    for e in bench["methods"].values():
        point(e, fmt="o")
    if bench.get("original"):
        point(bench["original"], fmt="x", color="gray")
    if bench.get("reference"):
        point(bench["reference"], fmt="*", color="black", markersize=12)
    ax.set_xlabel("UA = 1 - forget accuracy (%)  [forgetting]")
    ax.set_ylabel(("test accuracy, remaining classes" if ykey == "test_remaining_acc" else "test accuracy") + " (%)  [utility]")
    ax.set_title(f"unlearn bench: {bench['request']['id']} ({bench['request']['scenario']}), mean ± std over {len(bench['seeds'])} seed(s)", fontsize=9)
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def to_json(bench: dict[str, Any]) -> str:
    return json.dumps(bench, indent=2, default=_json_default)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        try:
            return o.item()
        except (ValueError, RuntimeError):
            pass
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def write_bench(bench: dict[str, Any], folder: str | Path) -> Path:
    """bench.json, bench.csv, bench.md and bench.png into `folder` (new, or one a previous bench wrote), each atomically."""
    folder = prepare_report_dir(Path(folder), BENCH_FILES)
    write_report_file(folder / "bench.json", (to_json(bench) + "\n").encode())
    write_report_file(folder / "bench.csv", render_csv(bench).encode())
    write_report_file(folder / "bench.md", render_markdown(bench).encode())
    write_report_file(folder / "bench.png", plot_png(bench))
    return folder
