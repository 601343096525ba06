"""Running a bench: methods x seeds on one request, each run audited and measured against a baseline.

Read top to bottom:
    select_methods / split_overrides / method_params   names and parameters, checked before anything runs
    SeedSetup / setups_for                              per seed: the job, the original's and the baseline's figures
    run_one                                             one method, one seed: run, audit, gap, time fraction
    run_methods                                         every method on every seed setup
    summarize / assemble                                per-seed records -> mean, std, per-seed values -> bench.json
    run_bench / bench_request                           the whole `unlearn bench`

A failing method (any exception but KeyboardInterrupt) becomes a record with its one-line error;
the other methods still run.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch

from ..audit.registry import finite, model_metric_names, summary_keys
from ..errors import MethodError, NonFiniteOutputs, UnlearnError
from ..job import Job, Progress
from ..methods import MethodParams, get_method, method_names, parse_params, preflight, run_method
from ..methods.common import divergence_hint
from ..provenance import created_utc, versions
from ..request import Request, method_params_for
from .exact_rows import EXACT_METHODS, exact_row_params, is_exact, run_exact

if TYPE_CHECKING:
    from ..usercode import CodePolicy

SCHEMA = "unlearn.bench/v1"
OnRun = Callable[[str, int, dict], None]  # (method, seed, record) after each run


# ---------------------------------------------------------------- inputs, checked before any work

def select_methods(spec: str | Sequence[str]) -> list[str]:
    """Comma-separated names (or a list; 'all' = every registered method), each known, in order, without repeats."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n and n.strip()]
    if names == ["all"]:
        return method_names()
    known = method_names() + [n for n in EXACT_METHODS if n not in method_names()]  # s3t, sisa: exact rows (exact_rows.py)
    if not names:
        raise UnlearnError(f"--methods is empty; give comma-separated names from: {', '.join(known)} (or 'all')")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UnlearnError(f"unknown method(s) {', '.join(unknown)}; known methods: {', '.join(known)}")
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


def method_params(name: str, overrides: dict[str, Any], request: Optional[Request] = None) -> MethodParams:
    """Validated parameters: the request's method.params when it names this method, then the overrides."""
    if is_exact(name):
        return exact_row_params(name, overrides, request)  # type: ignore[return-value]
    try:
        return parse_params(name, method_params_for(request, name, overrides) if request is not None else overrides)
    except MethodError as e:
        raise MethodError(f"{name}: {e}") from None


def check_rows(names: Sequence[str], params: dict[str, MethodParams], job: Job) -> None:
    """What apply would refuse about each row's parameters (the task, layer names, folders), before any row runs."""
    for n in names:
        if is_exact(n):
            continue
        try:
            params[n].check_task(job.task.name)
            preflight(n, job.context(), params[n])
        except MethodError as e:
            raise MethodError(str(e) if str(e).startswith(f"{n}: ") else f"{n}: {e}") from None


# ---------------------------------------------------------------- per-seed setups

@dataclass
class SeedSetup:
    """One seed of a bench: its job (with the original model), the original's record and the baseline's."""

    job: Job
    original: dict[str, Any]  # run record of the original model
    baseline: Optional[dict[str, Any]]  # run record the gaps are measured against (None: no gaps)
    retrain_time_s: Optional[float] = None  # for time fractions

    @property
    def seed(self) -> int:
        return self.job.seed


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def audit_model(model: torch.nn.Module, job: Job) -> dict[str, Optional[float]]:
    """The per-model audit figures of `model` at the job's seed (accuracies, the attacks, ZRF)."""
    from ..audit import model_metrics

    metrics = model_metrics(model.to(job.device).eval(), job, job.seed)
    return {k: finite(metrics.get(k)) for k in model_metric_names(job.task.name)}


def baseline_run(model: torch.nn.Module, job: Job, time_s: Optional[float] = None, what: str = "the baseline model") -> dict[str, Any]:
    """A run record for a baseline model (the original, or the retrained reference) at the job's seed; one whose outputs
    hold NaN/Inf is refused (CheckpointError naming `what`): every gap would be measured against it."""
    from ..audit.core import non_finite_model
    from ..evaluate import FINITE_OUTPUTS_FIX

    try:
        figures = audit_model(model, job)
    except NonFiniteOutputs as e:
        raise non_finite_model(what, FINITE_OUTPUTS_FIX)(e.where) from None
    metrics: dict[str, Optional[float]] = {**figures, "avg_gap": None, "wall_time_s": time_s, "time_fraction": None}
    return {"seed": job.seed, "error": None, "metrics": metrics}


def with_gap(record: dict[str, Any], baseline: Optional[dict[str, Any]], task: str = "classification") -> dict[str, Any]:
    """Fill the record's gaps and Avg Gap (the task's own: docs/audit.md) against a baseline record (in place; returns it)."""
    if baseline is not None:
        from ..audit import gaps

        g = gaps(record["metrics"], baseline["metrics"], task)
        record["gaps"] = g
        record["metrics"]["avg_gap"] = g.get("avg_gap")
    return record


STATUSES = ("ok", "under-forgot", "over-forgot", "failed")


def run_status(record: dict[str, Any], setup: SeedSetup, scenario: str) -> tuple[str, list[str]]:
    """ok / under-forgot / over-forgot / failed for one run, from the audit's two-sided checks against the baseline."""
    if record.get("error"):
        return "failed", [record["error"]]
    from ..audit.core import audit_warnings

    ref = setup.baseline["metrics"] if setup.baseline is not None and setup.baseline is not setup.original else None
    findings = audit_warnings(record["metrics"], setup.original["metrics"], ref, scenario, setup.job.task.name)
    findings = [f for f in findings if f.startswith(("under-unlearning", "over-unlearning"))]
    if any(f.startswith("under") for f in findings):
        return "under-forgot", findings
    if findings:
        return "over-forgot", findings
    return "ok", []


REPEAT_BELOW_S = 1.0  # a run shorter than this is timed again (timing_repeats): a few ms of load decide a 20 ms run's ratio
TIMING_REPEATS = 3  # bench's default (run_one)
WARMUP_BELOW_S = 60.0  # the bench's first timed run, if shorter, is timed again: the process's first run pays one-off costs
# (lazy imports, first kernels: 2-3 s on diabetes against 0.02-0.2 s runs), which made the first method of --methods, or
# --retrain's first seed, read 20-100x its cost and the ratios change with the order of --methods


def median_wall(first_wall: float, rerun: Callable[[], float], repeats: int) -> float:
    """The median of `first_wall` and repeats - 1 more timed runs (`rerun` returns one's seconds) when the first took
    under REPEAT_BELOW_S; else `first_wall`. CPU runs at one seed repeat exactly, so only the clock differs."""
    if repeats <= 1 or first_wall >= REPEAT_BELOW_S:
        return first_wall
    return statistics.median([first_wall, *(rerun() for _ in range(repeats - 1))])


def rerun_seconds(name: str, job: Job, params: MethodParams) -> float:
    """The method run again at the job's seed (the same result on a CPU): its wall time."""
    job.seed_everything()
    return run_method(name, job.context(), params)[1]


def timed_again(name: str, job: Job, params: MethodParams, first_wall: float, repeats: int) -> float:
    """A method run's wall time by median_wall: the method run again at the job's seed."""
    return median_wall(first_wall, lambda: rerun_seconds(name, job, params), repeats)


def run_one(setup: SeedSetup, name: str, params: MethodParams, progress: Optional[Progress] = None,
            timing_repeats: int = 1, warmup: bool = False) -> dict[str, Any]:
    """Run one method at the setup's seed and audit the result; never raises for a method's failure. With
    timing_repeats > 1, a method that ran under REPEAT_BELOW_S is run that many times in all and timed by the median.
    warmup: the bench's first timed run; under WARMUP_BELOW_S it is run once more and the first run's time dropped."""
    job = setup.job
    record: dict[str, Any] = {"seed": job.seed, "error": None, "metrics": {k: None for k in summary_keys(job.task.name)},
                              "gaps": None, "info": {}, "warnings": []}
    ctx = job.context(progress=progress)
    job.seed_everything()
    try:
        if is_exact(name):  # train the artifact, then delete by deactivation: wall = deletion latency
            out, wall = run_exact(job, params, progress, ctx.log)  # type: ignore[arg-type]
            record["metrics"]["train_time_s"] = out.info["train_time_s"]
        else:
            out, wall = run_method(name, ctx, params)
            if warmup and wall < WARMUP_BELOW_S:  # the first run's one-off costs are the process's, not the method's
                wall = rerun_seconds(name, job, params)
            wall = timed_again(name, job, params, wall, timing_repeats)
        record["metrics"]["wall_time_s"] = wall
        if setup.retrain_time_s:
            record["metrics"]["time_fraction"] = wall / setup.retrain_time_s
        record["info"] = out.info
        record["metrics"].update(audit_model(out.model, job))
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - a failing method is a row in the table, not the end of the bench
        record["error"] = f"{e}; {divergence_hint(params, job.task.name)}" if isinstance(e, NonFiniteOutputs) else one_line(e)
        if job.device.type == "cuda":
            torch.cuda.empty_cache()
        return record
    finally:
        record["warnings"] = list(ctx.log)
        record["status"], record["findings"] = run_status(record, setup, job.splits.scenario)
    return with_gap(record, setup.baseline, job.task.name)


def run_methods(setups: Sequence[SeedSetup], methods: Sequence[str], params: dict[str, MethodParams],
                progress: Optional[Progress] = None, on_run: Optional[OnRun] = None,
                tick: Optional[Callable[[], None]] = None, timing_repeats: int = 1,
                warmup_first: bool = False) -> dict[str, dict[str, Any]]:
    """Every method on every seed setup -> one summary entry per method (timing_repeats, warmup_first: see run_one)."""
    entries: dict[str, dict[str, Any]] = {}
    for m, name in enumerate(methods):
        runs = []
        for i, setup in enumerate(setups):
            r = run_one(setup, name, params[name], progress, timing_repeats, warmup=warmup_first and m == 0 and i == 0)
            runs.append(r)
            if tick:
                tick()
            if on_run:
                on_run(name, setup.seed, r)
        entries[name] = summarize(name, runs, params[name].model_dump(mode="json"), task=setups[0].job.task.name if setups else "classification")
    return entries


# ---------------------------------------------------------------- summaries

def _stats(values: list[Optional[float]]) -> dict[str, Any]:
    present = [v for v in values if v is not None and v == v]
    return {
        "mean": statistics.fmean(present) if present else None,
        "std": statistics.stdev(present) if len(present) > 1 else None,
        "values": values,
    }


def summarize(name: str, runs: list[dict[str, Any]], params: Optional[dict[str, Any]] = None, kind: str = "method",
              task: str = "classification") -> dict[str, Any]:
    """One table row: mean, sample std (None for one value) and per-seed values of every figure; status and first error."""
    errors = [r["error"] for r in runs if r.get("error")]
    status = "ok" if not errors else ("failed" if len(errors) == len(runs) else "partial")
    return {
        "method": name,
        "kind": kind,
        "params": params,
        "status": status,
        "seed_status": [r.get("status", "ok") for r in runs],
        "error": errors[0] if errors else None,
        "seeds": [r["seed"] for r in runs],
        "metrics": {k: _stats([r["metrics"].get(k) for r in runs]) for k in summary_keys(task)},
        "runs": runs,
    }


def assemble(job: Job, seeds: Sequence[int], baseline: str, methods: dict[str, dict[str, Any]],
             original: Optional[dict[str, Any]] = None, reference: Optional[dict[str, Any]] = None,
             reference_info: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The bench.json dict."""
    req, splits = job.request, job.splits
    retrain = reference["metrics"]["wall_time_s"] if reference is not None else None
    return {
        "schema": SCHEMA,
        "request": {
            "id": req.id, "path": str(req.path) if req.path else None, "sha256": req.sha256 or None, "task": job.task.name,
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
        "pareto_front": _front(methods, baseline),  # [] without a reference or --retrain
        "versions": versions(),
        "created_utc": created_utc(),
    }


def _front(methods: dict[str, dict[str, Any]], baseline: str) -> list[str]:
    from .render import pareto_front

    return pareto_front({"methods": methods, "baseline": baseline})


# ---------------------------------------------------------------- the whole bench

def run_bench(
    job: Job,
    methods: Sequence[str],
    seeds: Sequence[int],
    params: dict[str, MethodParams],
    reference: Optional[str | Path] = None,
    retrain: bool = False,
    retrain_params: Optional[MethodParams] = None,
    progress: Optional[Progress] = None,
    on_run: Optional[OnRun] = None,
    timing_repeats: int = TIMING_REPEATS,
) -> dict[str, Any]:
    """Every method x seed on the job's checkpoint, audited; Avg Gap against the reference, retraining or the original.

    reference: a retrained checkpoint, audited once (at the first seed); its metadata's wall_time_s, when
    present, is the retraining time. retrain: run the `retrain` method once per seed instead (timed).
    timing_repeats: a method or retraining run under REPEAT_BELOW_S is timed by the median of this many runs (run_one).
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
    first = job.for_seed(seeds[0])
    original_run = baseline_run(job.original, first, what=f"the original {job.checkpoint_path}")
    ref_runs: dict[int, dict[str, Any]] = {}
    ref_entry, ref_info, baseline = None, None, "original"
    if reference is not None:
        from ..audit import load_checkpoint

        model, ref_info = load_checkpoint(reference, first)
        t = finite(ref_info["metadata"].get("wall_time_s"))
        t = t if isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0 else None  # metadata: a time is positive
        run = baseline_run(model, first, t, what=f"the reference {reference}")
        if run["metrics"]["wall_time_s"]:
            run["metrics"]["time_fraction"] = 1.0
        ref_entry, baseline = summarize("reference", [run], kind="reference", task=job.task.name), "reference"
        ref_runs = {s: run for s in seeds}
    elif retrain:
        rp = retrain_params or parse_params("retrain", {})
        runs = []
        for s in seeds:
            r = run_one(SeedSetup(job.for_seed(s), original_run, None), "retrain", rp, progress, timing_repeats, warmup=s == seeds[0])
            if r["error"]:
                raise UnlearnError(f"--retrain: the retrain method failed at seed {s} ({r['error']})")
            r["metrics"]["time_fraction"] = 1.0
            runs.append(r)
            ref_runs[s] = r
            tick()
        ref_entry, baseline = summarize("retrain", runs, rp.model_dump(mode="json"), kind="reference", task=job.task.name), "retrain"
        ref_info = {"kind": "retrain"}
    else:
        ref_runs = {seeds[0]: original_run}
    if baseline != "original":  # how far doing nothing is from the baseline: the scale for every other gap
        with_gap(original_run, ref_runs[seeds[0]], job.task.name)
    # Avg Gap against the original is measured at its one audited seed for every seed.
    setups = [SeedSetup(job.for_seed(s), original_run, ref_runs.get(s, ref_runs.get(seeds[0])),
                        ref_runs[s]["metrics"]["wall_time_s"] if baseline != "original" else None) for s in seeds]
    entries = run_methods(setups, methods, params, progress, on_run, tick, timing_repeats, warmup_first=not retrain)
    original = summarize("original", [original_run], kind="original", task=job.task.name)
    return assemble(job, seeds, baseline, entries, original, ref_entry, ref_info)


def bench_request(
    request: "str | Path | Request",
    checkpoint: str | Path,
    methods: str | Sequence[str],
    seeds: int = 3,
    reference: Optional[str | Path] = None,
    retrain: bool = False,
    report_dir: Optional[str | Path] = None,
    param_overrides: Optional[dict[str, Any]] = None,
    device: str = "auto",
    code: Optional["CodePolicy"] = None,
    progress: Optional[Progress] = None,
    on_run: Optional[OnRun] = None,
    num_workers: int = 0,
    timing_repeats: int = TIMING_REPEATS,
) -> tuple[dict[str, Any], Path]:
    """`unlearn bench`: every input checked first (methods, parameters, reference, report folder), then the runs."""
    from ..artifacts import is_checkpoint
    from ..job import prepare
    from ..models import CodePolicy
    from ..reporting import check_report_dir
    from ..request import load_request
    from .render import BENCH_FILES, default_report_dir, write_bench

    req = load_request(request)
    names = select_methods(methods)
    if methods in ("all", ["all"], ("all",)):  # every method that can unlearn this task
        names = [n for n in names if req.task in get_method(n).tasks]
    for n in names:
        tasks = ("classification",) if is_exact(n) else get_method(n).tasks  # exact rows (s3t, sisa): classification only
        if req.task not in tasks:
            able = [m for m in method_names() if req.task in get_method(m).tasks]
            raise MethodError(f"--methods: {n} cannot unlearn a {req.task} model; methods for {req.task}: {', '.join(able)}")
    if seeds < 1:
        raise UnlearnError(f"--seeds {seeds}: give at least 1")
    if not 1 <= timing_repeats <= 100:
        raise UnlearnError(f"--time-repeats {timing_repeats}: give 1 to 100 (runs of a short method, timed by their median)")
    if reference is not None and retrain:
        raise UnlearnError("give --reference or --retrain, not both")
    if reference is not None and not is_checkpoint(reference):
        raise UnlearnError(f"--reference {reference}: not found; give a retrained .safetensors file or save_pretrained folder (unlearn train --exclude-forget)")
    overrides = split_overrides(param_overrides or {}, names)
    params = {n: method_params(n, overrides.get(n, {}), req) for n in names}
    retrain_params = method_params("retrain", overrides.get("retrain", {}), req)
    folder = check_report_dir(Path(report_dir) if report_dir is not None else default_report_dir(checkpoint), BENCH_FILES)
    labelled_rows = [n for n in names if is_exact(n) or not get_method(n).label_free] + (["--retrain"] if retrain else [])
    job = prepare(req, checkpoint, device=device, code=code or CodePolicy(), num_workers=num_workers, needs_labels=bool(labelled_rows),
                  labels_needed_by=f"bench ({', '.join(labelled_rows)})")
    check_rows(names, params, job)
    result = run_bench(job, names, [job.seed + i for i in range(seeds)], params, reference=reference, retrain=retrain,
                       retrain_params=retrain_params, progress=progress, on_run=on_run, timing_repeats=timing_repeats)
    return result, write_bench(result, folder)
