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
from ..reporting import md_table, md_text, png_data_uri, pyplot, samples_text, shown, write_report_files
from .registry import format_gap, format_metric, format_value, model_metrics

MODEL_NAMES = ("original", "unlearned", "reference")
AUDIT_FILES = ("report.json", "report.md", "report.html")


def default_report_dir(unlearned: str | Path) -> Path:
    """`<unlearned stem>.audit/` beside the unlearned checkpoint or adapter folder."""
    p = Path(unlearned)
    name = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else (p.name if p.is_dir() else p.stem)
    return p.with_name(f"{name}.audit")


def write_reports(report: dict[str, Any], folder: str | Path) -> Path:
    """Write report.json, report.md and report.html into `folder` (created, or one this tool wrote before)."""
    return write_report_files(Path(folder), AUDIT_FILES, {
        "report.json": lambda: (json.dumps(report, indent=2) + "\n").encode(),
        "report.md": lambda: render_markdown(report).encode(),
        "report.html": lambda: render_html(report).encode()})


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


def task_of(report: dict[str, Any]) -> str:
    return report["request"].get("task", "classification")


def gap_caption(report: dict[str, Any]) -> str:
    """How the metrics table's gap column is computed: regression errors use a relative gap (docs/audit.md)."""
    base = report["baseline"]
    if task_of(report) == "regression":
        return (f"Shares as percentages; errors in the target's units. Gap: for MAE and RMSE relative, "
                f"|unlearned - {base}| / {base}, as a percentage; for R² and the attack figures |unlearned - {base}|.")
    return f"Fractions as percentages; gap = |unlearned - {base}|."


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
                    + [format_gap(key, report["gaps"].get(key))])
    return rows


def distance_kinds(report: dict[str, Any]) -> list[str]:
    """The distances this report holds: activation distance, and JS divergence for probability outputs."""
    return ["activation_distance"] + (["js_divergence"] if task_of(report) == "classification" else [])


def distance_header(report: dict[str, Any]) -> list[str]:
    short = {"activation_distance": "act. dist.", "js_divergence": "JS"}
    return ["model"] + [f"{short[k]} {s}" for k in distance_kinds(report) for s in ("forget", "retain", "test")]


def distance_text(report: dict[str, Any]) -> str:
    if task_of(report) == "regression":
        return "Mean L2 distance between the models' raw outputs (activation distance, in target units), per set; 0 is identical."
    return "Mean L2 distance between softmax outputs (activation distance) and mean Jensen-Shannon divergence, per set; 0 is identical."


def distance_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for m in present_models(report):
        d = report["models"][m]
        if d.get("activation_distance") is None:
            continue
        rows.append([m] + [f"{(d.get(k) or {}).get(s):.4f}" if (d.get(k) or {}).get(s) is not None else "-"
                           for k in distance_kinds(report) for s in ("forget", "retain", "test")])
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
    return f"Unlearning audit: request {r['id']} ({r['scenario']} unlearning of {forgotten_text(r)})"


def forgotten_text(r: dict[str, Any]) -> str:
    """What a request forgot, in a few words (classes, a target range, or a number of samples)."""
    if r["scenario"] == "class":
        return f"classes {r['forget_classes']}"
    if r["scenario"] == "range" and r.get("target_range"):
        lo, hi, column = r["target_range"]
        return f"{samples_text(r['forget_size'])} with targets in [{lo:g}, {hi:g}]" + (f" (column {column})" if column else "")
    return samples_text(r["forget_size"])


# ---------------------------------------------------------------- the opening: verdict, evidence, utility

def verdict_block(report: dict[str, Any]) -> tuple[str, list[str], str]:
    """The verdict in one sentence, its evidence in (at most) three lines, and the utility cost."""
    d = report.get("verdict_detail") or {}
    return d.get("sentence", f"Verdict: {report['verdict']}."), list(d.get("evidence", [])), d.get("utility", "")


def check_rows(report: dict[str, Any]) -> list[list[str]]:
    d = report.get("verdict_detail") or {}
    return [[c["name"], c["value"], c["expectation"], "pass" if c["passed"] else ("FAIL" if c["passed"] is False else "not measured"),
             c["meaning"]] for c in d.get("checks", [])]


def closer_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in (report.get("verdict_detail") or {}).get("closer_to_reference") or []:
        name = r["metric"]
        f = (lambda v: format_metric(name, v)) if not name.startswith(("activation_distance", "js_divergence")) else (lambda v: f"{v:.4f}")
        rows.append([name, f(r["reference"]), f(r["original"]), f(r["unlearned"]), "yes" if r["closer"] else "NO"])
    return rows


def avg_gap_sentence(report: dict[str, Any]) -> str:
    gap = fmt(report["gaps"].get("avg_gap"), points=True)
    if task_of(report) == "regression":
        over = ("the relative gaps of retain, forget and test MAE and the gap of MIA-Efficacy (mean, x 100)")
        if report["baseline"] == "original":
            return (f"Avg Gap to the original: {gap} points over {over}. With no retrained reference this is how far unlearning "
                    "moved the model from the original, not a quality score; give --reference (a model retrained without the "
                    "forget set) for the distance that matters.")
        return f"Avg Gap to the retrained reference: {gap} points over {over}; 0 is indistinguishable from retraining on these four figures."
    if report["baseline"] == "original":
        return (f"Avg Gap to the original: {gap} points. With no retrained reference this is how far unlearning moved the model "
                "from the original on UA, MIA-Efficacy, RA and TA (mean absolute difference, in points), not a quality score; "
                "give --reference (a model retrained without the forget set) for the distance that matters.")
    return (f"Avg Gap to the retrained reference: {gap} points (SalUn's mean absolute difference over UA, MIA-Efficacy, RA "
            "and TA; 0 is indistinguishable from retraining on these four figures).")


def distance_note(report: dict[str, Any]) -> Optional[str]:
    """A comment when the unlearned model's outputs are farther from the reference than the original's were."""
    if report["baseline"] != "reference":
        return None
    unl = (report["models"]["unlearned"].get("activation_distance") or {}).get("forget")
    orig = (report["models"]["original"].get("activation_distance") or {}).get("forget")
    if unl is None or orig is None:
        return None
    if unl > orig:
        return (f"Note: on the forget set the unlearned model's outputs are farther from the retrained model's than the original's "
                f"were (activation distance {unl:.4f} vs {orig:.4f}): unlearning moved them, but not towards retraining.")
    if unl == orig or f"{unl:.4f}" == f"{orig:.4f}":  # the same outputs (an unchanged model) are not "closer"
        return (f"On the forget set the unlearned model's outputs are as far from the retrained model's as the original's were "
                f"(activation distance {unl:.4f}): unlearning did not move them.")
    return f"On the forget set the unlearned model's outputs are closer to the retrained model's than the original's were ({unl:.4f} vs {orig:.4f})."


def explained_metric_rows(report: dict[str, Any]) -> list[list[str]]:
    """Metric rows with their meaning (the registry's description) as the last column."""
    task = report["request"].get("task", "classification")
    meaning = {m.label: m.description for m in model_metrics(task)}
    return [row + [meaning.get(row[0], "")] for row in metric_rows(report)]


def params_rows(report: dict[str, Any]) -> list[list[str]]:
    u = report["unlearning"]
    rows = [["method", str(u.get("method") or "-")], ["wall time (s)", str(u.get("wall_time_s") or "-")]]
    params = u.get("params")
    info = (u.get("metadata") or {}).get("run_info")  # how the run went, as the output recorded it (none before this field)
    if isinstance(info, dict):
        from ..stop_text import stop_line

        line = stop_line(info, params if isinstance(params, dict) else {})
        rows += ([["how it ended", line]] if line else []) + [[f"run {k}", json.dumps(v) if not isinstance(v, str) else v] for k, v in info.items()]
    if isinstance(params, dict):
        rows += [[f"param {k}", json.dumps(v) if not isinstance(v, str) else v] for k, v in params.items()]
    return rows


def statistics_rows(report: dict[str, Any]) -> list[list[str]]:
    stats = (report.get("verdict_detail") or {}).get("statistics") or {}
    rows = []
    for model in present_models(report):
        st = stats.get(model) or {}
        ks = lambda k: "-" if k not in st else f"p = {st[k]['pvalue']:.3f} (D = {st[k]['statistic']:.3f})"  # noqa: E731
        auc = st.get("loss_auc") or {}
        rows.append([model, ks("ks_loss")] + ([] if task_of(report) == "regression" else [ks("ks_ent")])
                    + ["-" if auc.get("auc") is None else f"{auc['auc']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}]"])
    return rows


def statistics_header(report: dict[str, Any]) -> list[str]:
    if task_of(report) == "regression":
        return ["model", "KS error", "loss AUC [95% CI]"]
    return ["model", "KS loss", "KS entropy", "loss AUC [95% CI]"]


def statistics_text(report: dict[str, Any]) -> str:
    if task_of(report) == "regression":
        stats = (report.get("verdict_detail") or {}).get("statistics") or {}
        range_ = any((v or {}).get("heldout") == "range" for v in stats.values())
        held = "test samples whose targets lie in the forgotten range" if range_ else "test samples"
        return (f"Two-sample Kolmogorov-Smirnov tests of the per-sample absolute error (forget set vs {held}; the squared error and the "
                f"loss give the same test), and the loss attack's AUC with its 95% bootstrap interval {AUC_DIRECTION}.")
    return ("Two-sample Kolmogorov-Smirnov tests (forget vs test) of per-sample loss and prediction entropy, and the loss attack's AUC "
            f"with its 95% bootstrap interval {AUC_DIRECTION}.")


AUC_DIRECTION = ("(0.5 = indistinguishable; above 0.5 the forget set's losses are lower than held-out data's, still fitted; below "
                 "0.5 higher, a deletion that shows. The metrics table's loss MIA AUC is a trained attack's, direction-free: 0.5 or more)")


def lineage_rows(report: dict[str, Any]) -> list[list[str]]:
    """Earlier deletions of the lineage: then and now."""
    rows = []
    for r in ((report.get("lineage") or {}).get("steps") or []):
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        rows.append([str(r["step"]), str(r.get("request_id")), str(r.get("forget_count")), pct(r.get("forget_acc_then")),
                     pct(r.get("forget_acc_now")), pct(r.get("mia_efficacy_now")),
                     "RELAPSED" if r.get("relapsed") else ("no" if r.get("relapsed") is False else r.get("problem", "-"))])
    return rows


LINEAGE_TEXT = ("Every earlier deletion of this checkpoint's lineage, re-checked: its forget accuracy right after it was made and now "
                "(a rise above 5 points is a relapse: the deletion became visible again), and MIA-Efficacy on it now. Gate: relapse_max.")


def strong_rows(report: dict[str, Any]) -> list[list[str]]:
    """The strong tier per model: U-LiRA AUC, TPR at 1% and 0.1% FPR, relearn steps."""
    strong = report.get("strong") or {}
    rows = []
    tpr = lambda e, k: "-" if e.get(k) is None else f"{100 * e[k]:.1f}%" + ("" if e.get(k + "_resolved", True) else " (too few negatives)")  # noqa: E731
    for name, e in (strong.get("models") or {}).items():
        rows.append([name, "-" if e.get("auc") is None else f"{e['auc']:.3f}", tpr(e, "tpr_at_1pct_fpr"), tpr(e, "tpr_at_0.1pct_fpr"),
                     "-" if e.get("relearn_steps") is None else str(e["relearn_steps"])])
    if strong.get("shadow_attack"):
        e = strong["shadow_attack"]
        rows.append(["(shadows: unlearned vs never seen)", "-" if e.get("auc") is None else f"{e['auc']:.3f}",
                     tpr(e, "tpr_at_1pct_fpr"), tpr(e, "tpr_at_0.1pct_fpr"), "-"])
    return rows


def strong_text(report: dict[str, Any]) -> str:
    strong = report.get("strong") or {}
    p = strong.get("protocol", {})
    ain = strong.get("ain")
    return (f"{p.get('attack', 'U-LiRA')} with {p.get('shadows')} shadow models (trained on random halves with the request's recipe"
            + (f", then unlearned with {p.get('shadow_method')}" if p.get("shadow_method") else "") + "): per forget example, the likelihood "
            "ratio of the model's logit-scaled confidence under 'unlearned' and 'never seen' shadows. Positives: the model's scores on the "
            "forget set; negatives: the never-seen shadows' scores. The reference never saw the forget set, so its row is the attack's "
            "chance level here (not exactly 0.5: shadows train on half the data). Relearn steps: fine-tuning steps on the forget set until "
            f"{p.get('relearn', {}).get('target', 'the original behaviour returns')}; AIN = unlearned / reference "
            + ("-" if ain is None else f"= {ain:.2f}") + f" (below 1: it comes back faster than it can be learned from scratch). "
            f"Took {strong.get('time_s', '-')} s ({strong.get('cache_hits', 0)} shadow models from the cache).")


# ---------------------------------------------------------------- markdown

def render_markdown(report: dict[str, Any]) -> str:
    models = present_models(report)
    p = report["provenance"]
    sentence, evidence, utility = verdict_block(report)
    d = report.get("verdict_detail") or {}
    parts = [f"# {md_text(_title(report))}\n", f"**{md_text(sentence)}**\n", "\n".join(f"- {md_text(line)}" for line in evidence) + "\n",
             f"{md_text(utility)}.\n"]  # all may hold foreign text (paths, metadata, a ledger's errors): escaped like the tables
    parts += ["## How the verdict was decided\n", f"By the {d.get('decided_by', 'gates')}"
              + (" (the default policy's checks below are for information)" if report["gates"] else " (docs/audit.md; give --gate to set your own criteria)") + ".\n\n",
              _md_table(["check", "value", "expected", "result", "what it means"], check_rows(report))]
    if report["gates"]:
        parts += ["\n## Gates\n", _md_table(["gate", "value", "result"], gate_rows(report))]
    parts += ["\n## Warnings\n", ("\n".join(f"- {md_text(w)}" for w in report["warnings"]) + "\n") if report["warnings"] else "None.\n"]
    if closer_rows(report):
        parts += ["\n## Closer to the retrained model than the original was?\n",
                  _md_table(["metric", "reference", "original", "unlearned", "closer"], closer_rows(report))]
    parts += ["\n## Metrics\n", f"{gap_caption(report)}\n\n",
              _md_table(["metric"] + models + [f"gap to {report['baseline']}", "what it means"], explained_metric_rows(report)),
              "\n" + avg_gap_sentence(report) + "\n"]
    if distance_rows(report):
        parts += [f"\n## Output distances to the {report['baseline']}\n", distance_text(report) + "\n\n",
                  _md_table(distance_header(report), distance_rows(report))]
        note = distance_note(report)
        if note:
            parts.append("\n" + note + "\n")
    if statistics_rows(report):
        parts += ["\n## Forget set against held-out data\n", statistics_text(report) + "\n\n",
                  _md_table(statistics_header(report), statistics_rows(report))]
    if lineage_rows(report):
        parts += ["\n## Earlier deletions (lineage)\n", LINEAGE_TEXT + "\n\n",
                  _md_table(["step", "request", "samples", "forget acc then", "now", "MIA-Efficacy now", "relapse"], lineage_rows(report))]
    if report.get("strong"):
        parts += ["\n## Per-example attack (U-LiRA) and relearn time\n", strong_text(report) + "\n\n",
                  _md_table(["model", "AUC", "TPR at 1% FPR", "TPR at 0.1% FPR", "relearn steps"], strong_rows(report))]
    n = report["request"]["num_classes"]
    if all(report["models"][m].get("per_class_acc") is not None for m in models):
        parts += ["\n## Per-class test accuracy\n",
                  _md_table(["class"] + models, [[str(c) + (" (forgotten)" if c in report["request"]["forget_classes"] else "")]
                                                 + [fmt(report["models"][m]["per_class_acc"][c]) for m in models] for c in range(n)])]
    parts += ["\n## Unlearning run\n", _md_table(["field", "value"], params_rows(report))]
    parts += ["\n## Provenance\n", _md_table(["input", "path", "sha256"], provenance_rows(report)),
              "\n" + _md_table(["field", "value"], [[k, str(v)] for k, v in p["versions"].items()]
                               + [["device", p["device"]], ["seed", str(p["seed"])], ["started", p["started_utc"]],
                                  ["finished", p["finished_utc"]], ["audit time (s)", str(p["audit_time_s"])]])]
    return "\n".join(part.strip("\n") + "\n" for part in parts)


# ---------------------------------------------------------------- plots

def _png(fig: Any) -> str:
    return png_data_uri(fig)


def plot_per_class(report: dict[str, Any]) -> str:
    """Grouped bars: per-class test accuracy of each model; forgotten classes on a grey band, legend outside the bars."""
    import numpy as np

    plt = pyplot()
    models = present_models(report)
    n = report["request"]["num_classes"]
    shown = min(n, 100)
    forgotten = [c for c in report["request"]["forget_classes"] if c < shown]
    fig, ax = plt.subplots(figsize=(max(6.5, 0.55 * shown + 2.5), 3.6))
    width = 0.8 / len(models)
    x = np.arange(shown)
    colors = {"original": "tab:gray", "unlearned": "tab:blue", "reference": "tab:orange"}
    for i, m in enumerate(models):
        vals = [v if v is not None else 0.0 for v in report["models"][m]["per_class_acc"][:shown]]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, vals, width, label=m, color=colors.get(m))
    for c in forgotten:
        ax.axvspan(c - 0.5, c + 0.5, color="0.85", zorder=0)
        ax.annotate("forgotten", (c, 1.07), ha="center", fontsize=8, color="0.3", annotation_clip=False)
    ax.set_xticks(x)
    ax.set_xlim(-0.6, shown - 0.4)
    ax.set_xlabel("class" + (f" (first {shown} of {n})" if shown < n else ""))
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title("Per-class test accuracy" + (" (forgotten classes on grey)" if forgotten else ""), pad=14)
    return _png(fig)


def _shares(counts: list[int]) -> "Any":
    import numpy as np

    c = np.asarray(counts, dtype=float)
    return c / c.sum() if c.sum() else c


RETAIN_FORGET_TEST = (("retain", "tab:blue", "retain"), ("forget", "tab:red", "forget"), ("test", "tab:green", "test"))


def _distribution_panels(report: dict[str, Any], hist_key: str, xlabel: str, caption: str, log_x: bool = False,
                         series: tuple[tuple[str, str, str], ...] = RETAIN_FORGET_TEST, zero_line: bool = False,
                         caption_size: Optional[float] = None) -> str:
    """One panel per model: the stored histograms `report.models[m][hist_key]` of each series, as shares of samples."""
    import numpy as np

    plt = pyplot()
    models = present_models(report)
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.2), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], models):
        h = report["models"][m][hist_key]
        edges = np.asarray(h["edges"])
        for key, color, label in series:
            ax.stairs(_shares(h[key]), edges, label=label, color=color, linewidth=1.5)
        if log_x:
            ax.set_xscale("log")
        if zero_line:
            ax.axvline(0.0, color="0.5", linewidth=0.8)
        ax.set_title(m)
        ax.set_xlabel(xlabel)
    axes[0][0].set_ylabel("share of samples")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(caption, y=1.04, **({"fontsize": caption_size} if caption_size else {}))
    return _png(fig)


def plot_losses(report: dict[str, Any]) -> str:
    """Per model: distribution of per-sample CE loss on retain, forget and test data (log scale)."""
    if report["request"]["scenario"] == "class":
        caption = "Loss distributions: a model that never saw the forgotten classes gets their samples wrong (high forget loss)"
    else:
        caption = "Loss distributions: forget should look like test (never seen), not like retain"
    return _distribution_panels(report, "loss_hist", "per-sample cross-entropy loss", caption, log_x=True)


def plot_residuals(report: dict[str, Any]) -> str:
    """Per model: distribution of the signed residual (prediction - target) on retain, forget and test data."""
    if report["request"]["scenario"] == "range":
        caption = "Residuals: a model that never saw the range errs on it (forget residuals spread out, like a retrained model's)"
    else:
        caption = "Residuals: forget should look like test (never seen), not like retain"
    return _distribution_panels(report, "residual_hist", "residual: prediction - target",
                                caption + " (bins over +-3 target sd; the end bins hold everything beyond)", zero_line=True, caption_size=10)


def plot_mia_scores(report: dict[str, Any]) -> str:
    """Per model: what the membership attacks read, the per-sample absolute error (log scale), forget against held-out data
    (and retain, the members the efficacy attack trains on)."""
    series = (("retain", "tab:blue", "retain (members)"), ("forget", "tab:red", "forget"), ("heldout", "tab:green", "held-out (non-members)"))
    return _distribution_panels(report, "error_hist", "absolute error |prediction - target|",
                                "Membership-attack scores: the forget set's errors should look like held-out data's", log_x=True, series=series)


PLOTTERS = {"per_class": ("Per-class test accuracy", plot_per_class), "loss": ("Loss distributions", plot_losses),
            "residuals": ("Residual distributions", plot_residuals), "mia_scores": ("Membership-attack scores", plot_mia_scores)}


# ---------------------------------------------------------------- html

def _e(text: object) -> str:
    """Foreign text for HTML: escaped, and its control characters shown as \\xNN (no raw escape bytes in the page)."""
    return html.escape(shown(text))


def _html_table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    e = _e
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4;overflow-wrap:break-word}h1{overflow-wrap:anywhere}table.text td:last-child{overflow-wrap:anywhere}
table{border-collapse:collapse;margin:.5em 0 1.5em;max-width:100%}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right;vertical-align:top}
td:first-child,th:first-child{text-align:left}table.text td,table.text th{text-align:left}
table.wrap{table-layout:fixed;width:100%}table.wrap td,table.wrap th{overflow-wrap:anywhere;word-break:break-all;text-align:left}
td.meaning,th.meaning{text-align:left;color:#555;font-size:.9em}
.verdict{font-size:1.25em;padding:.6em .8em;border-radius:6px}.pass{background:#e7f5e7;color:#14521a}.fail{background:#fbe9eb;color:#8c0018}
.warn{background:#fff4e0;padding:.4em}img{max-width:100%}code{background:#f3f3f3}.small{color:#555;font-size:.9em}"""


def render_html(report: dict[str, Any]) -> str:
    """One self-contained page: inline CSS, plots as data URIs, no link or script to anywhere else."""
    e = _e
    models = present_models(report)
    verdict = report["verdict"]
    p = report["provenance"]
    d = report.get("verdict_detail") or {}
    sentence, evidence, utility = verdict_block(report)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(_title(report))}</title><style>{CSS}</style></head><body>",
             f"<h1>{e(_title(report))}</h1>",
             f"<p class='verdict {'pass' if verdict == 'pass' else 'fail'}'><strong>{e(sentence)}</strong></p>",
             "<ul>" + "".join(f"<li>{e(line)}</li>" for line in evidence) + "</ul>",
             f"<p>{e(utility)}.</p>",
             f"<h2>How the verdict was decided</h2><p>By the {e(d.get('decided_by', 'gates'))}"
             + (" (the default policy's checks below are for information)." if report["gates"] else " (docs/audit.md; give <code>--gate</code> to set your own criteria).") + "</p>"]
    rows = check_rows(report)
    parts.append("<table class='text'><thead><tr><th>check</th><th>value</th><th>expected</th><th>result</th><th class='meaning'>what it means</th></tr></thead><tbody>"
                 + "".join(f"<tr><td>{e(r[0])}</td><td>{e(r[1])}</td><td>{e(r[2])}</td><td class='{'pass' if r[3] == 'pass' else 'fail'}'>{e(r[3])}</td>"
                           f"<td class='meaning'>{e(r[4])}</td></tr>" for r in rows) + "</tbody></table>")
    if report["gates"]:
        parts += ["<h2>Gates</h2>", _html_table(["gate", "value", "result"], gate_rows(report))]
    parts.append("<h2>Warnings</h2>")
    parts.append("".join(f"<p class='warn'>{e(w)}</p>" for w in report["warnings"]) or "<p>None.</p>")
    if closer_rows(report):
        parts += ["<h2>Closer to the retrained model than the original was?</h2>",
                  _html_table(["metric", "reference", "original", "unlearned", "closer"], closer_rows(report))]
    mrows = explained_metric_rows(report)
    parts += ["<h2>Metrics</h2>", f"<p class='small'>{e(gap_caption(report))}</p>",
              "<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in ["metric"] + models + [f"gap to {report['baseline']}"])
              + "<th class='meaning'>what it means</th></tr></thead><tbody>"
              + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r[:-1]) + f"<td class='meaning'>{e(r[-1])}</td></tr>" for r in mrows)
              + "</tbody></table>", f"<p>{e(avg_gap_sentence(report))}</p>"]
    if distance_rows(report):
        parts += [f"<h2>Output distances to the {e(report['baseline'])}</h2>", f"<p class='small'>{e(distance_text(report))}</p>",
                  _html_table(distance_header(report), distance_rows(report))]
        note = distance_note(report)
        if note:
            parts.append(f"<p>{e(note)}</p>")
    if statistics_rows(report):
        parts += ["<h2>Forget set against held-out data</h2>", f"<p class='small'>{e(statistics_text(report))}</p>",
                  _html_table(statistics_header(report), statistics_rows(report))]
    if lineage_rows(report):
        parts += ["<h2>Earlier deletions (lineage)</h2>", f"<p class='small'>{e(LINEAGE_TEXT)}</p>",
                  _html_table(["step", "request", "samples", "forget acc then", "now", "MIA-Efficacy now", "relapse"], lineage_rows(report))]
    if report.get("strong"):
        parts += ["<h2>Per-example attack (U-LiRA) and relearn time</h2>", f"<p class='small'>{e(strong_text(report))}</p>",
                  _html_table(["model", "AUC", "TPR at 1% FPR", "TPR at 0.1% FPR", "relearn steps"], strong_rows(report))]
    from ..tasks import get_task

    for name in get_task(report["request"].get("task", "classification")).report_plots:
        title, plot = PLOTTERS[name]
        parts += [f"<h2>{e(title)}</h2>", f"<img alt='{e(title)}' src='{plot(report)}'>"]
    parts += ["<h2>Unlearning run</h2>", _html_table(["field", "value"], params_rows(report), cls="text")]
    parts += ["<h2>Provenance</h2>", "<table class='wrap'><colgroup><col style='width:14%'><col style='width:46%'><col style='width:40%'></colgroup>"
              + "<thead><tr><th>input</th><th>path</th><th>sha256</th></tr></thead><tbody>"
              + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in provenance_rows(report)) + "</tbody></table>",
              _html_table(["field", "value"], [[k, str(v)] for k, v in p["versions"].items()]
                          + [["device", p["device"]], ["seed", str(p["seed"])], ["started", p["started_utc"]],
                             ["finished", p["finished_utc"]], ["audit time (s)", str(p["audit_time_s"])]], cls="text"),
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


def check_audit_report_dir(output: Path, report_dir: Optional[str | Path]) -> None:
    """apply --audit: the report folder (--report-dir, else beside the output) is checked with the other inputs, so one
    that cannot hold the reports fails before the output is written."""
    from ..reporting import check_report_dir

    check_report_dir(report_dir_for(output, report_dir), AUDIT_FILES, outputs=[output])
