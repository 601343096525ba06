"""A Job: a validated request bound to its task, data, architecture, original model, device and seed.

Everything above this module (methods, the audit, bench, the pipeline) works on a `Job`, or on
the `UnlearnContext` a job gives a method. Read top to bottom:

    resolve_device / check_seed / seed_everything   inputs checked, one seeding helper
    UnlearnContext                                  what a method sees of a job
    Job                                             request + task + splits + model factory + original
    prepare(request, checkpoint, ...)               build a Job, in the order that fails fastest
"""

from __future__ import annotations

import copy
import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from .artifacts import CheckpointArtifact, EnsembleArtifact, LoadContext, open_artifact
from .data import LabelledData, Splits, load_split, load_splits, summary_seed
from .exact.describe import exact_not_covered
from .errors import UnlearnError
from .models import CodePolicy, build_model, num_outputs_of
from .request import MAX_SEED, Request, load_request
from .tasks import ForgetInfo, Task, get_task

Progress = Callable[[str, int, int], None]  # (task, done, total)


# ---------------------------------------------------------------- inputs

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


def check_seed(seed: int, flag: str = "--seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UnlearnError(f"{flag} {seed}: a seed is a whole number from 0 to {MAX_SEED}; give one in that range")
    return seed


def seed_everything(seed: int) -> None:
    """The one seeding helper: Python, numpy and torch from one seed (CPU runs repeat exactly; CUDA as cuDNN allows)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ---------------------------------------------------------------- what a method sees

@dataclass
class UnlearnContext:
    """Everything a method may use. The original model is never modified: methods work on copies."""

    original: nn.Module  # trained weights, eval mode, on `device`; treat as read-only (the teacher)
    make_model: Callable[[], nn.Module]  # a fresh, randomly initialised model of the same architecture (on CPU)
    splits: Splits
    num_classes: int  # width of the model's output
    device: torch.device
    seed: int
    batch_size: int = 128
    progress: Optional[Progress] = None
    log: list[str] = field(default_factory=list)  # notes a method wants in the summary (printed as warnings)
    task: Optional[Task] = None
    checkpoint_metadata: dict[str, str] = field(default_factory=dict)  # the original's raw safetensors metadata
    anchor: Optional[nn.Module] = None  # the lineage's first model (apply --anchor), eval mode; read-only; None if not given

    @property
    def forget(self) -> LabelledData:
        return self.splits.forget

    @property
    def retain(self) -> LabelledData:
        return self.splits.retain

    @property
    def scenario(self) -> str:
        return self.splits.scenario

    def test_sample(self, k: int) -> LabelledData:
        """At most k test samples at the positions apply's before/after summary samples with the same size (seeded by
        the run's seed): at the default size, the very samples the summary already ran the original on."""
        return self.splits.test.seeded_sample(k, summary_seed(self.seed, "test"))

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from the run's seed (offset separates independent streams)."""
        return torch.Generator().manual_seed(self.seed * 1000003 + offset)

    def student(self) -> nn.Module:
        """A trainable copy of the original model."""
        student = copy.deepcopy(self.original).to(self.device)
        for q in student.parameters():
            if not q.is_leaf:  # a deep-copied ScriptModule's are not: "can't optimize a non-leaf Tensor" (finetune on it)
                q.detach_().requires_grad_(True)
        return student

    def report(self, task: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(task, done, total)


# ---------------------------------------------------------------- the job

@dataclass
class Job:
    """A validated request bound to its data, architecture and (optionally) the original checkpoint."""

    request: Request
    task: Task
    splits: Splits
    num_classes: int  # width of the model's output (classes, for classification)
    device: torch.device
    seed: int
    code: CodePolicy = CodePolicy()
    original: Optional[nn.Module] = None
    artifact: Optional[CheckpointArtifact] = None  # the original checkpoint (or an EnsembleArtifact: same interface)
    original_metadata: dict[str, str] = field(default_factory=dict)  # for an in-memory original: what its file would hold
    data_sha256: str = ""  # fingerprint of the full train split (before earlier deletions were excluded)
    full_train: Optional[LabelledData] = None  # that split, whose positions the ledger records
    anchor: Optional[nn.Module] = None  # the lineage's original model (apply --anchor), which retained data stay aligned with

    # ---- the original checkpoint
    @property
    def checkpoint_path(self) -> Optional[Path]:
        return self.artifact.path.resolve() if self.artifact is not None else None

    @property
    def checkpoint_sha256(self) -> str:
        return self.artifact.sha256 if self.artifact is not None else ""

    @property
    def checkpoint_metadata(self) -> dict[str, str]:
        return self.artifact.raw_metadata if self.artifact is not None else self.original_metadata

    @property
    def checkpoint_dtypes(self) -> dict[str, torch.dtype]:
        return self.artifact.dtypes if self.artifact is not None else {}

    @property
    def forget_info(self) -> ForgetInfo:
        return ForgetInfo(self.splits.scenario, tuple(self.splits.forget_classes), self.num_classes, self.splits.target_range)

    @property
    def notes(self) -> list[str]:
        """What loading changed about the data (e.g. integer targets read as float for regression), for the summary."""
        return list(self.splits.notes)

    # ---- models
    def make_model(self) -> nn.Module:
        """A fresh model of the request's architecture, initialised from the job's seed (on CPU)."""
        torch.manual_seed(self.seed)
        return build_model(self.request.model, self.request.base_dir, self.code)

    def load_context(self) -> LoadContext:
        """What an artifact needs to load a model of this job's architecture (an adapter: on the original)."""
        return LoadContext(make_model=self.make_model, arch=self.request.model.arch, device=self.device,
                           base=self.original, base_sha256=self.checkpoint_sha256)

    def load(self, path: str | Path) -> tuple[nn.Module, dict[str, str]]:
        """A checkpoint of this job's architecture, loaded strictly, on the job's device in eval mode; and its metadata."""
        artifact = CheckpointArtifact(path)
        return artifact.load(self.load_context()), artifact.raw_metadata

    def load_artifact(self, path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
        """Any model artifact (a checkpoint, an adapter on this job's original) and the provenance a report records."""
        artifact = open_artifact(path)
        info = artifact.info()
        if isinstance(artifact, EnsembleArtifact):  # its guarantee is for its deletion log: is this request in it?
            forget = [int(i) for i in self.splits.forget_idx]
            missing = artifact.not_deleted(forget)
            if missing:
                info["notes"] = [exact_not_covered(artifact.manifest.method, missing, len(forget))]
                info["exact_not_deleted"] = len(missing)
        return artifact.load(self.load_context()), info

    # ---- derived jobs and views
    def for_seed(self, seed: int) -> "Job":
        """The same request, data and checkpoint with another seed (fresh models are initialised from it)."""
        return self if seed == self.seed else dataclasses.replace(self, seed=check_seed(seed))

    def seed_everything(self) -> None:
        seed_everything(self.seed)

    def context(self, original: Optional[nn.Module] = None, progress: Optional[Progress] = None) -> UnlearnContext:
        """What a method sees of this job (its own original model unless another is given)."""
        return UnlearnContext(
            original=original if original is not None else self.original,  # type: ignore[arg-type]
            make_model=self.make_model,
            splits=self.splits,
            num_classes=self.num_classes,
            device=self.device,
            seed=self.seed,
            batch_size=self.request.data.batch_size,
            progress=progress,
            task=self.task,
            checkpoint_metadata=dict(self.checkpoint_metadata),
            anchor=self.anchor,
        )


def prepare(
    request: Request | str | Path,
    checkpoint: Optional[str | Path] = None,
    device: str = "auto",
    seed: Optional[int] = None,
    code: CodePolicy = CodePolicy(),
    excluded_for: Optional[Callable[[LabelledData, str], Optional[torch.Tensor]]] = None,
    allow_missing: bool = False,
    needs_labels: bool = True,
    num_workers: int = 0,
    labels_needed_by: Optional[str] = None,
) -> Job:
    """Validate everything a run needs, in the order that fails fastest, without training.

    excluded_for(train, data_sha256): train positions earlier requests forgot (a lineage), removed before anything else.
    allow_missing: forget.ids not found in the data are reported instead of refused.
    needs_labels: False for a label-free method: the train split may then have no labels (y). With a checkpoint, an
    unlabelled train split is given the original model's predictions as labels for the summary and the audit only
    (the method never reads them; the summary and the report say so).
    num_workers: DataLoader worker processes that read image files (imagefolder, csv) while batches are computed.
    labels_needed_by: who needs the labels, for the refusal (default: the request's method).
    """
    req = request if isinstance(request, Request) else load_request(request)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or not 0 <= num_workers <= 256:
        raise UnlearnError(f"--num-workers {num_workers}: give a whole number from 0 to 256")
    task = get_task(req.task)
    dev = resolve_device(device)
    run_seed = req.seed if seed is None else check_seed(seed)
    seed_everything(run_seed)

    # Data first: its shape tells us how to probe the architecture.
    probe_train = load_split(req.data.train, "train", req.base_dir)
    if not probe_train.labelled and needs_labels:
        from .errors import DataError

        who = labels_needed_by or f"method {req.method.name}"
        raise DataError(f"data.train: {req.data.train.path} has no labels (no y), and {who} needs them; "
                        "add y, or use a label-free method (unlearn methods lists them, e.g. laf)")
    torch.manual_seed(run_seed)
    num_outputs = _num_outputs(req, task, code, probe_train.input_shape())
    from .data import fingerprint

    data_sha = fingerprint(probe_train)
    excluded = excluded_for(probe_train, data_sha) if excluded_for is not None else None
    splits = load_splits(req, num_outputs, task, train=probe_train, excluded=excluded, allow_missing=allow_missing)
    splits.train.num_workers = splits.test.num_workers = num_workers
    job = Job(request=req, task=task, splits=splits, num_classes=num_outputs, device=dev, seed=run_seed, code=code,
              data_sha256=data_sha, full_train=probe_train)
    if checkpoint is not None:
        from .exact import is_exact_folder

        # an exact-unlearning folder (train --exact) loads as its ensemble; anything else as one checkpoint
        artifact = open_artifact(checkpoint) if is_exact_folder(checkpoint) else CheckpointArtifact(checkpoint)
        job.original = artifact.load(job.load_context())
        job.artifact = artifact
        if not probe_train.labelled:
            _pseudo_labels(job)
    return job


def _num_outputs(req: Request, task: Task, code: CodePolicy, input_shape: tuple[int, ...]) -> int:
    """The model's output width on one input; a regressor's shape error names the regression form."""
    from .errors import ModelError

    try:
        return num_outputs_of(build_model(req.model, req.base_dir, code), input_shape, req.model.arch, req.model.kwargs)
    except ModelError as e:
        if task.name == "regression" and "must output (batch, classes)" in str(e):
            raise ModelError(str(e).replace("a classifier must output (batch, classes) logits",
                                            "a regressor must output (batch, k), one column per target: (batch, 1) for one target")) from None
        raise


def _pseudo_labels(job: Job) -> None:
    """An unlabelled train split gets the original model's predictions as labels, for measuring only (label-free methods
    never read them): forget/retain "accuracy" is then agreement with the original."""
    from .evaluate import predict_logits

    for data in {id(d): d for d in (job.splits.train, job.full_train) if d is not None}.values():
        logits, _ = predict_logits(job.original, data, job.device, job.request.data.batch_size)
        data.targets = logits if job.task.name == "regression" else logits.argmax(1)
        if data.x is not None:
            data.dataset = torch.utils.data.TensorDataset(data.x, data.targets)
    job.splits.__dict__.pop("forget", None)  # rebuilt from the labelled train split
    job.splits.__dict__.pop("retain", None)


def describe_job(job: Job) -> dict[str, Any]:
    """The figures `validate` reports for a prepared job."""
    return {
        "request_id": job.request.id,
        "task": job.task.name,
        "scenario": job.splits.scenario,
        "num_classes": job.num_classes,
        "train_size": len(job.splits.train),
        "test_size": len(job.splits.test),
        "forget_size": len(job.splits.forget_idx),
        "retain_size": len(job.splits.retain_idx),
        "method": job.request.method.name,
        "checkpoint": str(job.artifact.path) if job.artifact is not None else None,
    }
