"""`unlearn bench`: run several methods on one request over several seeds, audit each, compare (docs/methods.md).

Read top to bottom:
    select_methods / method_params   validate names and parameters before anything runs
    job_for_seed                     the same data and checkpoint, another seed
    baseline_run                     the reference's (or the original's) figures for one seed
    run_one                          one method, one seed: run it, audit it, gap to the baseline, time fraction
    summarize                        per-seed records -> mean, std and per-seed values per figure
    run_bench                        the whole loop behind the CLI command -> the bench.json dict
    table / render_markdown / render_csv / plot_png / write_bench   the outputs

A failing method (any exception but KeyboardInterrupt) becomes a record with its one-line error;
the other methods still run. No typer here: the CLI is cli/bench.py.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from .errors import MethodError, OutputError, UnlearnError
from .methods import MethodParams, method_names, parse_params, run_method

SCHEMA = "unlearn.bench/v1"

# Per-model audit figures kept per run (fractions), under report.json's key names.
AUDIT_KEYS = (
    "retain_acc", "forget_acc", "ua", "test_acc", "test_remaining_acc", "test_forgotten_acc",
    "mia_efficacy", "mia_entropy", "mia_loss_acc", "mia_loss_auc", "zrf",
)
# Added per run by the bench: Avg Gap to the baseline (points), wall seconds, wall / retraining time.
BENCH_KEYS = ("avg_gap", "wall_time_s", "time_fraction")
SUMMARY_KEYS = AUDIT_KEYS + BENCH_KEYS

Progress = Callable[[str, int, int], None]
OnRun = Callable[[str, int, dict], None]  # (method, seed, record) after each run


# ---------------------------------------------------------------- inputs, checked before any work

def select_methods(spec: str | Sequence[str]) -> list[str]:
    """Comma-separated names (or a list; 'all' = every registered method), each known, in order, without repeats."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n and n.strip()]
    if names == ["all"]:
        return method_names()
    if not names:
        raise UnlearnError(f"--methods is empty; give comma-separated names from: {', '.join(method_names())} (or 'all')")
    unknown = [n for n in names if n not in method_names()]
    if unknown:
        raise UnlearnError(f"unknown method(s) {', '.join(unknown)}; known methods: {', '.join(method_names())}")
    return list(dict.fromkeys(names))


def split_overrides(overrides: dict[str, Any], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{'finetune.epochs': 1} -> {'finetune': {'epochs': 1}}; the method must be benched (or 'retrain' for --retrain)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        name, dot, param = key.partition(".")
        if not dot or not param:
            raise UnlearnError(f"--param {key}: expected METHOD.key=value, e.g. --param finetune.epochs=2")
        if name not in methods and name != "retrain":
            raise UnlearnError(f"--param {key}: {name} is not among the benched methods ({', '.join(methods)})")
        out.setdefault(name, {})[param] = value
    return out


def method_params(name: str, overrides: dict[str, Any], request: Any = None) -> MethodParams:
    """Validated parameters: the request's method.params when it names this method, then the overrides."""
    base = dict(request.method.params) if request is not None and request.method.name == name else {}
    try:
        return parse_params(name, {**base, **overrides})
    except MethodError as e:
        raise MethodError(f"{name}: {e}") from None


def check_report_dir(folder: str | Path) -> Path:
    """Fail before the runs if the report folder cannot be made; nothing is created here."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"report dir {folder} is a file; choose another --report-dir")
    if not folder.exists() and not folder.parent.is_dir():
        raise OutputError(f"report dir parent {folder.parent} does not exist; create it or choose another --report-dir")
    return folder


def default_report_dir(checkpoint: str | Path) -> Path:
    """`<checkpoint stem>.bench/` beside the checkpoint."""
    p = Path(checkpoint)
    stem = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.stem
    return p.with_name(f"{stem}.bench")


# ---------------------------------------------------------------- runs

def job_for_seed(job: Any, seed: int) -> Any:
    """The same request, data and checkpoint with another seed (fresh models are initialised from it)."""
    if seed == job.seed:
        return job
    from .models import build_model

    req = job.request

    def make_model() -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_model(req.model, req.base_dir)

    return dataclasses.replace(job, seed=seed, make_model=make_model)


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _finite(v: Any) -> Optional[float]:
    """A float, or None for a missing or non-finite value (bench.json stays valid JSON)."""
    if v is None:
        return None
    f = float(v)
    return f if f == f and abs(f) != float("inf") else None


def _scalars(metrics: dict[str, Any]) -> dict[str, Optional[float]]:
    return {k: _finite(metrics.get(k)) for k in AUDIT_KEYS}


def audit_model(model: torch.nn.Module, job: Any) -> dict[str, Optional[float]]:
    """The per-model audit figures of `model` at the job's seed (accuracies, the three MIAs, ZRF)."""
    from .audit import model_metrics

    return _scalars(model_metrics(model.to(job.device).eval(), job, job.seed))


def baseline_run(model: torch.nn.Module, job: Any, time_s: Optional[float] = None) -> dict[str, Any]:
    """A run record for a baseline model (the original, or the retrained reference) at the job's seed."""
    metrics: dict[str, Optional[float]] = {**audit_model(model, job), "avg_gap": None, "wall_time_s": time_s, "time_fraction": None}
    return {"seed": job.seed, "error": None, "metrics": metrics}


def run_one(
    job: Any,
    name: str,
    params: MethodParams,
    baseline: Optional[dict[str, Any]] = None,
    retrain_time_s: Optional[float] = None,
    progress: Optional[Progress] = None,
) -> dict[str, Any]:
    """Run one method at the job's seed and audit the result; never raises for a method's failure.

    baseline: the metrics the Avg Gap is measured against (None: no gap).
    retrain_time_s: retraining time for the time fraction (None: no fraction).
    """
    record: dict[str, Any] = {"seed": job.seed, "error": None, "metrics": {k: None for k in SUMMARY_KEYS}, "gaps": None,
                              "info": {}, "warnings": []}
    ctx = job.context(progress=progress)
    from .pipeline import seed_everything

    seed_everything(job.seed)
    try:
        out, wall = run_method(name, ctx, params)
        record["metrics"]["wall_time_s"] = wall
        if retrain_time_s:
            record["metrics"]["time_fraction"] = wall / retrain_time_s
        record["info"] = out.info
        record["metrics"].update(audit_model(out.model, job))
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - a failing method is a row in the table, not the end of the bench
        record["error"] = one_line(e)
        if job.device.type == "cuda":
            torch.cuda.empty_cache()
        return record
    finally:
        record["warnings"] = list(ctx.log)
    if baseline is not None:
        from .audit import gaps

        g = gaps(record["metrics"], baseline)
        record["gaps"] = g
        record["metrics"]["avg_gap"] = g.get("avg_gap")
    return record


# ---------------------------------------------------------------- summaries

def _stats(values: list[Optional[float]]) -> dict[str, Any]:
    present = [v for v in values if v is not None and v == v]
    return {
        "mean": statistics.fmean(present) if present else None,
        "std": statistics.stdev(present) if len(present) > 1 else None,
        "values": values,
    }


def summarize(name: str, runs: list[dict[str, Any]], params: Optional[dict[str, Any]] = None, kind: str = "method") -> dict[str, Any]:
    """One table row: mean, sample std (None for one value) and per-seed values of every figure; status and first error."""
    errors = [r["error"] for r in runs if r.get("error")]
    status = "ok" if not errors else ("failed" if len(errors) == len(runs) else "partial")
    return {
        "method": name,
        "kind": kind,
        "params": params,
        "status": status,
        "error": errors[0] if errors else None,
        "seeds": [r["seed"] for r in runs],
        "metrics": {k: _stats([r["metrics"].get(k) for r in runs]) for k in SUMMARY_KEYS},
        "runs": runs,
    }


def assemble(job: Any, seeds: Sequence[int], baseline: str, methods: dict[str, dict[str, Any]],
             original: Optional[dict[str, Any]] = None, reference: Optional[dict[str, Any]] = None,
             reference_info: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The bench.json dict."""
    from .audit.core import _versions

    req, splits = job.request, job.splits
    retrain = reference["metrics"]["wall_time_s"] if reference is not None else None
    return {
        "schema": SCHEMA,
        "request": {
            "id": req.id, "path": str(req.path) if req.path else None, "sha256": req.sha256 or None,
            "scenario": splits.scenario, "forget_classes": list(splits.forget_classes), "num_classes": job.num_classes,
            "forget_size": len(splits.forget_idx), "retain_size": len(splits.retain_idx), "test_size": len(splits.test),
        },
        "checkpoint": {"path": str(job.checkpoint_path) if job.checkpoint_path else None, "sha256": job.checkpoint_sha256 or None},
        "baseline": baseline,  # what avg_gap is measured against: retrain | reference | original
        "seeds": list(seeds),
        "device": str(job.device),
        "retrain_time_s": retrain if retrain is not None and retrain["mean"] is not None else None,
        "original": original,
        "reference": None if reference is None else {**reference, "info": reference_info},
        "methods": methods,
        "versions": _versions(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run_bench(
    job: Any,
    methods: Sequence[str],
    seeds: Sequence[int],
    params: dict[str, MethodParams],
    reference: Optional[str | Path] = None,
    retrain: bool = False,
    retrain_params: Optional[MethodParams] = None,
    progress: Optional[Progress] = None,
    on_run: Optional[OnRun] = None,
) -> dict[str, Any]:
    """Every method x seed on the job's checkpoint, audited; Avg Gap against the reference, retraining or the original.

    reference: a retrained checkpoint, audited once (at the first seed); its metadata's wall_time_s, when
    present, is the retraining time. retrain: run the `retrain` method once per seed instead (timed).
    """
    if reference is not None and retrain:
        raise UnlearnError("give --reference or --retrain, not both")
    if job.original is None:
        raise UnlearnError("bench needs the trained checkpoint")
    seeds = list(seeds)
    total = len(methods) * len(seeds) + (len(seeds) if retrain else 0)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress("bench runs", done, total)

    if progress:
        progress("bench runs", 0, total)
    first = job_for_seed(job, seeds[0])
    original_run = baseline_run(job.original, first)
    ref_runs: dict[int, dict[str, Any]] = {}
    ref_entry, ref_info, baseline = None, None, "original"
    if reference is not None:
        from .audit import load_checkpoint

        model, ref_info = load_checkpoint(reference, first)
        t = ref_info["metadata"].get("wall_time_s")
        run = baseline_run(model, first, float(t) if isinstance(t, (int, float, str)) and _is_number(t) else None)
        if run["metrics"]["wall_time_s"]:
            run["metrics"]["time_fraction"] = 1.0
        ref_entry, baseline = summarize("reference", [run], kind="reference"), "reference"
        ref_runs = {s: run for s in seeds}
    elif retrain:
        runs = []
        for s in seeds:
            js = job_for_seed(job, s)
            r = run_one(js, "retrain", retrain_params or parse_params("retrain", {}), progress=progress)
            if r["error"]:
                raise UnlearnError(f"--retrain: the retrain method failed at seed {s} ({r['error']})")
            r["metrics"]["time_fraction"] = 1.0
            runs.append(r)
            ref_runs[s] = r
            tick()
        ref_entry, baseline = summarize("retrain", runs, (retrain_params or parse_params("retrain", {})).model_dump(mode="json"), kind="reference"), "retrain"
        ref_info = {"kind": "retrain"}
    else:
        ref_runs = {seeds[0]: original_run}
    if baseline != "original":  # how far doing nothing is from the baseline: the scale for every other gap
        from .audit import gaps

        original_run["metrics"]["avg_gap"] = gaps(original_run["metrics"], ref_runs[seeds[0]]["metrics"]).get("avg_gap")
    original = summarize("original", [original_run], kind="original")
    # Avg Gap against the original is measured at its one audited seed for every seed.
    base_of = (lambda s: ref_runs.get(s, ref_runs.get(seeds[0]))["metrics"])
    time_of = (lambda s: (ref_runs[s]["metrics"]["wall_time_s"] if ref_runs and baseline != "original" else None))

    entries: dict[str, dict[str, Any]] = {}
    for name in methods:
        runs = []
        for s in seeds:
            r = run_one(job_for_seed(job, s), name, params[name], base_of(s), time_of(s), progress)
            runs.append(r)
            tick()
            if on_run:
                on_run(name, s, r)
        entries[name] = summarize(name, runs, params[name].model_dump(mode="json"))
    return assemble(job, seeds, baseline, entries, original, ref_entry, ref_info)


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


# ---------------------------------------------------------------- the table

def _pm(stat: dict[str, Any], scale: float = 100.0, digits: int = 2) -> str:
    if stat is None or stat.get("mean") is None:
        return "-"
    s = f"{scale * stat['mean']:.{digits}f}"
    return s + (f"±{scale * stat['std']:.{digits}f}" if stat.get("std") is not None else "")


def gap_label(bench: dict[str, Any]) -> str:
    return {"retrain": "Avg Gap to retrain", "reference": "Avg Gap to reference", "original": "Avg Gap to original"}[bench["baseline"]]


def table(bench: dict[str, Any], include_baselines: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings): one row per method, mean ± std over seeds; accuracies and MIA in %, gaps in points."""
    cls = bench["request"]["scenario"] == "class"
    cols: list[tuple[str, str, float, int]] = [("RA %", "retain_acc", 100, 2), ("UA %", "ua", 100, 2), ("TA %", "test_acc", 100, 2)]
    if cls:
        cols += [("TA remaining %", "test_remaining_acc", 100, 2), ("TA forgotten %", "test_forgotten_acc", 100, 2)]
    cols += [("MIA-Efficacy %", "mia_efficacy", 100, 2), ("loss AUC", "mia_loss_auc", 1, 3),
             (gap_label(bench), "avg_gap", 1, 2), ("wall s", "wall_time_s", 1, 2), ("time / retrain %", "time_fraction", 100, 1)]
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
    esc = (lambda s: s.replace("|", "\\|"))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


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
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "kind", "status", "error", "n_seeds"] + [f"{k}_{s}" for k in SUMMARY_KEYS for s in ("mean", "std")])
    entries = [e for e in (bench.get("original"), bench.get("reference")) if e] + list(bench["methods"].values())
    for e in entries:
        w.writerow([e["method"], e["kind"], e["status"], e["error"] or "", len(e["runs"])]
                   + ["" if e["metrics"][k][s] is None else f"{e['metrics'][k][s]:.6g}" for k in SUMMARY_KEYS for s in ("mean", "std")])
    return buf.getvalue()


def plot_png(bench: dict[str, Any]) -> bytes:
    """Forgetting (UA) against utility (TA; remaining-class TA for class unlearning): one point per method, std bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_bench(bench: dict[str, Any], folder: str | Path) -> Path:
    """bench.json, bench.csv, bench.md and bench.png into `folder` (created), each atomically."""
    from .checkpoint import write_bytes

    folder = check_report_dir(folder)
    try:
        folder.mkdir(exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create report dir {folder} ({e.strerror}); choose another --report-dir") from None
    write_bytes(folder / "bench.json", (to_json(bench) + "\n").encode(), fix="choose another --report-dir")
    write_bytes(folder / "bench.csv", render_csv(bench).encode(), fix="choose another --report-dir")
    write_bytes(folder / "bench.md", render_markdown(bench).encode(), fix="choose another --report-dir")
    write_bytes(folder / "bench.png", plot_png(bench), fix="choose another --report-dir")
    return folder


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
