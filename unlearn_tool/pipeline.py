"""The orchestrator, read top to bottom: plan (every check) -> job -> method -> artifact writer -> summary.

    plan_apply(request, ...)        method, parameters, output, gates, reference: every input error, before any work
    apply(job, plan)                run the method, refuse a diverged result, write the artifact, summarise
    apply_request(...)              the whole `unlearn apply`: plan, prepare, apply, optionally audit
    train_checkpoint(job, ...)      `unlearn train` (optionally without the forget set: the retrain reference)
    validate_request(...)           `unlearn validate`: every check, no training
"""

from __future__ import annotations

import dataclasses
import os
import platform
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from . import __version__
from .artifacts import CheckpointArtifact, is_checkpoint, is_hf_folder, write_adapter, write_hf_folder, write_merged
from .audit.registry import finite
from .checkpoint import StagedOutput, check_output, dtypes_of, load_into, non_finite, protected_inputs, publish_lock, refuse_inside_inputs
from .data import SUMMARY_SETS, LabelledData, summary_seed
from .errors import AuditError, CheckpointError, DivergedError, MethodError, UnlearnError, UnmeasurableResult
from .evaluate import FINITE_OUTPUTS_FIX, non_finite_rows, non_finite_where, predict_logits, remember_predictions
from .interrupts import signals_deferred
from .job import Job, Progress, check_seed, describe_job, prepare, resolve_device, seed_everything  # noqa: F401 (re-exported)
from .methods.common import divergence_hint
from .methods import MethodParams, check_applicable, get_method, method_names, parse_params, preflight, run_method
from .models import CodePolicy, hf_folder, hf_output_config
from .provenance import created_utc, file_fields
from .request import Request, load_request, method_params_for
from .tasks import SetOutputs
from .training import TrainConfig

SUMMARY_SAMPLES = 1000  # retain and test samples the before/after summary evaluates (seeded); the audit evaluates all


# ---------------------------------------------------------------- utility figures

def summary_sets(job: Job, samples: Optional[int] = SUMMARY_SAMPLES) -> dict[str, LabelledData]:
    """What the before/after summary evaluates: the whole forget set (the work), and seeded samples of at most
    `samples` retain and test samples (None or 0: all), the same positions (and objects) for every model of the job."""
    return {name: getattr(job.splits, name) if name == "forget" else
            getattr(job.splits, name).seeded_sample(samples or 0, summary_seed(job.seed, name)) for name in SUMMARY_SETS}


def summary_sizes(job: Job, sets: dict[str, LabelledData]) -> dict[str, int]:
    """How many samples the summary evaluated per set, and how many the set holds (the JSON's `summary_samples`)."""
    return {**{k: len(v) for k, v in sets.items()}, **{f"{k}_total": len(getattr(job.splits, k)) for k in sets}}


def utility(model: nn.Module, job: Job, batch_size: Optional[int] = None,
            sets: Optional[dict[str, LabelledData]] = None,
            refuse: Optional[Callable[[str], UnlearnError]] = None) -> dict[str, Optional[float]]:
    """The before/after summary: the task's utility metrics on retain, forget and test data (scalars only).

    `sets` (from summary_sets) bounds what is evaluated; by default every sample of the three sets. `refuse`: when
    the model's outputs hold NaN/Inf, raise refuse(where) (evaluate.non_finite_where) instead of summarising them.
    """
    sets = sets if sets is not None else {name: getattr(job.splits, name) for name in SUMMARY_SETS}
    raw = finite_predictions(model, job, sets, refuse, batch_size)
    outputs = {}
    for name, (logits, y) in raw.items():
        targets = y.numpy()
        outputs[name] = SetOutputs(targets=targets, stats=job.task.per_sample(logits.double().numpy(), targets))
    figures = job.task.utility(outputs, job.forget_info)
    return {k: finite(figures.get(k)) for k in job.task.summary_keys(job.splits.scenario)}


def check_reference_outputs(model: nn.Module, job: Job, path: Path, sets: Optional[dict[str, LabelledData]] = None) -> None:
    """A retrained reference whose outputs hold NaN/Inf is refused before any work (on the summary's samples), not by
    the audit after the output was written: the audit could not measure it."""
    finite_predictions(model, job, sets if sets is not None else summary_sets(job), lambda where: CheckpointError(
        f"the reference {path} gives NaN/Inf outputs on {where}, so the audit could not measure it; nothing was "
        "written; its training diverged; retrain it (unlearn train --exclude-forget) with a lower --lr"))


def finite_predictions(model: nn.Module, job: Job, sets: dict[str, LabelledData], refuse: Optional[Callable[[str], UnlearnError]],
                       batch_size: Optional[int] = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The model's (outputs, targets) per set; with `refuse`, a model whose outputs hold NaN/Inf raises refuse(where)
    (evaluate.non_finite_where) instead. The predictions are remembered for the original inside `apply`."""
    bs = batch_size or job.request.data.batch_size
    raw = {name: predict_logits(model, data, job.device, bs) for name, data in sets.items()}
    where = non_finite_where({name: (non_finite_rows(logits), len(logits)) for name, (logits, _) in raw.items()})
    if where and refuse is not None:
        raise refuse(where)
    return raw


def output_fields(job: Job, **extra: Any) -> dict[str, Any]:
    """The provenance every written model carries (`unlearn.*` metadata), plus what the caller adds."""
    req = job.request
    fields = {
        "format": "unlearn/v1",
        "tool_version": __version__,
        "model_arch": req.model.arch,
        "model_kwargs": req.model.kwargs,
        "task": job.task.name,
        "request_id": req.id,
        "request_sha256": req.sha256,
        **extra,
        "seed": job.seed,
        "device": str(job.device),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created_utc": created_utc(),
    }
    return file_fields(fields)


# ---------------------------------------------------------------- apply

def default_output_path(checkpoint: Path, adapter: bool) -> Path:
    """Beside the input: <stem>.unlearned.safetensors, or <name>.unlearned for an adapter or a save_pretrained folder input."""
    if checkpoint.is_dir():
        return checkpoint.with_name(f"{checkpoint.name}.unlearned")
    stem = checkpoint.name[: -len(".safetensors")] if checkpoint.name.endswith(".safetensors") else checkpoint.stem
    return checkpoint.with_name(f"{stem}.unlearned" + ("" if adapter else ".safetensors"))


def hf_output_folder(req: Request, output: Path) -> Optional[Path]:
    """For an hf:<folder> model, a merged output not named *.safetensors is a save_pretrained folder: the source folder
    whose config it copies; None when the output is a single safetensors file."""
    source = hf_folder(req.model, req.base_dir)
    return source if source is not None and not output.name.lower().endswith(".safetensors") else None


UNLABELLED_NOTE = ("the train split has no labels: the method read none, and the forget/retain figures here are agreement with the "
                   "original model's predictions, not accuracy")

ADAPTER_WARNING = (
    "adapter-only output: the forgotten data is still in the base weights; the deletion holds only while the "
    "adapter is applied. Merge it (unlearn merge ADAPTER --base CHECKPOINT -o OUT) before deleting the original checkpoint."
)


@dataclass
class ApplyPlan:
    """Everything `apply` will do, checked before any data is loaded or any model trained."""

    method: str
    params: MethodParams
    adapter: bool
    output: Path
    force: bool = False
    audit: bool = False
    gates: list[str] = field(default_factory=list)  # audited right after (apply --audit)
    reference: Optional[Path] = None
    hf_source: Optional[Path] = None  # a merged save_pretrained folder output copies this folder's config
    summary_samples: Optional[int] = SUMMARY_SAMPLES


def plan_apply(
    req: Request,
    checkpoint: str | Path,
    method: Optional[str] = None,
    params: Optional[dict[str, Any]] = None,
    output: Optional[str | Path] = None,
    adapter_only: Optional[bool] = None,
    force: bool = False,
    audit: bool = False,
    gates: Optional[list[str]] = None,
    reference: Optional[str | Path] = None,
    summary_samples: Optional[int] = SUMMARY_SAMPLES,
) -> ApplyPlan:
    """Check method, parameters, output and audit settings: every input error fails here, before any work.

    params: --param overrides, on top of the request's method.params when the request names this method.
    adapter_only: True/False from --adapter-only/--merged; None keeps the request's output.mode.
    """
    name = method or req.method.name
    get_method(name)  # an unknown method name fails first, naming the known ones
    method_params = parse_params(name, method_params_for(req, name, params))
    check_applicable(name, req.task, req.forget.scenario, method_params)
    adapter = adapter_only if adapter_only is not None else req.output.mode == "adapter"
    check_adapter_output(name, adapter)
    ckpt = Path(checkpoint)
    if ckpt.is_dir():  # a folder input must be a save_pretrained one: say so before judging an output inside it
        _ = CheckpointArtifact(ckpt).file
    out_path = Path(output) if output else (req.resolve(req.output.path) if req.output.path else default_output_path(ckpt, adapter))
    hf_source = None if adapter else hf_output_folder(req, out_path)
    check_output(out_path, "dir" if adapter or hf_source else "file", force, protect={**protected_inputs(req), "input checkpoint": ckpt, "request": req.path})
    plan = ApplyPlan(method=name, params=method_params, adapter=adapter, output=out_path, force=force, audit=audit,
                     hf_source=hf_source, summary_samples=summary_samples)
    if audit:
        from .audit.gates import parse_gates

        plan.gates = list(gates) if gates is not None else list(req.audit.gates)
        plan.reference = Path(reference) if reference is not None else req.audit_reference()
        parse_gates(plan.gates, req.forget.scenario, plan.reference is not None, req.task)
        if plan.reference is not None and not is_checkpoint(plan.reference):
            raise AuditError(f"audit reference {plan.reference} not found; give a retrained checkpoint (unlearn train --exclude-forget) or drop audit.reference")
    return plan


@dataclass
class ApplyResult:
    output: Path
    mode: str
    method: str
    params: dict[str, Any]
    wall_time_s: float
    total_time_s: float
    before: dict[str, Optional[float]]
    after: dict[str, Optional[float]]
    output_sha256: str
    info: dict[str, Any]
    warnings: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)  # the provenance fields written with the output
    summary_samples: dict[str, int] = field(default_factory=dict)  # what before/after evaluated (summary_sizes)
    model: Optional[nn.Module] = None  # the unlearned model (for an audit right after)

    def as_dict(self, job: Job) -> dict[str, Any]:
        return {
            "request_id": job.request.id,
            "request": str(job.request.path) if job.request.path else None,
            "request_sha256": job.request.sha256,
            "checkpoint": str(job.checkpoint_path),
            "checkpoint_sha256": job.checkpoint_sha256,
            "output": str(self.output),
            "output_mode": self.mode,
            "output_sha256": self.output_sha256,
            "method": self.method,
            "params": self.params,
            "task": job.task.name,
            "scenario": job.splits.scenario,
            "forget_size": len(job.splits.forget_idx),
            "retain_size": len(job.splits.retain_idx),
            "seed": job.seed,
            "device": str(job.device),
            "wall_time_s": round(self.wall_time_s, 4),
            "total_time_s": round(self.total_time_s, 4),
            "before": self.before,
            "after": self.after,
            "summary_samples": self.summary_samples,
            "info": self.info,
            "warnings": self.warnings,
        }


@dataclass
class StepResult:
    """One request's unlearning, in memory (nothing written yet)."""

    model: nn.Module
    adapter_model: Any
    state: dict[str, torch.Tensor]
    before: dict[str, Optional[float]]
    after: dict[str, Optional[float]]
    wall_time_s: float
    info: dict[str, Any]
    log: list[str]
    summary_s: float = 0.0  # the before/after summary's time
    summary_samples: dict[str, int] = field(default_factory=dict)  # what before/after evaluated (summary_sizes)
    method_cpu_s: float = 0.0  # the method's CPU time (all threads of this process): its work, whatever else loads the machine


def unlearn_step(job: Job, plan: ApplyPlan, progress: Optional[Progress] = None) -> StepResult:
    """Run the plan's method on the job's original; refuse a non-finite result; summarise before and after."""
    if job.original is None:
        raise UnlearnError("apply needs a checkpoint; give the trained model's .safetensors file")
    sets = summary_sets(job, plan.summary_samples)
    ctx = job.context(progress=progress)
    preflight(plan.method, ctx, plan.params)  # layer names, folders: refused before the summary's passes
    with remember_predictions(job.original):  # the method reuses the original's predictions the summary computed
        t = time.perf_counter()
        before = utility(job.original, job, sets=sets, refuse=lambda where: CheckpointError(
            f"checkpoint {job.checkpoint_path} gives NaN/Inf outputs on {where}; {FINITE_OUTPUTS_FIX}"))
        summary_s = time.perf_counter() - t
        job.seed_everything()
        cpu = time.process_time()
        result, wall = run_method(plan.method, ctx, plan.params)
        method_cpu_s = time.process_time() - cpu
    model = result.model.to(job.device).eval()
    state = merged_state(model, job)
    bad = non_finite(state)
    if bad:
        raise DivergedError(f"unlearning diverged: {len(bad)} tensor(s) of {plan.method}'s result hold NaN/Inf (first: {bad[0][0]}); "
                            f"nothing was written; {divergence_hint(plan.params, job.task.name if job.task else 'classification')}")
    t = time.perf_counter()
    # finite weights can still overflow (a diverged BatchNorm net): the after-summary's pass is the check, before any write
    after = utility(model, job, sets=sets, refuse=lambda where: DivergedError(
        f"unlearning diverged: {plan.method}'s result gives NaN/Inf outputs on {where} (its weights are finite but too large); "
        f"nothing was written; {divergence_hint(plan.params, job.task.name if job.task else 'classification')}"))
    summary_s += time.perf_counter() - t
    unchanged_warning(plan, result.info, state, job.original, ctx.log)
    collapse_warning(plan, job, before, after, ctx.log)
    kept_class_warning(plan, job, before, after, ctx.log)
    return StepResult(model, result.adapter_model, state, before, after, wall, result.info, list(ctx.log), summary_s,
                      summary_sizes(job, sets), method_cpu_s)


def same_weights(state: dict[str, torch.Tensor], model: nn.Module) -> bool:
    """Whether `state` (a result's weights, in the checkpoint's dtypes) equals `model`'s bit for bit: nothing changed."""
    ref = model.state_dict()
    return all(torch.equal(t, ref[k].detach().to(device="cpu", dtype=t.dtype)) for k, t in state.items())


COLLAPSE_MAE_RATIO = 10.0  # regression: test MAE this many times the original's
COLLAPSE_ACC_SHARE = 0.5  # classification: test accuracy (remaining classes) below this share of the original's


def collapse_warning(plan: ApplyPlan, job: Job, before: dict[str, Optional[float]], after: dict[str, Optional[float]],
                     log: list[str]) -> None:
    """Say so when the result's utility collapsed though its outputs are finite (the NaN/Inf guards cannot see it): at
    lr 9 gaussian-amnesiac raised diabetes test MAE from 0.6 to 52 and exited 0 without a word."""
    hint = divergence_hint(plan.params, job.task.name)
    if job.task.name == "regression":
        key = "test_remaining_mae" if job.splits.scenario == "range" else "test_mae"
        b, a = before.get(key), after.get(key)
        if b and a is not None and a > COLLAPSE_MAE_RATIO * b:
            log.append(f"utility collapsed: {key} rose from {b:.4g} to {a:.4g} ({a / b:.0f}-fold); the run likely diverged; {hint}")
        return
    key = "test_remaining_acc" if job.splits.scenario == "class" else "test_acc"
    b, a = before.get(key), after.get(key)
    if b and a is not None and a < COLLAPSE_ACC_SHARE * b:
        log.append(f"utility collapsed: {key} fell from {100 * b:.1f}% to {100 * a:.1f}%; the run likely diverged; {hint}")


KEPT_CLASS_SHARE = 0.5  # class unlearning: forget accuracy at or above this share of the original's is "largely kept"


def kept_class_warning(plan: ApplyPlan, job: Job, before: dict[str, Optional[float]], after: dict[str, Optional[float]],
                       log: list[str]) -> None:
    """Say so when class unlearning left most of the class known: a model retrained without it scores 0% there. laf on
    a timm ResNet raised forget accuracy from 65% to 97% and exited 0 without a word."""
    if job.task.name != "classification" or job.splits.scenario != "class":
        return
    b, a = before.get("forget_acc"), after.get("forget_acc")
    if b and a is not None and a >= KEPT_CLASS_SHARE * b:
        moved = (f"stayed at {100 * a:.1f}%" if abs(a - b) < 5e-4 else
                 f"{'rose' if a > b else 'fell only'} from {100 * b:.1f}% to {100 * a:.1f}%")
        log.append(f"the class is largely not forgotten: forget_acc {moved} (a model retrained "
                   f"without it scores 0%); {plan.method} with these parameters did not remove it: try more epochs or a higher lr, "
                   "or another method (rfa), and audit the result")


def unchanged_warning(plan: ApplyPlan, info: dict[str, Any], state: dict[str, torch.Tensor], original: nn.Module, log: list[str]) -> None:
    """Say so when every weight of the result equals the original's: the run changed nothing, so it forgot nothing (a
    zero loss weight, a LoRA alpha or SalUn mask ratio too small to act). Not repeated where the stop note says it."""
    from .stop_text import stop_line

    if "equals the original" in (stop_line(info, plan.params.model_dump(mode="json")) or ""):
        return
    if same_weights(state, original):
        log.append(f"{plan.method} changed no weight: the output equals the original, so nothing was forgotten; check its "
                   "parameters (a zero loss weight, a LoRA alpha or a mask ratio too small to act)")


def apply(
    job: Job,
    method: Optional[str] | ApplyPlan = None,
    params: Optional[dict[str, Any]] = None,
    output: Optional[str | Path] = None,
    adapter_only: Optional[bool] = None,
    force: bool = False,
    progress: Optional[Progress] = None,
    lineage: Optional[Any] = None,
    record_ids: bool = False,
) -> ApplyResult:
    """Run the method on the job's checkpoint and publish the result atomically.

    Give an ApplyPlan (from plan_apply) or the same arguments plan_apply takes. `lineage` (ledger.Lineage): the
    steps before this one; the output's metadata gets it extended by this request (a fresh lineage when None).
    """
    if job.original is None or job.artifact is None:
        raise UnlearnError("apply needs a checkpoint; give the trained model's .safetensors file")
    plan = method if isinstance(method, ApplyPlan) else plan_apply(job.request, job.artifact.path, method, params, output, adapter_only, force)
    if plan.output.resolve() == job.checkpoint_path:
        raise UnlearnError(f"output {plan.output} is the input checkpoint; inputs are never overwritten, choose another --output")
    t0 = time.perf_counter()
    step = unlearn_step(job, plan, progress)
    return write_step(job, plan, step, job.checkpoint_sha256, lineage, record_ids, t0)


def write_step(job: Job, plan: ApplyPlan, step: StepResult, parent_sha256: str, lineage: Optional[Any], record_ids: bool,
               t0: float, extra_steps: Optional[list[dict[str, Any]]] = None, write_to: Optional[Path] = None) -> ApplyResult:
    """Publish a step's result with its provenance and lineage (`extra_steps`: earlier in-run steps, multi-request apply).

    write_to: write there instead (a StagedOutput's path, published later as plan.output, which the result names)."""
    from .ledger import Lineage, forget_digest, new_step
    from .stop_text import run_info

    lineage = lineage or Lineage(original_sha256=parent_sha256, data_sha256=job.data_sha256)
    steps = list(lineage.steps) + list(extra_steps or [])
    this = new_step(Lineage(lineage.original_sha256, lineage.data_sha256, steps), job.request, plan.method, job.splits,
                    parent_sha256, created_utc(), step.after.get("forget_acc"), record_ids)
    chain = Lineage(lineage.original_sha256, lineage.data_sha256, steps + [this])
    fields = output_fields(job, parent_sha256=parent_sha256, method=plan.method, params=plan.params.model_dump(mode="json"),
                           scenario=job.splits.scenario, forget_size=len(job.splits.forget_idx),
                           forget_digest=forget_digest(job.splits, lineage.data_sha256), wall_time_s=round(step.wall_time_s, 4),
                           lineage=chain.to_json(), run_info=run_info(step.info),
                           **({"forget_ids": list(job.splits.forget_ids)} if record_ids and job.splits.forget_ids else {}))
    warnings = list(step.log)
    protect = {**protected_inputs(job.request), "input checkpoint": job.checkpoint_path, "request": job.request.path}
    target, force = (write_to, False) if write_to is not None else (plan.output, plan.force)
    if plan.adapter:
        digest = write_adapter(target, step.adapter_model, fields, force=force, protect=protect, base=job.checkpoint_path)
        warnings.insert(0, ADAPTER_WARNING)
    elif plan.hf_source is not None:
        digest = write_hf_folder(target, step.state, fields, plan.hf_source, force=force, protect=protect,
                                 config=hf_output_config(job.request.model, job.request.base_dir))
    else:
        digest = write_merged(target, step.state, fields, force=force, protect=protect)
    result = ApplyResult(
        output=plan.output,
        mode="adapter" if plan.adapter else "merged",
        method=plan.method,
        params=plan.params.model_dump(mode="json"),
        wall_time_s=step.wall_time_s,
        total_time_s=time.perf_counter() - t0,
        before=step.before,
        after=step.after,
        output_sha256=digest,
        info=step.info,
        warnings=warnings,
        metadata=fields,
        model=step.model,
        summary_samples=step.summary_samples,
    )
    result.lineage = chain  # type: ignore[attr-defined]
    return result


def merged_state(model: nn.Module, job: Job) -> dict[str, torch.Tensor]:
    """The unlearned weights under the original's keys, shapes and dtypes (a drop-in replacement).

    Computation runs in the model's dtype (fp32); each tensor goes back to the checkpoint's own dtype.
    """
    assert job.original is not None
    ref = job.original.state_dict()
    state = model.state_dict()
    diffs = sorted(set(ref) ^ set(state))
    if diffs:
        raise UnlearnError(f"internal: the method returned a model with different keys ({', '.join(diffs[:3])}); please report this")
    dtypes = job.checkpoint_dtypes or dtypes_of(ref)
    return {k: state[k].detach().to(dtypes.get(k, ref[k].dtype)).cpu().contiguous() for k in ref}


@dataclass
class ApplyOutcome:
    """What `unlearn apply` produced: the job, the result, and the audit when one was asked for."""

    job: Job
    result: ApplyResult
    report: Optional[dict[str, Any]] = None
    report_dir: Optional[Path] = None
    removed: bool = False  # the output was never published because the audit failed (keep_on_fail=False)
    timings: dict[str, float] = field(default_factory=dict)  # where the run's wall time went (s); *_cpu_s: CPU time, not a part of it

    def summary(self) -> dict[str, Any]:
        out = self.result.as_dict(self.job)
        out["output_removed"] = self.removed
        chain = getattr(self.result, "lineage", None)
        if chain is not None:
            out["lineage_steps"] = len(chain.steps)
            out["forget_digest"] = chain.steps[-1]["forget_digest"]
            written = getattr(self.result, "ledger", None)  # none when the audit removed the output (--no-keep-on-fail)
            out["ledger"] = str(written) if written is not None else None
        out["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        from .precision import accelerator_stats

        out.update(accelerator_stats(self.job.device))  # the training passes' precision (evaluation is fp32); GPU peak memory
        splits = self.job.splits
        out["missing_ids"] = list(splits.missing_ids)
        out["excluded_earlier"] = splits.excluded
        out["already_forgotten"] = splits.already_forgotten
        if self.report is not None:
            out["audit"] = {"report_dir": str(self.report_dir), "verdict": self.report["verdict"],
                            "gates": self.report["gates"], "warnings": self.report["warnings"]}
        return out


def apply_request(
    request: "str | Path | Request | Sequence[str | Path | Request]",
    checkpoint: str | Path,
    method: Optional[str] = None,
    params: Optional[dict[str, Any]] = None,
    output: Optional[str | Path] = None,
    adapter_only: Optional[bool] = None,
    force: bool = False,
    device: str = "auto",
    seed: Optional[int] = None,
    code: CodePolicy = CodePolicy(),
    audit: bool = False,
    report_dir: Optional[str | Path] = None,
    keep_on_fail: bool = True,
    ledger: Optional[str | Path] = None,
    ignore_lineage: bool = False,
    record_ids: bool = False,
    allow_missing: bool = False,
    progress: Optional[Progress] = None,
    summary_samples: Optional[int] = SUMMARY_SAMPLES,
    num_workers: int = 0,
    anchor: Optional[str | Path] = None,
    no_anchor: bool = False,
) -> ApplyOutcome:
    """`unlearn apply`: every check first (requests, seed, plan, reference, lineage), then data and models, then the run.

    Several requests (same model and data) are applied one after another in one run, each a step of the lineage.
    A checkpoint that carries a lineage has every earlier forgotten sample excluded from the data (resolved from the
    ledger: `ledger`, else `<checkpoint stem>.ledger.jsonl`); `ignore_lineage` skips that (said in the warnings).
    keep_on_fail=False: the output is published only once the audit passes; a fail leaves -o's earlier output and its
    ledger as they were (the reports stay).
    """
    from . import ledger as L

    requests = [load_request(r) for r in (request if isinstance(request, (list, tuple)) else [request])]
    first = requests[0]
    for other in requests[1:]:
        if other.model.model_dump() != first.model.model_dump() or other.data.train.model_dump() != first.data.train.model_dump():
            raise UnlearnError(f"request {other.id!r} names another model or train data than {first.id!r}; "
                               "requests applied in one run must share both (run apply once per model)")
    if seed is not None:
        check_seed(seed)
    plans = [plan_apply(first, checkpoint, method=method, params=params, output=output, adapter_only=adapter_only, force=force, audit=audit,
                        summary_samples=summary_samples)]
    plans += [plan_apply(r, checkpoint, method=method, params=params, output=plans[0].output, adapter_only=False, force=True,
                        summary_samples=summary_samples)
              for r in requests[1:]]  # later requests share the run's output; their plans only fix method and parameters
    if len(requests) > 1 and plans[0].adapter:
        raise UnlearnError("several requests in one run give a merged output; drop --adapter-only (or output.mode: adapter)")
    if plans[0].audit:  # a report folder that cannot hold the reports fails now, not after the output and ledger are written
        from .audit.report import check_audit_report_dir

        check_audit_report_dir(plans[0].output, report_dir)
        from .audit.report import report_dir_for

        refuse_inside_inputs(report_dir_for(plans[0].output, report_dir), first, "report dir", "--report-dir")

    for req, plan in zip(requests, plans):
        if anchor is not None and no_anchor:
            raise UnlearnError("--anchor and --no-anchor contradict each other; keep one")
        if anchor is not None and req.task not in get_method(plan.method).anchor_tasks:
            readers = ", ".join(f"{n} ({'/'.join(get_method(n).anchor_tasks)})" for n in method_names() if get_method(n).anchor_tasks)
            raise UnlearnError(f"--anchor is not read by {plan.method} on {req.task} (only by: {readers}); drop --anchor")
    parent = CheckpointArtifact(checkpoint)
    notes: list[str] = []
    try:
        lineage = L.Lineage.from_metadata(parent.fields)
    except L.LedgerError as e:
        if not ignore_lineage:
            raise
        lineage = None  # a new chain starts from this checkpoint, as the message of the error offered
        notes.append(f"--ignore-lineage: {str(e).split(';')[0]}; a new chain starts from this checkpoint")
    anchor_artifact = check_anchor(anchor, parent, lineage) if anchor is not None else None
    ledger_in = Path(ledger) if ledger is not None else L.default_ledger(Path(checkpoint))
    ledger_out = Path(ledger) if ledger is not None else L.default_ledger(plans[0].output)  # where this run records
    entries: list[dict[str, Any]] = []
    resolve = None
    if lineage is not None and lineage.steps:
        if ignore_lineage:
            notes.append(f"--ignore-lineage: the {len(lineage.steps)} earlier deletion(s) of this checkpoint were not excluded from the data")
        else:
            if not ledger_in.is_file():
                raise L.LedgerError(f"the checkpoint has {len(lineage.steps)} earlier deletion(s) but its ledger {ledger_in} is missing; "
                                    "give it with --ledger FILE, or pass --ignore-lineage")
            entries = L.lineage_entries(L.read_ledger(ledger_in), lineage, ledger_in)
            if anchor is None and not no_anchor and first.task in get_method(plans[0].method).anchor_tasks:
                anchor_artifact, note = ledger_anchor(entries, parent, lineage)
                notes.append(note)
            resolve = lambda train, sha: L.resolve_excluded(lineage, entries, ledger_in, train.ids, sha)  # noqa: E731
    # where this run will record, checked before any work (after reading the lineage's ledger, whose errors come first)
    L.check_ledger_output(ledger_out,
                          [("input checkpoint", Path(checkpoint)), ("output", plans[0].output), ("anchor", Path(anchor) if anchor else None),
                           ("audit reference", plans[0].reference)] + [("request", r.path) for r in requests])
    L.check_one_chain(ledger_out, entries, plans[0].output)
    refuse_inside_inputs(ledger_out, first, "ledger", "--ledger")

    label_free = get_method(plans[0].method).label_free
    t_prepare = time.perf_counter()
    job = prepare(first, checkpoint, device=device, seed=seed, code=code, excluded_for=resolve, allow_missing=allow_missing,
                  needs_labels=not label_free, num_workers=num_workers)
    if not job.splits.train.labelled:
        notes.append(UNLABELLED_NOTE)
    notes += job.notes
    if anchor_artifact is not None:
        job.anchor = anchor_artifact.load(job.load_context()).eval()
    # several requests in one run on an original: the later ones stay aligned with it, not with the previous result
    in_run_anchor = job.original if anchor_artifact is None and not no_anchor and (lineage is None or not lineage.steps) else None
    reference = None
    if plans[0].audit and plans[0].reference is not None:
        reference = CheckpointArtifact(plans[0].reference)
        reference_model = reference.load(job.load_context())  # a reference that does not fit fails before unlearning
        check_reference_outputs(reference_model, job, plans[0].reference, summary_sets(job, plans[0].summary_samples))
    if plans[0].output.resolve() == job.checkpoint_path:
        raise UnlearnError(f"output {plans[0].output} is the input checkpoint; inputs are never overwritten, choose another --output")

    t0 = time.perf_counter()
    timings = {"prepare_s": t0 - t_prepare, "summary_s": 0.0, "method_s": 0.0, "method_cpu_s": 0.0}
    lineage = lineage or L.Lineage(original_sha256=parent.sha256, data_sha256=job.data_sha256)
    parent_sha, in_run_steps, step_jobs, gone = parent.sha256, [], [], torch.zeros(0, dtype=torch.long)
    step = None  # the previous request's result, once there is one
    for k, (req, plan) in enumerate(zip(requests, plans)):
        if k > 0:  # the next request runs on the previous result, with everything forgotten so far left out of its data
            gone = torch.cat([gone, job.splits.forget_positions])
            previous = job
            job = prepare(req, None, device=device, seed=seed, code=code, allow_missing=allow_missing, needs_labels=not label_free,
                          num_workers=num_workers,
                          excluded_for=lambda train, sha, g=gone: torch.cat([resolve(train, sha), g]) if resolve else g)
            job.original, job.artifact = step.model, previous.artifact  # type: ignore[union-attr]  # the input's dtypes and file stay the reference
            trainable = {n: p.requires_grad for n, p in previous.original.named_parameters()}
            for n, p in job.original.named_parameters():  # a method may hand back frozen weights (RFA's merge): the next trains a copy
                p.requires_grad_(trainable.get(n, True))
            reads_anchor = req.task in get_method(plan.method).anchor_tasks
            job.anchor = previous.anchor if previous.anchor is not None else (in_run_anchor if reads_anchor else None)
        step = unlearn_step(job, plan, progress)
        timings["summary_s"] += step.summary_s
        timings["method_s"] += step.wall_time_s
        timings["method_cpu_s"] += step.method_cpu_s
        step_jobs.append(job)
        if k < len(requests) - 1:
            in_run_steps.append(L.new_step(L.Lineage(lineage.original_sha256, lineage.data_sha256, lineage.steps + in_run_steps), req,
                                           plan.method, job.splits, parent_sha, created_utc(), step.after.get("forget_acc"), record_ids))
            parent_sha = L.state_sha256(step.state)  # an in-run result is never a file: its digest is its tensors'
    final_plan = dataclasses.replace(plans[-1], output=plans[0].output, force=plans[0].force, adapter=plans[0].adapter)
    from .distributed import is_writer

    if not is_writer():  # under torchrun, rank 0 writes the output, the ledger and the audit; the others are done
        return ApplyOutcome(job, None, timings=timings)  # type: ignore[arg-type]
    t_write = time.perf_counter()
    # the output is written beside its destination and published together with its ledger entries; with --audit
    # --no-keep-on-fail only once the verdict is in: a failing audit leaves an earlier output (--force) and its ledger as they were
    verdict_first = plans[0].audit and not keep_on_fail
    protect = {**protected_inputs(job.request), "input checkpoint": job.checkpoint_path, "request": job.request.path}
    with StagedOutput(final_plan.output, final_plan.force, protect) as stage:
        result = write_step(job, final_plan, step, parent_sha, lineage, record_ids, t0, in_run_steps, write_to=stage.staged)
        result.warnings[:0] = notes

        def record(created: list[Path]) -> L.StagedLedger:
            """The ledger, written but not yet in place: the earlier entries, then one hash-chained entry per step of this run,
            each with its forgotten set beside the ledger (the sets this creates are listed in `created`)."""
            written = entries
            if ledger_out != ledger_in and written:
                created += L.copy_forget_files(written, ledger_in, ledger_out)
            new_steps = result.lineage.steps[len(lineage.steps):]
            outputs = [s["parent_sha256"] for s in new_steps[1:]] + [result.output_sha256]
            for s_job, s_step, out_sha in zip(step_jobs, new_steps, outputs):
                where = result.output if out_sha == result.output_sha256 else Path(f"in-run step {s_step['step']}")
                # the lineage's first entry names the original's file, so later requests can anchor to it (ledger_anchor)
                extra = {"original": str(Path(checkpoint).resolve())} if not written else {}
                name = L.forget_set_name(s_step)
                if not (L.forget_dir(ledger_out) / name).exists():  # a set this record creates (removed if it is never made)
                    created.append(L.forget_dir(ledger_out) / name)
                L.store_forget_set(ledger_out, s_step, s_job.splits)
                written = written + [L.new_entry(written, s_step, where, out_sha, name, extra=extra)]
            result.ledger = ledger_out  # type: ignore[attr-defined]
            return L.StagedLedger(ledger_out, written)

        def publish() -> None:
            """The output and its ledger entries, together: a signal meanwhile waits, and the ledger is written before the
            output is published and put in place right after (a rename), so an output exists exactly when its entry does,
            also when the disk fills up. Under a lock, so that a run publishing beside this one (the same output, the same
            ledger) goes before or after, and with the ledger checked again: another run may have extended it meanwhile."""
            with publish_lock(final_plan.output, ledger_out), signals_deferred():  # waiting for the lock stays interruptible
                L.check_one_chain(ledger_out, entries, final_plan.output)
                created: list[Path] = []
                staged_ledger = None
                replaced = L.read_ledger(ledger_out) if ledger_out.is_file() else []  # checked just above
                sets = L.forget_dir(ledger_out)
                sets_folder_was_there = sets.exists()
                try:
                    staged_ledger = record(created)
                    stage.publish()
                except BaseException:
                    for path in created:  # the forgotten sets of a record that never was
                        path.unlink(missing_ok=True)
                    if not sets_folder_was_there and sets.is_dir() and not any(sets.iterdir()):
                        sets.rmdir()
                    if staged_ledger is not None:
                        staged_ledger.discard()
                    raise
                staged_ledger.commit()
                L.remove_dropped_sets(ledger_out, replaced, staged_ledger.entries)

        if not verdict_first:
            publish()
        timings["write_s"] = time.perf_counter() - t_write
        outcome = ApplyOutcome(job, result, timings=timings)
        if plans[0].audit:
            from .audit import audit_fresh_model

            ref = (reference_model, reference.info()) if reference is not None else None
            where = result.output.parent.resolve() / result.output.name  # its published path, also while it is staged
            info = {"path": str(where), "kind": result.mode, "sha256": result.output_sha256, "metadata": result.metadata}
            published_in = [0.0]

            def timed_publish() -> None:
                t_publish = time.perf_counter()
                publish()
                published_in[0] = time.perf_counter() - t_publish

            t_audit = time.perf_counter()
            audit_then_publish(outcome, lambda: audit_fresh_model(job, result.model, info, report_dir, plans[0].gates, ref,
                                                                  getattr(result, "ledger", None)),
                               verdict_first, timed_publish, result.output)
            timings["audit_s"] = time.perf_counter() - t_audit - published_in[0]
            timings["write_s"] += published_in[0]
    return outcome


def audit_then_publish(outcome: ApplyOutcome, run_audit: Callable[[], tuple[dict[str, Any], Path]], verdict_first: bool,
                       publish: Callable[[], None], output: Path) -> None:
    """Audit a fresh output (`run_audit` gives the report and its folder) and, with --no-keep-on-fail (`verdict_first`),
    publish it only on a passing verdict; a staged output never published goes with its StagedOutput block.

    A refusal of the result itself (NaN/Inf outputs) is a verdict: never published. An audit cut short (a signal, an
    error) gives no verdict: the output is published, as without the flag, with its ledger entry. Shared by checkpoint
    and exact-artifact outputs."""
    try:
        outcome.report, outcome.report_dir = run_audit()
    except UnmeasurableResult as e:
        if verdict_first:
            outcome.removed = True
            raise UnmeasurableResult(f"{e}; {output} was not published (--no-keep-on-fail)") from None
        raise
    except BaseException:
        if verdict_first:
            publish()
        raise
    if verdict_first and outcome.report.get("verdict") == "fail":
        outcome.removed = True
    elif verdict_first:
        publish()


def ledger_anchor(entries: list[dict[str, Any]], parent: CheckpointArtifact, lineage: Any) -> tuple[Optional[CheckpointArtifact], str]:
    """Without --anchor, on a checkpoint with earlier deletions: the original file its ledger names (first entry's
    `original`), if it is still there with the sha256 the lineage starts from; else None. Returns (artifact, note)."""
    path = entries[0].get("original") if entries else None
    if path:
        try:
            artifact = check_anchor(path, parent, lineage)
            return artifact, (f"retained data aligned with the lineage's original {path} (named in the ledger; --anchor FILE "
                              "overrides, --no-anchor aligns with this checkpoint)")
        except UnlearnError as e:
            why = f"the ledger's original is unusable ({e})"
    else:
        why = "the ledger does not name the original's file"
    return None, (f"this checkpoint has {len(lineage.steps)} earlier deletion(s) and {why}: give --anchor ORIGINAL (the model the "
                  "first was applied to) so that retained data stay aligned with it; without, each request's small utility loss compounds")


def check_anchor(anchor: str | Path, parent: CheckpointArtifact, lineage: Any) -> CheckpointArtifact:
    """`apply --anchor`: the lineage's original checkpoint (the input itself when it has no lineage yet), proved by its sha256.

    Retained data are then aligned with the original rather than with the input, so the small utility losses of a
    stream of requests do not compound (docs/rfa.md, "Repeated requests").
    """
    from .ledger import LedgerError

    path = Path(anchor)
    if not path.exists():
        raise UnlearnError(f"--anchor {path}: no such file; give the lineage's original checkpoint (the model the first request was applied to)")
    artifact = CheckpointArtifact(path)
    if not stat.S_ISREG(os.stat(artifact.file).st_mode):  # a FIFO or device would hang the hash below (a ledger names this path)
        raise UnlearnError(f"--anchor {path} is not a regular file; give the lineage's original checkpoint")
    expected = lineage.original_sha256 if lineage is not None and lineage.original_sha256 else parent.sha256
    if artifact.sha256 != expected:
        raise LedgerError(f"--anchor {path} (sha256 {artifact.sha256[:12]}...) is not this checkpoint's original (the lineage starts from "
                          f"{expected[:12]}...); give the checkpoint the first request was applied to, or drop --anchor")
    return artifact


# ---------------------------------------------------------------- validate

def check_adapter_output(name: str, adapter: bool) -> None:
    """An adapter output needs a LoRA method: the others change the weights themselves."""
    if adapter and not get_method(name).supports_adapter:
        raise MethodError(f"method {name} changes weights directly, so it has no adapter output; drop --adapter-only (or output.mode: adapter)")


def validate_request(request: "str | Path | Request", checkpoint: Optional[str | Path] = None, code: CodePolicy = CodePolicy(),
                     allow_missing: bool = False) -> dict[str, Any]:
    """`unlearn validate`: schema, method and parameters, output mode, gates, data, classes/indices, checkpoint; no training."""
    req = load_request(request)  # schema first: no torch needed to reject a malformed request
    params = parse_params(req.method.name, method_params_for(req, req.method.name))
    check_applicable(req.method.name, req.task, req.forget.scenario, params)
    check_adapter_output(req.method.name, req.output.mode == "adapter")
    from .audit.gates import check_request_gates

    gap_note = check_request_gates(req)
    job = prepare(req, checkpoint, device="cpu", code=code, needs_labels=not get_method(req.method.name).label_free, allow_missing=allow_missing)
    preflight(req.method.name, job.context(original=job.original if job.original is not None else job.make_model().eval()), params)
    reference = req.audit_reference()
    if reference is not None:  # as apply --audit checks it, before any work: found, and a checkpoint of this model
        if not is_checkpoint(reference):
            raise AuditError(f"audit reference {reference} not found; give a retrained checkpoint (unlearn train --exclude-forget) or drop audit.reference")
        CheckpointArtifact(reference).load(job.load_context())
    info = {"ok": True, **describe_job(job), "checkpoint_matches": req.model.arch if checkpoint else None,
            "train_labelled": job.splits.train.labelled, "missing_ids": list(job.splits.missing_ids)}
    if job.notes or gap_note:
        info["notes"] = job.notes + ([gap_note] if gap_note else [])
    if not job.splits.train.labelled:
        info["note"] = ("the train split has no labels: only label-free methods can run on it ("
                        + ", ".join(n for n in method_names() if get_method(n).label_free) + "); the audit measures accuracy on the labelled test split")
    return info


# ---------------------------------------------------------------- train

def train_request(
    request: "str | Path | Request",
    output: str | Path,
    options: Optional[dict[str, Any]] = None,
    exclude_forget: bool = False,
    force: bool = False,
    device: str = "auto",
    seed: Optional[int] = None,
    code: CodePolicy = CodePolicy(),
    progress: Optional[Progress] = None,
    init: Optional[str | Path] = None,
    num_workers: int = 0,
) -> dict[str, Any]:
    """`unlearn train`: options, request, seed, output and --init checked first; then data, model and training.

    init: start from this checkpoint's weights (a pre-trained backbone; a .safetensors file or a save_pretrained folder)
    instead of a random initialisation.
    """
    from .training import train_config

    config = train_config(**(options or {}))
    req = load_request(request)
    if seed is not None:
        check_seed(seed)
    if init is not None and not is_checkpoint(init):
        raise CheckpointError(f"--init {init}: not found; give a pre-trained checkpoint (.safetensors or a save_pretrained folder)")
    check_output(Path(output), "dir" if hf_output_folder(req, Path(output)) else "file", force,
                 protect={**protected_inputs(req), "request": req.path, "init checkpoint": Path(init) if init else None})
    start = CheckpointArtifact(init) if init is not None else None
    if start is not None:
        start.tensors  # noqa: B018 - a missing or unreadable --init fails before any work
    job = prepare(req, None, device=device, seed=seed, code=code, num_workers=num_workers)
    return train_checkpoint(job, output, config, exclude_forget=exclude_forget, force=force, progress=progress, init=start)


def init_from(model: nn.Module, init: CheckpointArtifact, arch: str) -> list[str]:
    """Start from a pre-trained checkpoint of the same architecture: every tensor is loaded, except those whose shape
    differs (a new head for another number of classes), which keep their fresh initialisation; returns their names."""
    tensors, own = init.tensors, model.state_dict()
    foreign = sorted(set(tensors) ^ set(own))
    if foreign:
        raise CheckpointError(f"--init {init.path} does not match {arch}: {'missing' if foreign[0] in own else 'unexpected'} {foreign[0]}"
                              f"{f' (+{len(foreign) - 1} more)' if len(foreign) > 1 else ''}; give a checkpoint of the request's architecture")
    fresh = sorted(k for k in own if tuple(tensors[k].shape) != tuple(own[k].shape))
    load_into(model, {k: (own[k] if k in fresh else tensors[k]) for k in own}, arch, init.path)
    return fresh


def train_checkpoint(
    job: Job,
    output: str | Path,
    config: TrainConfig,
    exclude_forget: bool = False,
    force: bool = False,
    progress: Optional[Progress] = None,
    init: Optional[CheckpointArtifact] = None,
) -> dict[str, Any]:
    """Train the request's architecture (from scratch, or from `init`; optionally without the forget set) and write it
    atomically: a safetensors file, or a save_pretrained folder for an hf:<folder> model and an output not named *.safetensors."""
    from .training import fit

    output = Path(output)
    protect = {**protected_inputs(job.request), "request": job.request.path, "init checkpoint": init.path if init is not None else None}
    hf_source = hf_output_folder(job.request, output)
    check_output(output, "dir" if hf_source else "file", force, protect=protect)
    data = job.splits.retain if exclude_forget else job.splits.train
    job.seed_everything()
    model = job.make_model()
    fresh = init_from(model, init, job.request.model.arch) if init is not None else []
    start = time.perf_counter()
    from .distributed import data_parallel, is_writer

    with data_parallel():  # under torchrun: batches split over the ranks, gradients averaged (one process: no-op)
        fit(model, data, config, job.device, torch.Generator().manual_seed(job.seed), progress, task="train",
            loss_fn=job.task.loss_fn(config.loss))
    wall = time.perf_counter() - start
    bad = non_finite(model.state_dict())
    if bad:
        raise DivergedError(f"training diverged: {len(bad)} tensor(s) hold NaN/Inf (first: {bad[0][0]}); nothing was written; lower --lr")
    sets = summary_sets(job)
    figures = utility(model, job, sets=sets, refuse=lambda where: DivergedError(
        f"training diverged: the model gives NaN/Inf outputs on {where}; nothing was written; lower --lr"))
    fields = output_fields(job, trained_on="retain" if exclude_forget else "train", train_config=config.model_dump(),
                           wall_time_s=round(wall, 4), **({"init_sha256": init.sha256} if init is not None else {}))
    summary = {"output": str(output), "sha256": None, "train_size": len(data), "wall_time_s": wall,
               "exclude_forget": exclude_forget, **figures, "summary_samples": summary_sizes(job, sets)}
    if init is not None:
        summary.update(init=str(init.path), init_fresh=fresh)
    if not is_writer():  # rank 0 writes; the other ranks' weights are the same
        return {**summary, "output": None}
    if hf_source is not None:
        summary["sha256"] = write_hf_folder(output, model.state_dict(), fields, hf_source, force=force, protect=protect,
                                            config=hf_output_config(job.request.model, job.request.base_dir))
    else:
        summary["sha256"] = write_merged(output, model.state_dict(), fields, force=force, protect=protect)
    from .precision import accelerator_stats

    return {**summary, **accelerator_stats(job.device)}


# ---------------------------------------------------------------- merge

def merge_adapter(adapter: str | Path, base: str | Path, output: str | Path, force: bool = False,
                  code: CodePolicy = CodePolicy()) -> dict[str, Any]:
    """`unlearn merge`: fold an adapter folder into its base checkpoint, giving a drop-in merged checkpoint: for an hf:
    model a save_pretrained folder, as apply writes it, unless the output is named *.safetensors.

    The adapter's metadata names the architecture and its base's sha256; a different base is refused.
    The output keeps the base's keys, shapes and dtypes and carries the adapter's provenance.
    """
    from .artifacts import AdapterArtifact, LoadContext
    from .models import build_model
    from .request import ModelSpec

    adapter_art, base_art = AdapterArtifact(adapter), CheckpointArtifact(base)
    fields = adapter_art.fields
    if not isinstance(fields.get("model_arch"), str):
        raise UnlearnError(f"adapter {adapter} records no model architecture (unlearn_metadata.json); merge an adapter written by `unlearn apply --adapter-only`")
    output = Path(output)
    spec = ModelSpec(arch=fields["model_arch"], kwargs=fields.get("model_kwargs") or {})
    # an hf: model merges, as apply writes it, into a save_pretrained folder unless the output is named *.safetensors:
    # the base folder's config.json (checked against the architecture when the base loads), else the hf: folder's
    base_dir = Path(base).resolve().parent
    hf_source = None
    if hf_folder(spec, base_dir) is not None and not output.name.lower().endswith(".safetensors"):
        hf_source = Path(base) if is_hf_folder(Path(base)) else hf_folder(spec, base_dir)
    protect = {"base checkpoint": Path(base), "adapter": Path(adapter), "hf: model folder": hf_folder(spec, base_dir)}
    check_output(output, "dir" if hf_source is not None else "file", force, protect=protect)
    policy = CodePolicy(code_paths=tuple(code.code_paths) + (base_dir,), trust_code=code.trust_code)
    make = lambda: build_model(spec, base_dir, policy)  # noqa: E731
    device = torch.device("cpu")
    base_model = base_art.load(LoadContext(make_model=make, arch=spec.arch, device=device))
    merged = adapter_art.load(LoadContext(make_model=make, arch=spec.arch, device=device, base=base_model, base_sha256=base_art.sha256))
    state = {k: v.detach().to(base_art.dtypes[k]).cpu().contiguous() for k, v in merged.state_dict().items()}
    bad = non_finite(state)
    if bad:
        raise CheckpointError(f"adapter {adapter}: merged into the base, the weights hold NaN/Inf (first: {bad[0][0]}), although the adapter's "
                              f"own tensors are finite: its {AdapterArtifact.CONFIG} (lora_alpha, r) scales them past float range; nothing was written; "
                              "give a folder written by `unlearn apply --adapter-only`")
    if same_weights(state, base_model):
        raise CheckpointError(f"adapter {adapter}: merged into the base, it changes no weight, so the output would be the base "
                              "itself, the forgotten data still in it; nothing was written; give a folder written by `unlearn apply --adapter-only`")
    out_fields = {**{k: v for k, v in fields.items() if k not in ("created_utc",)}, "merged_from_adapter_sha256": adapter_art.sha256,
                  "created_utc": created_utc()}
    if hf_source is not None:
        config = None if hf_source == Path(base) else hf_output_config(spec, base_dir)
        digest = write_hf_folder(output, state, file_fields(out_fields), hf_source, force=force, protect=protect, config=config)
    else:
        digest = write_merged(output, state, file_fields(out_fields), force=force, protect=protect)
    return {"output": str(output), "output_kind": "save_pretrained folder" if hf_source is not None else "safetensors file",
            "sha256": digest, "base_sha256": base_art.sha256, "adapter_sha256": adapter_art.sha256,
            "method": fields.get("method"), "request_id": fields.get("request_id")}
