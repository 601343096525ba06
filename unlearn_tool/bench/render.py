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
from ..reporting import md_table, md_text, png_bytes, pyplot, samples_text, shown, write_report_files

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
        if m.name == "train_time_s" and not has_exact_rows(bench):
            continue  # only exact rows (s3t, sisa) have a one-off training cost
        header = gap_label(bench) if m.name == "avg_gap" else m.bench_column
        scale = 100.0 if m.unit == "fraction" else 1.0
        digits = m.digits if m.digits is not None else (3 if m.unit in ("ratio", "distance") else 2)
        cols.append((str(header), m.name, scale, digits))
    return cols


def has_exact_rows(bench: dict[str, Any]) -> bool:
    return any((e["metrics"].get("train_time_s") or {}).get("mean") is not None for e in bench["methods"].values())


def table(bench: dict[str, Any], include_baselines: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings): one row per method, mean ± std over seeds; accuracies and MIA in %, gaps in points."""
    cols = _columns(bench)
    entries = list(bench["methods"].values())
    if include_baselines:
        entries = [e for e in (bench.get("original"), bench.get("reference")) if e] + entries
    failed = any(e.get("error") for e in entries)
    header = ["method"] + [c[0] for c in cols] + ["status"] + (["error"] if failed else [])
    rows = []
    for e in entries:
        label = e["method"] if e["kind"] == "method" else f"({e['method']})"
        row = [label] + [_pm(e["metrics"].get(key), scale, digits) for _, key, scale, digits in cols] + [status_text(e)]
        if failed:
            err = e.get("error") or ""
            row.append(("FAILED: " if e["status"] == "failed" else f"{len([r for r in e['runs'] if r['error']])}/{len(e['runs'])} seeds failed: " if err else "") + err)
        rows.append(row)
    return header, rows


def status_text(entry: dict[str, Any]) -> str:
    """Per-seed statuses in a few words: 'ok', or e.g. 'under-forgot 2/3, ok 1/3' (baselines: '-')."""
    seeds = entry.get("seed_status") or []
    if entry.get("kind") != "method" or not seeds:
        return "-"
    if all(s == "ok" for s in seeds):
        return "ok"
    counts = {s: seeds.count(s) for s in dict.fromkeys(seeds)}
    return ", ".join(f"{s} {n}/{len(seeds)}" for s, n in sorted(counts.items(), key=lambda kv: kv[0] == "ok"))


def pareto_front(bench: dict[str, Any], exclude: Sequence[str] = ("retrain",)) -> list[str]:
    """Methods no other method beats on both wall time and Avg Gap (lower is better on both).

    `retrain` is left out: it is the baseline's own procedure (with --retrain its gap to the same seed's run is 0).
    None without a reference or --retrain: the gap is then the distance from the original, and the method nearest to it
    is the one that forgot least, which a front would reward.
    """
    if bench.get("baseline") == "original":
        return []
    pts = {n: (e["metrics"]["wall_time_s"]["mean"], e["metrics"]["avg_gap"]["mean"]) for n, e in bench["methods"].items()
           if n not in exclude and e["metrics"]["wall_time_s"]["mean"] is not None and e["metrics"]["avg_gap"]["mean"] is not None}
    front = []
    for n, (t, g) in pts.items():
        if not any((t2 <= t and g2 <= g) and (t2 < t or g2 < g) for m, (t2, g2) in pts.items() if m != n):
            front.append(n)
    return sorted(front, key=lambda n: pts[n][0])


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


def _legend(bench: dict[str, Any]) -> str:
    """What the table's columns and its Avg Gap mean, for the request's task (audit/metrics.py avg_gap)."""
    if bench["request"].get("task", "classification") == "regression":
        return ("Retain, forget and test MAE in target units, test R² the share of the test targets' variance explained, "
                "MIA-Efficacy the share of the forget set an error-based attack calls non-members, loss AUC the loss attack's AUC "
                f"(0.5 = chance). {gap_label(bench)}: the mean of the relative gaps of retain, forget and test MAE and the gap of "
                "MIA-Efficacy, in points")
    return ("RA retain accuracy, UA = 1 - forget accuracy, TA test accuracy, "
            "MIA-Efficacy the share of the forget set a confidence attack calls non-members, loss AUC the loss attack's AUC "
            f"(0.5 = chance). {gap_label(bench)}: SalUn's mean |gap| over UA, MIA-Efficacy, RA and TA, in points")


def render_markdown(bench: dict[str, Any]) -> str:
    req = bench["request"]
    what = f"classes {req['forget_classes']}" if req["scenario"] == "class" else samples_text(req["forget_size"])
    rt = bench.get("retrain_time_s")
    lines = [
        f"# unlearn bench: request {md_text(req['id'])}",
        "",
        f"{req['scenario']} unlearning of {what} ({req['forget_size']} of {req['forget_size'] + req['retain_size']} train samples); "
        f"seeds {', '.join(map(str, bench['seeds']))}; device {bench['device']}; checkpoint {md_text(bench['checkpoint']['path'])}.",
        "",
        markdown_table(bench),
        "Mean ± sample std over seeds. " + _legend(bench)
        + (" (no retrained reference was given: this is the distance from the original, not a quality score)." if bench["baseline"] == "original" else ".")
        + " Wall time is the method alone (run_method)."
        + (" Exact rows (s3t, sisa): the artifact is trained from the request at each seed, then the request's deletion deactivates "
           "every component that saw a forgotten sample (no gradient step); their wall time is that deletion's latency and "
           "'train s' the one-off training of the artifact, not included in the wall time or the plot." if has_exact_rows(bench) else "")
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
        lines += ["## Failures", ""] + [f"- {e['method']} ({e['status']}): {md_text(e['error'])}" for e in failed] + [""]  # a model's own text
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


def _place_labels(ax: Any, points: list[tuple[float, float, str]], fontsize: int = 8) -> None:
    """Label points without overlaps: points at the same place share one label; each label takes the first of a few
    offsets whose box does not overlap a label placed before it and stays inside the axes (a label of the rightmost
    point went past the edge and was cut)."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    merged: dict[tuple[float, float], list[str]] = {}
    for x, y, name in points:
        merged.setdefault((round(x, 6), round(y, 6)), []).append(name)
    placed: list[Any] = []
    offsets = [(6, 4, "left"), (6, -11, "left"), (-6, 4, "right"), (-6, -11, "right"), (6, 14, "left"), (-6, 14, "right"),
               (6, -21, "left"), (-6, -21, "right")]
    for (x, y), names in sorted(merged.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        for dx, dy, ha in offsets:
            t = ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize, ha=ha)
            box = t.get_window_extent(renderer).expanded(1.05, 1.15)
            if frame.x0 <= box.x0 and box.x1 <= frame.x1 and not any(box.overlaps(b) for b in placed):
                placed.append(box)
                break
            t.remove()
        else:
            t = ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=offsets[0][:2], fontsize=fontsize, ha="left")
            placed.append(t.get_window_extent(renderer))


def _clipped(mean: float, std: Optional[float], lo: float = 0.0, hi: float = 100.0) -> list[list[float]]:
    """Asymmetric error bar of mean ± std kept inside [lo, hi] (a percentage never goes below 0 or above 100)."""
    sd = std or 0.0
    return [[min(sd, mean - lo)], [min(sd, hi - mean)]]


def plot_png(bench: dict[str, Any]) -> bytes:
    """Left: forgetting (UA) against utility (TA; remaining-class TA for class unlearning). Right: wall time against Avg Gap,
    with the Pareto front (no method both faster and closer to the baseline) marked. Mean ± std over seeds."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    regression = bench["request"].get("task", "classification") == "regression"
    scenario = bench["request"]["scenario"]
    if regression:  # errors in target units: forget MAE (a retrained model's is the target) against test MAE (utility)
        xkey, ykey, scale = "forget_mae", "test_remaining_mae" if scenario == "range" else "test_mae", 1.0
        xlabel = "forget-set MAE (target units)  [forgetting: the target is the baseline's]"
        ylabel = ("test MAE outside the forgotten range" if scenario == "range" else "test MAE") + " (target units)  [utility; lower is better]"
    else:
        xkey, ykey, scale = "ua", "test_remaining_acc" if scenario == "class" else "test_acc", 100.0
        xlabel = "UA = 1 - forget accuracy (%)  [forgetting]"
        ylabel = ("test accuracy, remaining classes" if ykey == "test_remaining_acc" else "test accuracy") + " (%)  [utility]"
    hi = 100.0 if not regression else float("inf")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    points = []

    def point(e: dict[str, Any], **style: Any) -> None:
        x, y = e["metrics"].get(xkey), e["metrics"].get(ykey)
        if not x or not y or x["mean"] is None or y["mean"] is None:
            return
        mx, my = scale * x["mean"], scale * y["mean"]
        ax.errorbar(mx, my, xerr=_clipped(mx, scale * (x["std"] or 0), 0.0, hi), yerr=_clipped(my, scale * (y["std"] or 0), 0.0, hi),
                    capsize=3, alpha=0.85, **style)
        points.append((mx, my, e["method"] if e["kind"] == "method" else f"({e['method']})"))

    for e in bench["methods"].values():
        point(e, fmt="o", color="tab:blue")
    if bench.get("original"):
        point(bench["original"], fmt="X", color="gray", markersize=9)
    if bench.get("reference"):
        point(bench["reference"], fmt="*", color="black", markersize=13)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("Forgetting against utility", fontsize=10)
    ax.grid(alpha=0.3)
    legend = [Line2D([], [], marker="o", color="tab:blue", ls="", label="method (mean ± std over seeds)"),
              Line2D([], [], marker="X", color="gray", ls="", markersize=9, label="original (before unlearning)")]
    if bench.get("reference"):  # drawn only then; without one the original is no target
        legend.append(Line2D([], [], marker="*", color="black", ls="", markersize=13, label=f"{bench['baseline']} (the target)"))
    ax.legend(handles=legend, fontsize=8, loc="best")
    _place_labels(ax, points)

    front = pareto_front(bench)
    pts2 = []
    for n, e in bench["methods"].items():
        t, g = e["metrics"]["wall_time_s"], e["metrics"]["avg_gap"]
        if t["mean"] is None or g["mean"] is None:
            continue
        on = n in front
        ax2.errorbar(t["mean"], g["mean"], yerr=_clipped(g["mean"], g["std"], 0.0, float("inf")), fmt="o",
                     color="tab:red" if on else ("0.6" if n == "retrain" else "tab:blue"), capsize=3, alpha=0.85)
        pts2.append((t["mean"], g["mean"], n))
    if front:
        xy = sorted((bench["methods"][n]["metrics"]["wall_time_s"]["mean"], bench["methods"][n]["metrics"]["avg_gap"]["mean"]) for n in front)
        ax2.step([p[0] for p in xy], [p[1] for p in xy], where="post", color="tab:red", alpha=0.6)
    if pts2:
        from matplotlib.ticker import LogLocator, NullFormatter

        ax2.set_xscale("log")
        ax2.xaxis.set_minor_formatter(NullFormatter())  # minor labels (2x10^-1, 3x10^-1, ...) overlapped on a short span
        ax2.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax2.set_yscale("symlog", linthresh=1.0)  # gaps below 1 point stay readable next to a method that failed (tens)
        top = max(e["metrics"]["avg_gap"]["mean"] + (e["metrics"]["avg_gap"]["std"] or 0.0) for e in bench["methods"].values()
                  if e["metrics"]["avg_gap"]["mean"] is not None)
        ax2.set_ylim(bottom=0, top=max(2.0, top * 2.0))  # room above the highest error bar for the legend
    ax2.set_xlabel("method wall time (s, log scale; s3t/sisa: deletion latency, training not included)  [cost]"
                   if has_exact_rows(bench) else "method wall time (s, log scale)  [cost]")
    if bench["baseline"] == "original":
        ax2.set_ylabel(f"{gap_label(bench)} (points, linear below 1)")  # the label says from what
        ax2.set_title("Cost against distance from the original (no reference: no Pareto front)", fontsize=10)
    else:
        ax2.set_ylabel(f"{gap_label(bench)} (points, linear below 1)  [lower is closer]")
        ax2.set_title("Cost against closeness to the baseline (red: Pareto front)", fontsize=10)
    ax2.grid(alpha=0.3, which="both")
    handles = ([Line2D([], [], marker="o", color="tab:red", ls="-", label="Pareto front: nothing both faster and closer"),
                Line2D([], [], marker="o", color="tab:blue", ls="", label="dominated")] if front else
               [Line2D([], [], marker="o", color="tab:blue", ls="", label="method (mean over seeds)")])
    if any(n == "retrain" for *_, n in pts2):  # only when a retrain run is plotted
        handles.append(Line2D([], [], marker="o", color="0.6", ls="", label="retrain (the baseline's procedure)"))
    ax2.legend(handles=handles, fontsize=8, loc="best")
    _place_labels(ax2, pts2)
    fig.suptitle(f"unlearn bench: {shown(bench['request']['id'])} ({bench['request']['scenario']} unlearning), {len(bench['seeds'])} seed(s)",
                 fontsize=11, parse_math=False)  # the id is text: a $ in it is no TeX (an unpaired one failed the whole bench)
    fig.tight_layout()
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
    """bench.json, bench.csv, bench.md and bench.png into `folder` (new, or one a previous bench wrote), all or none."""
    return write_report_files(Path(folder), BENCH_FILES, {
        "bench.json": lambda: (to_json(bench) + "\n").encode(),
        "bench.csv": lambda: render_csv(bench).encode(),
        "bench.md": lambda: render_markdown(bench).encode(),
        "bench.png": lambda: plot_png(bench)})
