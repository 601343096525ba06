"""The orchestrator, read top to bottom: request -> data and model -> method -> checkpoint writer -> summary."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from . import __version__
from .checkpoint import (
    check_output,
    dtypes_of,
    load_into,
    metadata_for,
    non_finite,
    read_checkpoint,
    sha256_file,
    write_directory,
    write_safetensors,
)
from .data import Splits, load_split, load_splits
from .errors import AuditError, DivergedError, MethodError, UnlearnError
from .evaluate import predict_logits
from .methods import MethodParams, UnlearnContext, get_method, parse_params, run_method
from .models import CodePolicy, build_model, num_classes_of
from .provenance import created_utc, file_fields
from .request import Request, load_request, method_params_for
from .training import TrainConfig

Progress = Callable[[str, int, int], None]


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an unavailable device is an input error."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UnlearnError(f"--device {name}: not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UnlearnError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UnlearnError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s); use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UnlearnError(f"--device {name}: MPS is not available on this machine; use --device cpu or auto")
    elif dev.type != "cpu":
        raise UnlearnError(f"--device {name}: unsupported device type; use auto, cpu, cuda, cuda:N or mps")
    return dev


def seed_everything(seed: int) -> None:
    """Make CPU runs repeatable (and CUDA runs as repeatable as cuDNN allows)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class Job:
    """A validated request bound to its data, architecture and (optionally) checkpoint."""

    request: Request
    splits: Splits
    num_classes: int
    device: torch.device
    seed: int
    make_model: Callable[[], nn.Module]
    original: Optional[nn.Module] = None
    checkpoint_path: Optional[Path] = None
    checkpoint_sha256: str = ""
    checkpoint_metadata: dict[str, str] = field(default_factory=dict)
    checkpoint_dtypes: dict[str, torch.dtype] = field(default_factory=dict)  # written back unchanged (fp16 stays fp16)

    def load(self, path: str | Path) -> tuple[nn.Module, dict[str, str]]:
        """A checkpoint of this job's architecture, loaded strictly, on the job's device in eval mode; and its metadata."""
        model, metadata, _ = self._load(path)
        return model, metadata

    def _load(self, path: str | Path) -> tuple[nn.Module, dict[str, str], dict[str, torch.dtype]]:
        state, metadata = read_checkpoint(path)
        model = load_into(self.make_model(), state, self.request.model.arch, path)
        return model.to(self.device).eval(), metadata, dtypes_of(state)

    def context(self, original: Optional[nn.Module] = None, seed: Optional[int] = None,
                progress: Optional[Progress] = None) -> UnlearnContext:
        """What a method sees of this job (its own original model unless another is given)."""
        return UnlearnContext(
            original=original if original is not None else self.original,
            make_model=self.make_model,
            splits=self.splits,
            num_classes=self.num_classes,
            device=self.device,
            seed=self.seed if seed is None else seed,
            batch_size=self.request.data.batch_size,
            progress=progress,
        )


def check_seed(seed: int, flag: str = "--seed") -> int:
    from .request import MAX_SEED

    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UnlearnError(f"{flag} {seed}: a seed is a whole number from 0 to {MAX_SEED}; give one in that range")
    return seed


def prepare(
    request: Request | str | Path,
    checkpoint: Optional[str | Path] = None,
    device: str = "auto",
    seed: Optional[int] = None,
    code: CodePolicy = CodePolicy(),
) -> Job:
    """Validate everything a run needs, in the order that fails fastest, without training."""
    req = request if isinstance(request, Request) else load_request(request)
    dev = resolve_device(device)
    run_seed = req.seed if seed is None else check_seed(seed)
    seed_everything(run_seed)

    # Data first: its shape tells us how to probe the architecture.
    probe_train = load_split(req.data.train, "train", req.base_dir)

    def make_model() -> nn.Module:
        torch.manual_seed(run_seed)
        return build_model(req.model, req.base_dir, code)

    num_classes = num_classes_of(make_model(), probe_train.input_shape())
    splits = load_splits(req, num_classes, train=probe_train)
    job = Job(request=req, splits=splits, num_classes=num_classes, device=dev, seed=run_seed, make_model=make_model)
    if checkpoint is not None:
        path = Path(checkpoint)
        job.original, job.checkpoint_metadata, job.checkpoint_dtypes = job._load(path)
        job.checkpoint_path = path.resolve()
        job.checkpoint_sha256 = sha256_file(path)
    return job


# ---------------------------------------------------------------- utility figures

def utility(model: nn.Module, splits: Splits, device: torch.device, batch_size: int = 256) -> dict[str, float]:
    """Accuracy on retain, forget and test data (and, for class unlearning, test split by class)."""
    out: dict[str, float] = {}
    for name, data in (("retain_acc", splits.retain), ("forget_acc", splits.forget), ("test_acc", splits.test)):
        logits, y = predict_logits(model, data, device, batch_size)
        out[name] = float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")
        if name == "test_acc" and splits.scenario == "class":
            forgotten = torch.isin(y, torch.tensor(splits.forget_classes))
            correct = logits.argmax(1) == y
            out["test_remaining_acc"] = float(correct[~forgotten].float().mean()) if (~forgotten).any() else float("nan")
            out["test_forgotten_acc"] = float(correct[forgotten].float().mean()) if forgotten.any() else float("nan")
    return out


# ---------------------------------------------------------------- apply

def default_output_path(checkpoint: Path, adapter: bool) -> Path:
    stem = checkpoint.name[: -len(".safetensors")] if checkpoint.name.endswith(".safetensors") else checkpoint.stem
    return checkpoint.with_name(f"{stem}.unlearned" + ("" if adapter else ".safetensors"))


@dataclass
class ApplyResult:
    output: Path
    mode: str
    method: str
    params: dict[str, Any]
    wall_time_s: float
    total_time_s: float
    before: dict[str, float]
    after: dict[str, float]
    output_sha256: str
    info: dict[str, Any]
    warnings: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)  # the provenance fields written with the output
    model: Any = None  # the unlearned nn.Module (for an audit right after)

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
            "scenario": job.splits.scenario,
            "forget_size": len(job.splits.forget_idx),
            "retain_size": len(job.splits.retain_idx),
            "seed": job.seed,
            "device": str(job.device),
            "wall_time_s": round(self.wall_time_s, 4),
            "total_time_s": round(self.total_time_s, 4),
            "before": self.before,
            "after": self.after,
            "info": self.info,
            "warnings": self.warnings,
        }


ADAPTER_WARNING = (
    "adapter-only output: the forgotten data is still in the base weights; the deletion holds only while the "
    "adapter is applied. Merge it (unlearn merge, or output.mode: merged) before deleting the original checkpoint."
)


@dataclass
class ApplyPlan:
    """Everything `apply` will do, checked before any data is loaded or any model trained."""

    method: str
    params: MethodParams
    adapter: bool
    output: Path
    force: bool = False
    gates: list[str] = field(default_factory=list)  # audited right after (apply --audit)
    reference: Optional[Path] = None
    audit: bool = False


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
) -> ApplyPlan:
    """Check method, parameters, output and audit settings: every input error fails here, before any work.

    params: --param overrides, on top of the request's method.params when the request names this method.
    adapter_only: True/False from --adapter-only/--merged; None keeps the request's output.mode.
    """
    name = method or req.method.name
    entry = get_method(name)
    method_params = parse_params(name, method_params_for(req, name, params))
    adapter = adapter_only if adapter_only is not None else req.output.mode == "adapter"
    if adapter and not entry.supports_adapter:
        raise MethodError(f"method {name} changes weights directly, so it has no adapter output; drop --adapter-only (or output.mode: adapter)")
    ckpt = Path(checkpoint)
    out_path = Path(output) if output else (req.resolve(req.output.path) if req.output.path else default_output_path(ckpt, adapter))
    check_output(out_path, "dir" if adapter else "file", force, protect={"input checkpoint": ckpt, "request": req.path})
    plan = ApplyPlan(method=name, params=method_params, adapter=adapter, output=out_path, force=force, audit=audit)
    if audit:
        from .audit.gates import parse_gates

        plan.gates = list(gates) if gates is not None else list(req.audit.gates)
        ref = reference if reference is not None else (req.resolve(req.audit.reference) if req.audit.reference else None)
        plan.reference = Path(ref) if ref is not None else None
        parse_gates(plan.gates, req.forget.scenario, plan.reference is not None)
        if plan.reference is not None and not plan.reference.is_file():
            raise AuditError(f"audit reference {plan.reference} not found; give a retrained checkpoint (unlearn train --exclude-forget) or drop audit.reference")
    return plan


def apply(
    job: Job,
    method: Optional[str] | ApplyPlan = None,
    params: Optional[dict[str, Any]] = None,
    output: Optional[str | Path] = None,
    adapter_only: Optional[bool] = None,
    force: bool = False,
    progress: Optional[Progress] = None,
) -> ApplyResult:
    """Run the request's method on the job's checkpoint and publish the result atomically.

    Give an ApplyPlan (from plan_apply) or the same arguments plan_apply takes.
    """
    if job.original is None or job.checkpoint_path is None:
        raise UnlearnError("apply needs a checkpoint; give the trained model's .safetensors file")
    req = job.request
    plan = method if isinstance(method, ApplyPlan) else plan_apply(req, job.checkpoint_path, method, params, output, adapter_only, force)
    name, method_params, adapter, out_path = plan.method, plan.params, plan.adapter, plan.output
    if out_path.resolve() == job.checkpoint_path:
        raise UnlearnError(f"output {out_path} is the input checkpoint; inputs are never overwritten, choose another --output")

    t0 = time.perf_counter()
    before = utility(job.original, job.splits, job.device, req.data.batch_size)
    ctx = job.context(progress=progress)
    seed_everything(job.seed)
    result, wall = run_method(name, ctx, method_params)
    model = result.model.to(job.device).eval()
    state = _merged_state(model, job)
    bad = non_finite(state)
    if bad:
        raise DivergedError(f"unlearning diverged: {len(bad)} tensor(s) of the result hold NaN/Inf (first: {bad[0][0]}); "
                            f"nothing was written; lower the learning rate or check the method's parameters")
    after = utility(model, job.splits, job.device, req.data.batch_size)

    fields = {
        "format": "unlearn/v1",
        "tool_version": __version__,
        "model_arch": req.model.arch,
        "model_kwargs": req.model.kwargs,
        "request_id": req.id,
        "request_sha256": req.sha256,
        "parent_sha256": job.checkpoint_sha256,
        "method": name,
        "params": method_params.model_dump(mode="json"),
        "scenario": job.splits.scenario,
        "forget_size": len(job.splits.forget_idx),
        "seed": job.seed,
        "wall_time_s": round(wall, 4),
        "device": str(job.device),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created_utc": created_utc(),
    }
    fields = file_fields(fields)
    warnings: list[str] = list(ctx.log)
    protect = {"input checkpoint": job.checkpoint_path, "request": req.path}
    if adapter:
        write_directory(out_path, lambda d: _save_adapter(result.adapter_model, d, metadata_for(fields)), force=plan.force, protect=protect)
        digest = sha256_file(out_path / "adapter_model.safetensors")
        warnings.insert(0, ADAPTER_WARNING)
    else:
        digest = write_safetensors(out_path, state, metadata_for(fields), force=plan.force, protect=protect)
    return ApplyResult(
        output=out_path,
        mode="adapter" if adapter else "merged",
        method=name,
        params=method_params.model_dump(mode="json"),
        wall_time_s=wall,
        total_time_s=time.perf_counter() - t0,
        before=before,
        after=after,
        output_sha256=digest,
        info=result.info,
        warnings=warnings,
        metadata=fields,
        model=model,
    )


def _merged_state(model: nn.Module, job: Job) -> dict[str, torch.Tensor]:
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


def _save_adapter(peft_model: Any, folder: Path, metadata: dict[str, str]) -> None:
    """PEFT layout (adapter_config.json, adapter_model.safetensors) plus our provenance metadata."""
    import json

    from safetensors.torch import load_file

    from .checkpoint import save_canonical

    if peft_model is None:
        raise UnlearnError("internal: the method produced no adapter; please report this")
    peft_model.save_pretrained(str(folder))
    weights = folder / "adapter_model.safetensors"
    save_canonical(load_file(str(weights)), weights, metadata)
    (folder / "unlearn_metadata.json").write_text(json.dumps({k: v for k, v in metadata.items()}, indent=2, sort_keys=True))


# ---------------------------------------------------------------- train

def train_checkpoint(
    job: Job,
    output: str | Path,
    config: TrainConfig,
    exclude_forget: bool = False,
    force: bool = False,
    progress: Optional[Progress] = None,
) -> dict[str, Any]:
    """Train the request's architecture from scratch (optionally without the forget set) and write it atomically."""
    from .training import fit

    output = Path(output)
    check_output(output, "file", force, protect={"request": job.request.path})
    data = job.splits.retain if exclude_forget else job.splits.train
    seed_everything(job.seed)
    model = job.make_model()
    start = time.perf_counter()
    fit(model, data, config, job.device, torch.Generator().manual_seed(job.seed), progress, task="train")
    wall = time.perf_counter() - start
    bad = non_finite(model.state_dict())
    if bad:
        raise DivergedError(f"training diverged: {len(bad)} tensor(s) hold NaN/Inf (first: {bad[0][0]}); nothing was written; lower --lr")
    figures = utility(model, job.splits, job.device, job.request.data.batch_size)
    fields = {
        "format": "unlearn/v1",
        "tool_version": __version__,
        "model_arch": job.request.model.arch,
        "model_kwargs": job.request.model.kwargs,
        "request_id": job.request.id,
        "request_sha256": job.request.sha256,
        "trained_on": "retain" if exclude_forget else "train",
        "train_config": config.model_dump(),
        "seed": job.seed,
        "wall_time_s": round(wall, 4),
        "device": str(job.device),
        "torch_version": torch.__version__,
        "created_utc": created_utc(),
    }
    digest = write_safetensors(output, model.state_dict(), metadata_for(file_fields(fields)), force=force, protect={"request": job.request.path})
    return {"output": str(output), "sha256": digest, "train_size": len(data), "wall_time_s": wall,
            "exclude_forget": exclude_forget, **figures}
