"""Report writers: report.json (the record), report.md (the tables), report.html (self-contained, with plots).

Every file is written atomically (temporary file in the report folder, then rename).
The HTML embeds its plots as base64 PNG data URIs and references nothing outside itself.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Optional

from ..errors import OutputError
from ..reporting import md_table, png_data_uri, prepare_report_dir, pyplot, write_report_file
from .registry import format_metric, format_value, model_metrics

MODEL_NAMES = ("original", "unlearned", "reference")
AUDIT_FILES = ("report.json", "report.md", "report.html")


def default_report_dir(unlearned: str | Path) -> Path:
    """`<unlearned stem>.audit/` beside the unlearned checkpoint or adapter folder."""
    p = Path(unlearned)
    name = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else (p.name if p.is_dir() else p.stem)
    return p.with_name(f"{name}.audit")


def write_reports(report: dict[str, Any], folder: str | Path) -> Path:
    """Write report.json, report.md and report.html into `folder` (created, or one this tool wrote before)."""
    folder = prepare_report_dir(Path(folder), AUDIT_FILES)
    write_report_file(folder / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    write_report_file(folder / "report.md", render_markdown(report).encode())
    write_report_file(folder / "report.html", render_html(report).encode())
    return folder


# ---------------------------------------------------------------- shared pieces

def fmt(v: Any, points: bool = False) -> str:
    """Fractions as percentages with two decimals; points as-is; undefined as '-'."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is not None and not isinstance(v, (int, float)):
        return str(v)
    return format_value(v, "points" if points else "fraction")


def present_models(report: dict[str, Any]) -> list[str]:
    return [m for m in MODEL_NAMES if report["models"].get(m) is not None]


def metric_rows(report: dict[str, Any], short: bool = False) -> list[list[str]]:
    """Rows metric x model, then the gap to the baseline (short: metric keys instead of labels)."""
    models = present_models(report)
    rows = []
    task = report["request"].get("task", "classification")
    for metric in model_metrics(task):
        key = metric.name
        if all(report["models"][m].get(key) is None for m in models):
            continue
        rows.append([key if short else metric.label] + [format_metric(key, report["models"][m].get(key)) for m in models]
                    + [format_metric(key, report["gaps"].get(key))])
    return rows


def distance_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for m in present_models(report):
        d = report["models"][m]
        if d.get("activation_distance") is None:
            continue
        rows.append([m] + [f"{d['activation_distance'][s]:.4f}" if d["activation_distance"][s] is not None else "-" for s in ("forget", "retain", "test")]
                    + [f"{d['js_divergence'][s]:.4f}" if d["js_divergence"][s] is not None else "-" for s in ("forget", "retain", "test")])
    return rows


def gate_rows(report: dict[str, Any]) -> list[list[str]]:
    out = []
    for g in report["gates"]:
        value = "-" if g["value"] is None else f"{g['value']:.4g}"
        out.append([g["expr"], value, "pass" if g["passed"] else "FAIL"])
    return out


def provenance_rows(report: dict[str, Any]) -> list[list[str]]:
    p = report["provenance"]
    rows = [[f"{k} file", str(p["inputs"].get(k) or "-"), str(p["sha256"].get(k) or "-")] for k in ("request", "original", "unlearned", "reference")]
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    return md_table(header, rows)


def _title(report: dict[str, Any]) -> str:
    r = report["request"]
    what = f"classes {r['forget_classes']}" if r["scenario"] == "class" else f"{r['forget_size']} samples"
    return f"Unlearning audit: request {r['id']} ({r['scenario']} unlearning of {what})"


# ---------------------------------------------------------------- markdown

def render_markdown(report: dict[str, Any]) -> str:
    models = present_models(report)
    u = report["unlearning"]
    p = report["provenance"]
    parts = [f"# {_title(report)}\n",
             f"**Verdict: {report['verdict']}**. Baseline for gaps and distances: **{report['baseline']}**"
             + (" (no retrained reference given: gaps are to the original model, not a retrained one)" if report["baseline"] == "original" else "") + ".\n"]
    if report["gates"]:
        parts += ["## Gates\n", _md_table(["gate", "value", "result"], gate_rows(report))]
    parts += ["## Warnings\n", ("\n".join(f"- {w}" for w in report["warnings"]) + "\n") if report["warnings"] else "None.\n"]
    parts += ["## Metrics\n", "Fractions shown as percentages; gap = |unlearned - baseline|.\n\n",
              _md_table(["metric"] + models + [f"gap to {report['baseline']}"], metric_rows(report))]
    gap = report["gaps"].get("avg_gap")
    parts.append(f"\n**Avg Gap** (SalUn; mean |gap| over UA, MIA-Efficacy, RA, TA): {fmt(gap, points=True)} points\n")
    if distance_rows(report):
        parts += [f"\n## Output distances to the {report['baseline']}\n",
                  _md_table(["model", "act. dist. forget", "act. dist. retain", "act. dist. test", "JS forget", "JS retain", "JS test"], distance_rows(report))]
    n = report["request"]["num_classes"]
    parts += ["\n## Per-class test accuracy\n",
              _md_table(["class"] + models, [[str(c)] + [fmt(report["models"][m]["per_class_acc"][c]) for m in models] for c in range(n)])]
    parts += ["\n## Unlearning run\n",
              _md_table(["field", "value"], [["method", str(u.get("method") or "-")], ["wall time (s)", str(u.get("wall_time_s") or "-")],
                                             ["params", json.dumps(u.get("params")) if u.get("params") is not None else "-"]])]
    parts += ["\n## Provenance\n", _md_table(["input", "path", "sha256"], provenance_rows(report)),
              "\n" + _md_table(["field", "value"], [[k, str(v)] for k, v in p["versions"].items()]
                               + [["device", p["device"]], ["seed", str(p["seed"])], ["started", p["started_utc"]],
                                  ["finished", p["finished_utc"]], ["audit time (s)", str(p["audit_time_s"])]])]
    return "\n".join(part.strip("\n") + "\n" for part in parts)


# ---------------------------------------------------------------- html

def _png(fig: Any) -> str:
    return png_data_uri(fig)


def plot_per_class(report: dict[str, Any]) -> str:
    """Grouped bars: per-class test accuracy of each model."""
    import numpy as np

    plt = pyplot()

    models = present_models(report)
    n = report["request"]["num_classes"]
    shown = min(n, 100)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * shown + 2), 3.5))
    width = 0.8 / len(models)
    x = np.arange(shown)
    for i, m in enumerate(models):
        vals = [v if v is not None else 0.0 for v in report["models"][m]["per_class_acc"][:shown]]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, vals, width, label=m)
    for c in report["request"]["forget_classes"]:
        if c < shown:
            ax.axvspan(c - 0.45, c + 0.45, color="red", alpha=0.08)
    ax.set_xticks(x)
    ax.set_xlabel("class" + (f" (first {shown} of {n})" if shown < n else ""))
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Per-class test accuracy (forgotten classes shaded)")
    return _png(fig)


def plot_losses(report: dict[str, Any]) -> str:
    """Per model: distribution of per-sample CE loss on retain, forget and test data (log scale)."""
    import numpy as np

    plt = pyplot()

    models = present_models(report)
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.2), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], models):
        h = report["models"][m]["loss_hist"]
        edges = np.asarray(h["edges"])
        for s, color in (("retain", "tab:blue"), ("forget", "tab:red"), ("test", "tab:green")):
            counts = np.asarray(h[s], dtype=float)
            share = counts / counts.sum() if counts.sum() else counts
            ax.stairs(share, edges, label=s, color=color, linewidth=1.5)
        ax.set_xscale("log")
        ax.set_title(m)
        ax.set_xlabel("per-sample cross-entropy loss")
    axes[0][0].set_ylabel("share of samples")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("Loss distributions: forget should look like test (never seen), not like retain", y=1.04)
    return _png(fig)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}.pass{color:#176317}.fail{color:#b00020}.warn{background:#fff4e0;padding:.4em}
img{max-width:100%}code{background:#f3f3f3}"""


def render_html(report: dict[str, Any]) -> str:
    """One self-contained page: inline CSS, plots as data URIs, no link or script to anywhere else."""
    e = html.escape
    models = present_models(report)
    verdict = report["verdict"]
    cls = "pass" if verdict == "pass" else ("fail" if verdict == "fail" else "")
    p = report["provenance"]
    u = report["unlearning"]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(_title(report))}</title><style>{CSS}</style></head><body>",
             f"<h1>{e(_title(report))}</h1>",
             f"<p>Verdict: <strong class='{cls}'>{e(verdict)}</strong>. Baseline for gaps and distances: <strong>{e(report['baseline'])}</strong>.</p>"]
    if report["gates"]:
        parts += ["<h2>Gates</h2>", _html_table(["gate", "value", "result"], gate_rows(report))]
    parts.append("<h2>Warnings</h2>")
    parts.append("".join(f"<p class='warn'>{e(w)}</p>" for w in report["warnings"]) or "<p>None.</p>")
    parts += ["<h2>Metrics</h2>", _html_table(["metric"] + models + [f"gap to {report['baseline']}"], metric_rows(report)),
              f"<p><strong>Avg Gap</strong> (mean |gap| over UA, MIA-Efficacy, RA, TA): {e(fmt(report['gaps'].get('avg_gap'), points=True))} points</p>"]
    if distance_rows(report):
        parts += [f"<h2>Output distances to the {e(report['baseline'])}</h2>",
                  _html_table(["model", "act. dist. forget", "act. dist. retain", "act. dist. test", "JS forget", "JS retain", "JS test"], distance_rows(report))]
    parts += ["<h2>Per-class test accuracy</h2>", f"<img alt='per-class accuracy' src='{plot_per_class(report)}'>",
              "<h2>Loss distributions</h2>", f"<img alt='loss distributions' src='{plot_losses(report)}'>"]
    parts += ["<h2>Unlearning run</h2>",
              _html_table(["field", "value"], [["method", str(u.get("method") or "-")], ["wall time (s)", str(u.get("wall_time_s") or "-")],
                                               ["params", json.dumps(u.get("params")) if u.get("params") is not None else "-"]])]
    parts += ["<h2>Provenance</h2>", _html_table(["input", "path", "sha256"], provenance_rows(report)),
              _html_table(["field", "value"], [[k, str(v)] for k, v in p["versions"].items()]
                          + [["device", p["device"]], ["seed", str(p["seed"])], ["started", p["started_utc"]],
                             ["finished", p["finished_utc"]], ["audit time (s)", str(p["audit_time_s"])]]),
              "</body></html>\n"]
    return "".join(parts)


def summary_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the terminal summary (metrics, gaps, then gates)."""
    header = ["metric"] + present_models(report) + [f"gap to {report['baseline']}"]
    return header, metric_rows(report, short=True)


def report_dir_for(unlearned: Optional[str | Path], explicit: Optional[str | Path]) -> Path:
    """The explicit --report-dir, else the default beside the unlearned output."""
    if explicit is not None:
        return Path(explicit)
    if unlearned is None:
        raise OutputError("no report dir: give --report-dir")
    return default_report_dir(unlearned)
