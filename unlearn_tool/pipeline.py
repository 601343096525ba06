"""The orchestrator, read top to bottom: plan (every check) -> job -> method -> artifact writer -> summary.

    plan_apply(request, ...)        method, parameters, output, gates, reference: every input error, before any work
    apply(job, plan)                run the method, refuse a diverged result, write the artifact, summarise
    apply_request(...)              the whole `unlearn apply`: plan, prepare, apply, optionally audit
    train_checkpoint(job, ...)      `unlearn train` (optionally without the forget set: the retrain reference)
    validate_request(...)           `unlearn validate`: every check, no training
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from . import __version__
from .artifacts import CheckpointArtifact, is_checkpoint, write_adapter, write_hf_folder, write_merged
from .audit.registry import finite
from .checkpoint import check_output, dtypes_of, load_into, non_finite
from .data import LabelledData
from .errors import AuditError, CheckpointError, DivergedError, MethodError, UnlearnError
from .evaluate import predict_logits, remember_predictions
from .job import Job, Progress, check_seed, describe_job, prepare, resolve_device, seed_everything  # noqa: F401 (re-exported)
from .methods import MethodParams, check_applicable, get_method, parse_params, run_method
from .models import CodePolicy, hf_folder
from .provenance import created_utc, file_fields
from .request import Request, load_request, method_params_for
from .tasks import SetOutputs
from .training import TrainConfig

SUMMARY_SETS = ("retain", "forget", "test")
SUMMARY_SAMPLES = 1000  # retain and test samples the before/after summary evaluates (seeded); the audit evaluates all


# ---------------------------------------------------------------- utility figures

def summary_sets(job: Job, samples: Optional[int] = SUMMARY_SAMPLES) -> dict[str, LabelledData]:
    """What the before/after summary evaluates: the whole forget set (the work), and seeded samples of at most
    `samples` retain and test samples (None or 0: all), the same positions for every model of the job."""
    out = {}
    for i, name in enumerate(SUMMARY_SETS):
        data: LabelledData = getattr(job.splits, name)
        if name != "forget" and samples and len(data) > samples:
            keep = np.sort(np.random.default_rng(job.seed * 7919 + 101 + i).choice(len(data), size=samples, replace=False))
            data = data.subset(torch.from_numpy(keep))
        out[name] = data
    return out


def summary_sizes(job: Job, sets: dict[str, LabelledData]) -> dict[str, int]:
    """How many samples the summary evaluated per set, and how many the set holds (the JSON's `summary_samples`)."""
    return {**{k: len(v) for k, v in sets.items()}, **{f"{k}_total": len(getattr(job.splits, k)) for k in sets}}


def utility(model: nn.Module, job: Job, batch_size: Optional[int] = None,
            sets: Optional[dict[str, LabelledData]] = None) -> dict[str, Optional[float]]:
    """The before/after summary: the task's utility metrics on retain, forget and test data (scalars only).

    `sets` (from summary_sets) bounds what is evaluated; by default every sample of the three sets.
    """
    bs = batch_size or job.request.data.batch_size
    sets = sets if sets is not None else {name: getattr(job.splits, name) for name in SUMMARY_SETS}
    outputs = {}
    for name, data in sets.items():
        logits, y = predict_logits(model, data, job.device, bs)  # remembered for the original inside `apply`
        targets = y.numpy()
        outputs[name] = SetOutputs(targets=targets, stats=job.task.per_sample(logits.double().numpy(), targets))
    figures = job.task.utility(outputs, job.forget_info)
    keep = ("retain_acc", "forget_acc", "test_acc") + (("test_remaining_acc", "test_forgotten_acc") if job.splits.scenario == "class" else ())
    return {k: finite(figures.get(k)) for k in keep}


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
    return source if source is not None and not output.name.endswith(".safetensors") else None


ADAPTER_WARNING = (
    "adapter-only output: the forgotten data is still in the base weights; the deletion holds only while the "
    "adapter is applied. Merge it (output.mode: merged) before deleting the original checkpoint."
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
    entry = get_method(name)
    method_params = parse_params(name, method_params_for(req, name, params))
    check_applicable(name, "classification", req.forget.scenario)
    adapter = adapter_only if adapter_only is not None else req.output.mode == "adapter"
    if adapter and not entry.supports_adapter:
        raise MethodError(f"method {name} changes weights directly, so it has no adapter output; drop --adapter-only (or output.mode: adapter)")
    ckpt = Path(checkpoint)
    out_path = Path(output) if output else (req.resolve(req.output.path) if req.output.path else default_output_path(ckpt, adapter))
    hf_source = None if adapter else hf_output_folder(req, out_path)
    check_output(out_path, "dir" if adapter or hf_source else "file", force, protect={"input checkpoint": ckpt, "request": req.path})
    plan = ApplyPlan(method=name, params=method_params, adapter=adapter, output=out_path, force=force, audit=audit,
                     hf_source=hf_source, summary_samples=summary_samples)
    if audit:
        from .audit.gates import parse_gates

        plan.gates = list(gates) if gates is not None else list(req.audit.gates)
        plan.reference = Path(reference) if reference is not None else req.audit_reference()
        parse_gates(plan.gates, req.forget.scenario, plan.reference is not None)
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


def apply(
    job: Job,
    method: Optional[str] | ApplyPlan = None,
    params: Optional[dict[str, Any]] = None,
    output: Optional[str | Path] = None,
    adapter_only: Optional[bool] = None,
    force: bool = False,
    progress: Optional[Progress] = None,
) -> ApplyResult:
    """Run the method on the job's checkpoint and publish the result atomically.

    Give an ApplyPlan (from plan_apply) or the same arguments plan_apply takes.
    """
    if job.original is None or job.artifact is None:
        raise UnlearnError("apply needs a checkpoint; give the trained model's .safetensors file")
    req = job.request
    plan = method if isinstance(method, ApplyPlan) else plan_apply(req, job.artifact.path, method, params, output, adapter_only, force)
    if plan.output.resolve() == job.checkpoint_path:
        raise UnlearnError(f"output {plan.output} is the input checkpoint; inputs are never overwritten, choose another --output")

    t0 = time.perf_counter()
    sets = summary_sets(job, plan.summary_samples)
    ctx = job.context(progress=progress)
    with remember_predictions(job.original):  # the method reuses the original's predictions the summary computed
        before = utility(job.original, job, sets=sets)
        job.seed_everything()
        result, wall = run_method(plan.method, ctx, plan.params)
    model = result.model.to(job.device).eval()
    state = merged_state(model, job)
    bad = non_finite(state)
    if bad:
        raise DivergedError(f"unlearning diverged: {len(bad)} tensor(s) of the result hold NaN/Inf (first: {bad[0][0]}); "
                            f"nothing was written; lower the learning rate or check the method's parameters")
    after = utility(model, job, sets=sets)

    fields = output_fields(job, parent_sha256=job.checkpoint_sha256, method=plan.method,
                           params=plan.params.model_dump(mode="json"), scenario=job.splits.scenario,
                           forget_size=len(job.splits.forget_idx), wall_time_s=round(wall, 4))
    warnings: list[str] = list(ctx.log)
    protect = {"input checkpoint": job.checkpoint_path, "request": req.path}
    if plan.adapter:
        digest = write_adapter(plan.output, result.adapter_model, fields, force=plan.force, protect=protect)
        warnings.insert(0, ADAPTER_WARNING)
    elif plan.hf_source is not None:
        digest = write_hf_folder(plan.output, state, fields, plan.hf_source, force=plan.force, protect=protect)
    else:
        digest = write_merged(plan.output, state, fields, force=plan.force, protect=protect)
    return ApplyResult(
        output=plan.output,
        mode="adapter" if plan.adapter else "merged",
        method=plan.method,
        params=plan.params.model_dump(mode="json"),
        wall_time_s=wall,
        total_time_s=time.perf_counter() - t0,
        before=before,
        after=after,
        output_sha256=digest,
        info=result.info,
        warnings=warnings,
        metadata=fields,
        model=model,
        summary_samples=summary_sizes(job, sets),
    )


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

    def summary(self) -> dict[str, Any]:
        out = self.result.as_dict(self.job)
        if self.report is not None:
            out["audit"] = {"report_dir": str(self.report_dir), "verdict": self.report["verdict"],
                            "gates": self.report["gates"], "warnings": self.report["warnings"]}
        return out


def apply_request(
    request: "str | Path | Request",
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
    progress: Optional[Progress] = None,
    summary_samples: Optional[int] = SUMMARY_SAMPLES,
    num_workers: int = 0,
) -> ApplyOutcome:
    """`unlearn apply`: every check first (request, seed, plan, reference), then data and models, then the run."""
    req = load_request(request)
    if seed is not None:
        check_seed(seed)
    plan = plan_apply(req, checkpoint, method=method, params=params, output=output, adapter_only=adapter_only,
                      force=force, audit=audit, summary_samples=summary_samples)
    job = prepare(req, checkpoint, device=device, seed=seed, code=code, num_workers=num_workers)
    reference = None
    if plan.audit and plan.reference is not None:
        reference = CheckpointArtifact(plan.reference)
        reference_model = reference.load(job.load_context())  # a reference that does not fit fails before unlearning
    result = apply(job, plan, progress=progress)
    outcome = ApplyOutcome(job, result)
    if plan.audit:
        from .audit import audit_fresh_model

        ref = (reference_model, reference.info()) if reference is not None else None
        info = {"path": str(result.output.resolve()), "kind": result.mode, "sha256": result.output_sha256, "metadata": result.metadata}
        outcome.report, outcome.report_dir = audit_fresh_model(job, result.model, info, report_dir, plan.gates, ref)
    return outcome


# ---------------------------------------------------------------- validate

def validate_request(request: "str | Path | Request", checkpoint: Optional[str | Path] = None, code: CodePolicy = CodePolicy()) -> dict[str, Any]:
    """`unlearn validate`: schema, method and parameters, data, classes/indices, checkpoint; no training."""
    req = load_request(request)  # schema first: no torch needed to reject a malformed request
    parse_params(req.method.name, req.method.params)
    check_applicable(req.method.name, "classification", req.forget.scenario)
    job = prepare(req, checkpoint, device="cpu", code=code)
    return {"ok": True, **describe_job(job), "checkpoint_matches": req.model.arch if checkpoint else None}


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
    """`unlearn train`: options, request, seed, init and output checked first; then data, model and training."""
    from .training import train_config

    config = train_config(**(options or {}))
    req = load_request(request)
    if seed is not None:
        check_seed(seed)
    if init is not None and not is_checkpoint(init):
        raise CheckpointError(f"--init {init}: not found; give a pre-trained checkpoint (.safetensors or a save_pretrained folder)")
    check_output(Path(output), "dir" if hf_output_folder(req, Path(output)) else "file", force, protect={"request": req.path})
    job = prepare(req, None, device=device, seed=seed, code=code, num_workers=num_workers)
    return train_checkpoint(job, output, config, exclude_forget=exclude_forget, force=force, progress=progress, init=init)


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
    init: Optional[str | Path] = None,
) -> dict[str, Any]:
    """Train the request's architecture (from scratch, or from `init`; optionally without the forget set) and write it
    atomically: a safetensors file, or a save_pretrained folder for an hf:<folder> model and an output not named *.safetensors."""
    from .training import fit

    output = Path(output)
    protect = {"request": job.request.path}
    hf_source = hf_output_folder(job.request, output)
    check_output(output, "dir" if hf_source else "file", force, protect=protect)
    data = job.splits.retain if exclude_forget else job.splits.train
    job.seed_everything()
    model = job.make_model()
    init_artifact = CheckpointArtifact(init) if init is not None else None
    fresh = init_from(model, init_artifact, job.request.model.arch) if init_artifact is not None else []
    start = time.perf_counter()
    fit(model, data, config, job.device, torch.Generator().manual_seed(job.seed), progress, task="train")
    wall = time.perf_counter() - start
    bad = non_finite(model.state_dict())
    if bad:
        raise DivergedError(f"training diverged: {len(bad)} tensor(s) hold NaN/Inf (first: {bad[0][0]}); nothing was written; lower --lr")
    sets = summary_sets(job)
    figures = utility(model, job, sets=sets)
    extra = {"init_sha256": init_artifact.sha256} if init_artifact is not None else {}
    fields = output_fields(job, trained_on="retain" if exclude_forget else "train", train_config=config.model_dump(),
                           wall_time_s=round(wall, 4), **extra)
    if hf_source is not None:
        digest = write_hf_folder(output, model.state_dict(), fields, hf_source, force=force, protect=protect)
    else:
        digest = write_merged(output, model.state_dict(), fields, force=force, protect=protect)
    summary = {"output": str(output), "sha256": digest, "train_size": len(data), "wall_time_s": wall,
               "exclude_forget": exclude_forget, **figures, "summary_samples": summary_sizes(job, sets)}
    if init is not None:
        summary.update(init=str(init), init_fresh=fresh)
    return summary
