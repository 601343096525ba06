"""The commands on exact artifacts, read top to bottom:

    train_exact_request(...)     `unlearn train --exact s3t|sisa`: assign, train every stage, publish the folder
    apply_exact_request(...)     `unlearn apply ART -r R`: deactivate every stage that saw a forgotten sample (no
                                 gradient step), or retrain those stages (--retrain-affected); publish a new folder
    validate_exact_request(...)  `unlearn validate -r R ART`: every check and what the deletion would deactivate
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
import torch

from .. import __version__
from ..artifacts import CheckpointArtifact, EnsembleArtifact, is_checkpoint
from ..checkpoint import StagedOutput, check_output, load_into, non_finite, protected_inputs, save_canonical, sha256_file, write_directory
from ..errors import CheckpointError, DataError, DivergedError, MethodError, shown
from ..job import Job, Progress, check_seed, prepare
from ..models import CodePolicy
from ..provenance import created_utc, reproducible
from ..request import Request, load_request, method_params_for
from ..method_catalog import check_exact_method
from . import FORMAT, assign, is_exact_folder
from .describe import guarantee_text
from .ensemble import ExhaustedError, load_base, retrain_hint, stage_groups
from .manifest import (
    ASSIGNMENT_FILE,
    BASE_FILE,
    COMPONENTS,
    MANIFEST,
    SCHEMA_VERSION,
    AssignmentEntry,
    BaseEntry,
    DataEntry,
    Deletion,
    DeletionPlan,
    Manifest,
    ModelEntry,
    SequenceEntry,
    ShardEntry,
    Stage,
    dump_manifest,
    plan_deletion,
    read_part,
)
from .params import ExactParams, S3TParams, effective_epochs, parse_exact_params, stage_epochs
from .train import Tensors, s3t_layers, train_sequence

if TYPE_CHECKING:
    from torch import nn

    from ..data import LabelledData
    from ..pipeline import ApplyOutcome

NO_INIT_WARNING = ("no --init: the S3T base is a random initialisation, not a pre-trained backbone (only LoRA adapters and "
                   "the head train); give --init CKPT for a useful model")


# ---------------------------------------------------------------- shared pieces

def fingerprint(data: "LabelledData") -> tuple[str, str]:
    """sha256 of the train split as the tool loads it (inputs when in memory, labels always), and what it covers."""
    h = hashlib.sha256(f"n={len(data)};".encode())
    kind = "labels"
    if data.x is not None:
        h.update(np.ascontiguousarray(data.x.detach().cpu().to(torch.float32).numpy()).tobytes())
        kind = "inputs+labels"
    h.update(np.ascontiguousarray(data.targets.cpu().numpy().astype("<i8")).tobytes())
    return h.hexdigest(), kind


def stage_indices(shard_of: np.ndarray, slice_of: np.ndarray, k: int, order: list[int], excluded: set[int]) -> list[list[int]]:
    """For each stage of a sequence: the train indices of its first i+1 slices, minus excluded samples, in index order."""
    members = np.nonzero(shard_of == k)[0]
    out = []
    for i in range(len(order)):
        chosen = members[np.isin(slice_of[members], order[: i + 1])]
        out.append([int(j) for j in chosen if int(j) not in excluded])
    return out


def excluded_in(stage_slices: list[int], k: int, shard_of: np.ndarray, slice_of: np.ndarray, excluded: set[int]) -> list[int]:
    return sorted(i for i in excluded if int(shard_of[i]) == k and int(slice_of[i]) in stage_slices)


def component_name(k: int, b: int, i: int, generation: int) -> str:
    return f"{COMPONENTS}/k{k}_b{b}_s{i}_g{generation}.safetensors"


def _component_metadata(m: Manifest, k: int, b: int, st: Stage) -> dict[str, str]:
    return {"unlearn.format": FORMAT, "unlearn.method": m.method, "unlearn.shard": str(k), "unlearn.sequence": str(b),
            "unlearn.stage": str(st.stage), "unlearn.generation": str(st.generation), "unlearn.slices": str(st.slices)}


def _publish(output: Path, m: Manifest, new_components: dict[tuple[int, int, int], Tensors], copy_from: Optional[Path],
             base_write: Any, assignment_write: Any, force: bool, protect: dict[str, Any]) -> str:
    """Write the folder atomically: base, assignment, the active components (new ones saved, kept ones copied byte for
    byte from `copy_from`), then the manifest with every sha256. Returns the manifest's sha256. A new component
    holding NaN/Inf (a stage whose training diverged) is refused first: nothing is written."""
    for (k, b, stage), tensors in sorted(new_components.items()):
        bad = non_finite(tensors)
        if bad:
            from ..methods.common import lower_lr_hint

            raise DivergedError(f"{m.method} training diverged: shard {k} sequence {b} stage {stage} holds NaN/Inf ({bad[0][0]}); "
                                f"nothing was written; {lower_lr_hint(m.params.get('lr'))}")

    def fill(tmp: Path) -> None:
        base_write(tmp / BASE_FILE)
        assignment_write(tmp / ASSIGNMENT_FILE)
        (tmp / COMPONENTS).mkdir()
        for k, b, st in m.active_stages():
            dst = tmp / (st.file or "")
            if (k, b, st.stage) in new_components:
                save_canonical(new_components[(k, b, st.stage)], dst, _component_metadata(m, k, b, st))
                st.sha256 = sha256_file(dst)
            else:
                assert copy_from is not None
                shutil.copyfile(copy_from / (st.file or ""), dst)
                if sha256_file(dst) != st.sha256:  # the input changed under us: never publish a mismatch
                    raise CheckpointError(f"exact artifact {copy_from}: {st.file} changed while it was being copied; nothing was written, rerun")
        (tmp / MANIFEST).write_text(dump_manifest(m))

    write_directory(output, fill, force=force, protect=protect)
    return sha256_file(output / MANIFEST)


def overflow_refusal(method: str, lr: object) -> Callable[[str], DivergedError]:
    """The error for an artifact whose outputs are NaN/Inf on `where` although every weight is finite (a stage trained
    at too high a rate): the artifact could not serve, so it is not written."""
    from ..methods.common import lower_lr_hint

    return lambda where: DivergedError(f"{method} training diverged: the artifact's outputs are NaN/Inf on {where}, its weights finite; "
                                       f"nothing was written; {lower_lr_hint(lr)}")


def _volatile(figures: dict[str, Any]) -> dict[str, Any]:
    """Run-dependent figures (wall times, device) stay out of files when SOURCE_DATE_EPOCH asks for reproducible bytes."""
    if not reproducible():
        return figures
    return {k: v for k, v in figures.items() if not (k.endswith("_s") or k == "device")}


def check_compatible(artifact: EnsembleArtifact, job: Job) -> None:
    """The request must name the architecture and the train data the artifact was trained on."""
    m, req = artifact.manifest, job.request
    if m.model.arch != req.model.arch or m.model.kwargs != req.model.kwargs:
        raise CheckpointError(f"exact artifact {artifact.path} was trained with model {shown(m.model.arch, 120)} {shown(m.model.kwargs, 120)}, the "
                              f"request names {req.model.arch} {shown(req.model.kwargs, 120)}; set model.arch/kwargs to the architecture it was "
                              "trained with")
    if m.model.num_classes != job.num_classes:
        raise CheckpointError(f"exact artifact {artifact.path} has {m.model.num_classes} outputs, the request's model {job.num_classes}; fix model.kwargs")
    digest, kind = fingerprint(job.splits.train)
    if len(job.splits.train) != m.data.train_size or (kind == m.data.fingerprint_of and digest != m.data.fingerprint):
        raise DataError(f"the request's train split ({len(job.splits.train)} samples, sha256 {digest[:12]}...) is not the data exact artifact "
                        f"{artifact.path} was trained on ({m.data.train_size} samples, sha256 {m.data.fingerprint[:12]}...); "
                        "give the data section it was trained with (indices address that split)")


def full_retrain_cost(m: Manifest, shard_of: np.ndarray, slice_of: np.ndarray, excluded: set[int]) -> int:
    """Sample-epochs of training the whole artifact again from scratch without `excluded` (same stages, epochs)."""
    params = parse_exact_params(m.method, m.params, prefix="manifest params")
    total = 0
    for sh in m.shards:
        epochs = stage_epochs(params, len(sh.slice_sizes))
        for seq in sh.sequences:
            for i, idx in enumerate(stage_indices(shard_of, slice_of, sh.shard, seq.order, excluded)):
                total += len(idx) * effective_epochs(params, epochs[i], len(idx))
    return total


# ---------------------------------------------------------------- train

def train_exact_request(
    request: "str | Path | Request",
    output: str | Path,
    method: str,
    params: Optional[dict[str, Any]] = None,
    init: Optional[str | Path] = None,
    exclude_forget: bool = False,
    force: bool = False,
    device: str = "auto",
    seed: Optional[int] = None,
    code: CodePolicy = CodePolicy(),
    progress: Optional[Progress] = None,
) -> dict[str, Any]:
    """`unlearn train --exact`: method, parameters, request, seed, output and --init checked first; then data and training."""
    method = check_exact_method(method)
    req = load_request(request)
    check_task(req)
    p = parse_exact_params(method, method_params_for(req, method, params))
    if seed is not None:
        check_seed(seed)
    output = Path(output)
    init_path = Path(init) if init is not None else None
    protect = {**protected_inputs(req), "request": req.path, "init checkpoint": init_path}
    check_output(output, "dir", force, protect=protect)
    if init_path is not None:
        CheckpointArtifact(init_path).tensors  # noqa: B018 - a missing or unreadable --init fails before any work
    job = prepare(req, None, device=device, seed=seed, code=code)
    return train_artifact(job, method, p, output, init_path, exclude_forget, force, progress)


def train_artifact(job: Job, method: str, p: ExactParams, output: Path, init: Optional[Path] = None, exclude_forget: bool = False,
                   force: bool = False, progress: Optional[Progress] = None) -> dict[str, Any]:
    """Assign, train every stage of every sequence of every shard, and publish the artifact folder."""
    from ..pipeline import utility

    started = time.perf_counter()
    warnings: list[str] = []
    if method == "s3t" and init is None:
        warnings.append(NO_INIT_WARNING)
    train = job.splits.train
    n = len(train)
    base = job.make_model()
    init_sha = None
    if init is not None:
        init_art = CheckpointArtifact(init)
        base = load_into(base, init_art.tensors, job.request.model.arch, init)
        init_sha = init_art.sha256
    base.eval()
    weights_sha = None
    weights = None
    if getattr(p, "deletion_weights", None) is not None:  # S3T (with BMS) and SISA
        wpath = Path(p.deletion_weights)
        weights = assign.read_weights(wpath, n)
        weights_sha = sha256_file(wpath)
    by_weight = getattr(p, "assignment", None) == "by_weight"
    shard_of, slice_of = assign.assign(n, p.shards, p.slices, job.seed, weights if by_weight else None)
    rule = assign.WEIGHTED_ASSIGNMENT_RULE if by_weight else assign.ASSIGNMENT_RULE
    if isinstance(p, S3TParams):
        orders = assign.shard_orders(p.order, p.slices, p.sequences, weights, shard_of, slice_of, p.shards)
        head, groups = s3t_layers(base, p.slices)
    else:
        orders = [[list(range(p.slices))] for _ in range(p.shards)]
        head, groups = None, None
    excluded = {int(i) for i in job.splits.forget_idx} if exclude_forget else set()
    kept = np.ones(n, dtype=bool)
    kept[sorted(excluded)] = False
    empty = [k for k in range(p.shards) if not np.any((shard_of == k) & kept)]  # not all: the whole split is refused before
    if empty:  # a shard trained on nothing would serve its initialisation: it serves nothing (Manifest.served)
        warnings.append(f"--exclude-forget left shard(s) {', '.join(map(str, empty))} without a train sample; they serve nothing "
                        f"({p.shards - len(empty)} of {p.shards} shards serve)")
    stage_params = p.model_copy()
    total_stages = sum(len(o) for o in orders) * p.slices
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress:
            progress(f"train {method}", done[0], total_stages)

    shards, components = [], {}
    sample_epochs = steps = 0
    for k in range(p.shards):
        seqs = []
        for b, order in enumerate(orders[k]):
            idx = stage_indices(shard_of, slice_of, k, order, excluded)
            results = train_sequence(method, stage_params, base, job.make_model, train, idx, job.seed, k, b, 0, [], job.device,
                                     head, groups, tick)
            stages = []
            for i, res in enumerate(results):
                st = Stage(stage=i, slice=order[i], slices=order[: i + 1], layers=(groups[i] + [head]) if groups and head else ["*"],
                           epochs=res.epochs, samples=res.samples, excluded=excluded_in(order[: i + 1], k, shard_of, slice_of, excluded),
                           generation=0, file=component_name(k, b, i, 0), sha256="0" * 64)
                stages.append(st)
                components[(k, b, i)] = res.tensors
                sample_epochs += res.sample_epochs
                steps += res.steps
            seqs.append(SequenceEntry(sequence=b, order=order, prefix=len(order), stages=stages))
        sizes = [int(np.sum((shard_of == k) & (slice_of == s))) for s in range(p.slices)]
        shards.append(ShardEntry(shard=k, size=int(np.sum(shard_of == k)), slice_sizes=sizes, sequences=seqs))
    wall = time.perf_counter() - started
    digest, kind = fingerprint(train)
    req = job.request
    tmp_assignment = {"shard": torch.from_numpy(shard_of.copy()), "slice": torch.from_numpy(slice_of.copy())}
    m = Manifest(
        format=FORMAT, schema_version=SCHEMA_VERSION, method=method, params=p.model_dump(mode="json"), task=job.task.name,
        seed=job.seed, tool_version=__version__, created_utc=created_utc(), request_id=req.id, request_sha256=req.sha256,
        model=ModelEntry(arch=req.model.arch, kwargs=dict(req.model.kwargs), num_classes=job.num_classes, head=head, stage_layers=groups or []),
        data=DataEntry(train_size=n, fingerprint=digest, fingerprint_of=kind, source=req.data.train.model_dump(mode="json")),
        base=BaseEntry(file=BASE_FILE, sha256="0" * 64, source="init" if init is not None else "random",
                       init_path=str(init.resolve()) if init is not None else None, init_sha256=init_sha),
        assignment=AssignmentEntry(file=ASSIGNMENT_FILE, sha256="0" * 64, digest=assign.digest(shard_of, slice_of), rule=rule,
                                   order=p.order if isinstance(p, S3TParams) else "single", deletion_weights_sha256=weights_sha),
        aggregation=p.aggregation,
        training=_volatile({"stages": len(components), "sample_epochs": sample_epochs, "steps": steps, "normal_run_sample_epochs": n * 40,
                            "excluded": len(excluded), "wall_time_s": round(wall, 4), "device": str(job.device)}),
        shards=shards,
    )

    def write_base(path: Path) -> None:
        if init is not None:
            shutil.copyfile(init, path)  # byte for byte: base.sha256 == the --init file's sha256
        else:
            save_canonical({k: v.detach().cpu().contiguous() for k, v in base.state_dict().items()}, path,
                           {"unlearn.format": FORMAT, "unlearn.base": "random initialisation", "unlearn.seed": str(job.seed)})
        m.base.sha256 = sha256_file(path)

    def write_assignment(path: Path) -> None:
        save_canonical(tmp_assignment, path, {"unlearn.format": FORMAT, "unlearn.rule": rule})
        m.assignment.sha256 = sha256_file(path)

    protect = {**protected_inputs(req), "request": req.path, "init checkpoint": init}
    with StagedOutput(output, force, protect) as stage:  # measured before it is published: outputs that overflow refuse it
        manifest_sha = _publish(stage.staged, m, components, None, write_base, write_assignment, False, protect)
        model = EnsembleArtifact(stage.staged).load(job.load_context())
        figures = utility(model, job, refuse=overflow_refusal(method, p.lr))
        stage.publish()
    return {"output": str(output), "kind": "exact", "method": method, "params": m.params, "sha256": manifest_sha,
            "train_size": n - len(excluded), "excluded": len(excluded), "shards": p.shards, "slices": p.slices,
            "sequences": getattr(p, "sequences", 1), "components": len(components), "sample_epochs": sample_epochs,
            "steps": steps, "normal_run_sample_epochs": n * 40, "normal_run_steps": -(-n // 64) * 40, "wall_time_s": wall, "exclude_forget": exclude_forget,
            "budget": m.budget(), "warnings": warnings, **figures}


# ---------------------------------------------------------------- apply (a deletion)

@dataclass
class ExactApplyResult:
    """What a deletion produced; the fields the CLI prints for any apply, plus the exact figures."""

    output: Path
    method: str
    params: dict[str, Any]
    wall_time_s: float  # deletion latency: plan, deactivate (or retrain), publish
    total_time_s: float
    before: dict[str, Optional[float]]
    after: dict[str, Optional[float]]
    output_sha256: str
    info: dict[str, Any]
    warnings: list[str]
    notes: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    model: Optional["nn.Module"] = None
    mode: str = "exact"

    def as_dict(self, job: Job) -> dict[str, Any]:
        return {"request_id": job.request.id, "request": str(job.request.path) if job.request.path else None,
                "request_sha256": job.request.sha256, "checkpoint": str(job.checkpoint_path), "checkpoint_sha256": job.checkpoint_sha256,
                "output": str(self.output), "output_mode": self.mode, "output_sha256": self.output_sha256, "method": self.method,
                "params": self.params, "task": job.task.name, "scenario": job.splits.scenario,
                "forget_size": len(job.splits.forget_idx), "retain_size": len(job.splits.retain_idx), "seed": job.seed,
                "device": str(job.device), "wall_time_s": round(self.wall_time_s, 4), "total_time_s": round(self.total_time_s, 4),
                "before": self.before, "after": self.after, "info": self.info, "warnings": self.warnings, "notes": self.notes}


def check_task(req: Request) -> None:
    """Exact stages train as classifiers and the ensemble averages (or votes over) their logits: a regression request is
    an input error naming what can serve it."""
    if req.task != "classification":
        raise MethodError(f"task {req.task}: exact unlearning (s3t, sisa) trains its stages as classifiers (cross-entropy) and ensembles "
                          f"their logits; for a regression model "
                          "use unlearn apply on a checkpoint (retrain is the exact baseline; see unlearn methods)")


def _forbid(flag: str, given: bool, why: str) -> None:
    if given:
        raise MethodError(f"{flag}: {why}")


def plan_exact_output(artifact_path: Path, req: Request, output: Optional[str | Path], force: bool) -> Path:
    from ..pipeline import default_output_path

    out = Path(output) if output else (req.resolve(req.output.path) if req.output.path else default_output_path(artifact_path, adapter=True))
    check_output(out, "dir", force, protect={**protected_inputs(req), "input artifact": artifact_path, "request": req.path})
    return out


def apply_exact_request(
    request: "str | Path | Request",
    artifact_path: str | Path,
    output: Optional[str | Path] = None,
    retrain_affected: bool = False,
    force: bool = False,
    device: str = "auto",
    seed: Optional[int] = None,
    code: CodePolicy = CodePolicy(),
    audit: bool = False,
    report_dir: Optional[str | Path] = None,
    progress: Optional[Progress] = None,
    method: Optional[str] = None,
    params: Optional[dict[str, Any]] = None,
    adapter_only: Optional[bool] = None,
    gates: Optional[list[str]] = None,
    keep_on_fail: bool = True,
    ledger: Optional[str | Path] = None,
    ignore_lineage: bool = False,
    record_ids: bool = False,
    allow_missing: bool = False,
) -> "ApplyOutcome":
    """`unlearn apply` on an exact artifact: every check first, then the deletion (no gradient step unless
    --retrain-affected), then the new artifact folder, published atomically.

    The artifact's lineage is its own deletion log (manifest.json), so --ledger, --ignore-lineage and --record-ids
    (a checkpoint's JSON-lines ledger) do not apply; allow_missing skips forget.ids not in the data, as for a checkpoint.
    """
    from ..pipeline import ApplyOutcome, utility

    for flag, given in (("--ledger", ledger is not None), ("--ignore-lineage", ignore_lineage), ("--record-ids", record_ids)):
        _forbid(flag, given, "an exact artifact keeps its lineage in its own deletion log (manifest.json: positions and the "
                             "request's sha256); drop " + flag)
    req = load_request(request)
    check_task(req)
    artifact_path = Path(artifact_path)
    artifact = EnsembleArtifact(artifact_path)
    m = artifact.manifest
    if method is not None and method != m.method:
        raise MethodError(f"--method {method}: {artifact_path} is an exact {m.method} artifact; it is unlearned by deactivating the "
                          f"components that saw the data (drop --method), or apply {method} to a checkpoint instead")
    _forbid("--param", bool(params), "an exact deletion has no parameters (the artifact's own are replayed); drop --param")
    _forbid("--adapter-only", bool(adapter_only), "an exact artifact's output is an artifact folder; drop --adapter-only")
    if seed is not None and check_seed(seed) != m.seed:
        raise MethodError(f"--seed {seed}: an exact deletion replays the artifact's seed {m.seed} (a retrained stage must equal a retrain "
                          "from scratch); drop --seed")
    out = plan_exact_output(artifact_path, req, output, force)
    exprs: list[str] = []
    reference = None
    if audit:
        from ..audit.report import check_audit_report_dir

        check_audit_report_dir(out, report_dir)
        from ..audit.gates import parse_gates

        exprs = list(gates) if gates is not None else list(req.audit.gates)
        reference = req.audit_reference()
        parse_gates(exprs, req.forget.scenario, reference is not None)
        if reference is not None and not is_checkpoint(reference):  # a file or a save_pretrained folder, as for a checkpoint
            from ..errors import AuditError

            what = "is an exact artifact, not a checkpoint" if is_exact_folder(reference) else "not found"
            raise AuditError(f"audit reference {reference} {what}; give a retrained checkpoint (unlearn train --exclude-forget) or drop audit.reference")
    refuse_exhausted(m, artifact_path)

    job = prepare(req, None, device=device, seed=m.seed, code=code, allow_missing=allow_missing)
    check_compatible(artifact, job)
    shard_of, slice_of = artifact.assignment
    forget = [int(i) for i in job.splits.forget_idx]
    plan = plan_deletion(m, shard_of, slice_of, forget, strict=job.splits.scenario == "sample", ids=job.splits.train.ids)
    new = m.model_copy(deep=True)
    did = len(m.deletions) + 1
    apply_plan(new, plan, did)
    if not new.served() and not retrain_affected:
        raise ExhaustedError(f"deleting these {len(plan.indices)} sample(s) would deactivate every remaining component of {artifact_path} "
                             f"(the deletion budget is exhausted); nothing was written; {retrain_hint(m)}")

    t_total = time.perf_counter()
    original = artifact.load(job.load_context())
    job.original, job.artifact = original, artifact  # type: ignore[assignment]
    before = utility(original, job)
    reference_model = CheckpointArtifact(reference).load(job.load_context()) if reference is not None else None
    if reference_model is not None and audit:
        from ..pipeline import check_reference_outputs

        check_reference_outputs(reference_model, job, reference)

    t0 = time.perf_counter()
    new_components: dict[tuple[int, int, int], Tensors] = {}
    retrain_figures: dict[str, Any] = {}
    excluded_all = m.deleted() | set(plan.indices)
    if retrain_affected:
        new_components, retrain_figures = _retrain_truncated(new, artifact, job, shard_of, slice_of, excluded_all, did, progress)
        if not new.served():  # every shard's data is deleted: what was "retrained" saw no sample (a random or base model)
            raise ExhaustedError(f"after this deletion no shard of {artifact_path} holds a train sample ({len(excluded_all)} of "
                                 f"{m.data.train_size} deleted in all), so nothing can serve; nothing was written; train a new model "
                                 "on the data that is left")
    deletion = Deletion(id=did, request_id=req.id, request_sha256=req.sha256, scenario=job.splits.scenario,
                        classes=list(job.splits.forget_classes), indices=plan.indices, deactivated=[list(t) for t in plan.deactivated],
                        retrained=[list(t) for t in sorted(new_components)], parent_manifest_sha256=artifact.sha256,
                        created_utc=created_utc(), figures={})
    new.deletions.append(deletion)
    def copier(rel: str, want: str) -> Any:
        def copy(dst: Path) -> None:
            shutil.copyfile(artifact_path / rel, dst)
            if sha256_file(dst) != want:  # the input changed under us: never publish a mismatch
                raise CheckpointError(f"exact artifact {artifact_path}: {rel} changed while it was being copied; nothing was written, rerun")
        return copy

    copy_base, copy_assignment = copier(m.base.file, m.base.sha256), copier(m.assignment.file, m.assignment.sha256)
    latency_before_write = time.perf_counter() - t0
    deletion.figures = _volatile({"plan_and_deactivate_s": round(latency_before_write, 6), **retrain_figures})
    protect = {**protected_inputs(req), "input artifact": artifact_path, "request": req.path}
    # written beside its destination and published at once; with --audit --no-keep-on-fail only once the verdict is in,
    # so that a failing audit leaves an earlier output folder (--force) as it was
    verdict_first = audit and not keep_on_fail
    with StagedOutput(out, force, protect) as stage:
        digest = _publish(stage.staged, new, new_components, artifact_path, copy_base, copy_assignment, False, protect)
        if new_components:  # retrained stages whose weights are finite can still overflow: never published
            from ..pipeline import finite_predictions, summary_sets

            finite_predictions(EnsembleArtifact(stage.staged).load(job.load_context()), job, summary_sets(job),
                               overflow_refusal(m.method, m.params.get("lr")))
        if not verdict_first:
            stage.publish()
        latency = time.perf_counter() - t0

        result_artifact = EnsembleArtifact(out if stage.published else stage.staged)
        model = result_artifact.load(job.load_context())
        after = utility(model, job)
        total_components = sum(len(seq.stages) for sh in m.shards for seq in sh.sequences)
        budget_before, budget_after = m.budget(), new.budget()
        info = {"deletion_id": did, "deleted_samples": len(plan.indices), "deletion_latency_s": round(latency, 6),
                "deactivated": [list(t) for t in plan.deactivated], "deactivated_count": len(plan.deactivated),
                "retrained": [list(t) for t in sorted(new_components)], "components": total_components,
                "active_components_before": budget_before["active_components"], "active_components_after": budget_after["active_components"],
                "shards_serving_before": len(m.served()), "shards_serving_after": len(new.served()),
                "served_after": {str(k): {"sequence": b, "prefix": p} for k, (b, p) in sorted(new.served().items())},
                "budget_before": budget_before, "budget_after": budget_after, "gradient_steps": bool(new_components),
                **({"retrain": retrain_figures} if retrain_affected else {})}
        warnings: list[str] = []
        if job.splits.scenario == "class":
            warnings.append(f"class deletion: the class's {len(plan.indices)} samples sit in many slices, so it deactivated {len(plan.deactivated)} "
                            f"of {budget_before['active_components']} active components ({len(new.served())} of {len(m.served())} shards still serve)"
                            + ("; the truncated stages were retrained" if retrain_affected else ""))
        notes = [f"exact deletion {did}: {len(plan.indices)} sample(s) deleted in {latency * 1000:.1f} ms, "
                 + (f"{len(new_components)} stage(s) retrained on the remaining data" if retrain_affected else "no gradient step"),
                 f"deactivated {len(plan.deactivated)} of {total_components} components; active {budget_before['active_components']} -> "
                 f"{budget_after['active_components']}; shards serving {len(m.served())} -> {len(new.served())} of {len(m.shards)}",
                 f"deletion budget: {budget_after['deletions_left']} more worst-case single-sample deletions (was {budget_before['deletions_left']})"]
        if retrain_affected:
            notes.append(f"retraining cost: {retrain_figures['sample_epochs']:,} sample-epochs, {100 * retrain_figures['fraction_of_full_retrain']:.1f}% "
                         f"of a full retrain of the artifact ({retrain_figures['full_retrain_sample_epochs']:,}), {retrain_figures['wall_time_s']:.2f}s")
        notes.append(guarantee_text(new))
        result = ExactApplyResult(output=out, method=m.method, params=m.params, wall_time_s=latency, total_time_s=time.perf_counter() - t_total,
                                  before=before, after=after, output_sha256=digest, info=info, warnings=warnings, notes=notes,
                                  metadata=result_artifact.fields, model=model)
        outcome = ApplyOutcome(job, result)  # type: ignore[arg-type]
        if audit:
            from ..audit import audit_fresh_model

            ref = (reference_model, CheckpointArtifact(reference).info()) if reference is not None and reference_model is not None else None
            from ..pipeline import audit_then_publish

            audited = {**result_artifact.info(), "path": str(out.parent.resolve() / out.name)}  # its published path, also while staged
            audit_then_publish(outcome, lambda: audit_fresh_model(job, model, audited, report_dir, exprs, ref), verdict_first,
                               stage.publish, out)
    return outcome


def refuse_exhausted(m: Manifest, artifact_path: str | Path) -> None:
    """An artifact that serves nothing takes no further deletion (nor --retrain-affected: nothing to replay on it)."""
    if not m.served():
        raise ExhaustedError(f"exact artifact {artifact_path}: every component was deactivated by earlier deletions, it cannot serve; "
                             f"{retrain_hint(m, exhausted=True)}")


def apply_plan(m: Manifest, plan: DeletionPlan, did: int) -> None:
    for k, b, i in plan.deactivated:
        st = m.shards[k].sequences[b].stages[i]
        st.status, st.file, st.deactivated_by = "deactivated", None, did
    for (k, b), p in plan.prefixes.items():
        m.shards[k].sequences[b].prefix = p


def _retrain_truncated(m: Manifest, artifact: EnsembleArtifact, job: Job, shard_of: np.ndarray, slice_of: np.ndarray,
                       excluded: set[int], did: int, progress: Optional[Progress]) -> tuple[dict[tuple[int, int, int], Tensors], dict[str, Any]]:
    """SISA's deletion: every truncated sequence is trained again from its surviving prefix on the remaining data,
    with the same seeds, so each retrained stage equals what training from scratch without the deleted samples gives."""
    params = parse_exact_params(m.method, m.params, prefix="manifest params")
    base = load_base(artifact, job.make_model, job.request.model.arch)
    head, groups = stage_groups(m, base, str(artifact.path))
    todo = [(sh, seq) for sh in m.shards for seq in sh.sequences if seq.prefix < len(seq.stages)]
    total = sum(len(seq.stages) - seq.prefix for _, seq in todo)
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress:
            progress("retrain affected stages", done[0], total)

    start = time.perf_counter()
    new: dict[tuple[int, int, int], Tensors] = {}
    sample_epochs = steps = 0
    for sh, seq in todo:
        k, b, p = sh.shard, seq.sequence, seq.prefix
        earlier = [read_part(artifact.path, st.file or "") for st in seq.stages[:p]]
        idx = stage_indices(shard_of, slice_of, k, seq.order, excluded)
        results = train_sequence(m.method, params, base, job.make_model, job.splits.train, idx, m.seed, k, b, p, earlier,
                                 job.device, head, groups, tick)
        for i, res in zip(range(p, len(seq.stages)), results):
            st = seq.stages[i]
            st.status, st.deactivated_by, st.generation = "active", None, did
            st.file = component_name(k, b, i, did)
            st.samples, st.epochs = res.samples, res.epochs
            st.excluded = excluded_in(st.slices, k, shard_of, slice_of, excluded)
            new[(k, b, i)] = res.tensors
            sample_epochs += res.sample_epochs
            steps += res.steps
        seq.prefix = len(seq.stages)
    wall = time.perf_counter() - start
    full = full_retrain_cost(m, shard_of, slice_of, excluded)
    return new, {"stages": len(new), "sample_epochs": sample_epochs, "steps": steps, "full_retrain_sample_epochs": full,
                 "fraction_of_full_retrain": round(sample_epochs / full, 6) if full else 0.0, "wall_time_s": round(wall, 4)}


# ---------------------------------------------------------------- validate, inspect, the guarantee

def validate_exact_request(request: "str | Path | Request", artifact_path: str | Path, code: CodePolicy = CodePolicy(),
                           allow_missing: bool = False) -> dict[str, Any]:
    """`unlearn validate -r R ART`: the artifact's integrity, the request against it, and what the deletion would do."""
    from ..audit.gates import check_request_gates
    from ..job import describe_job

    req = load_request(request)
    check_task(req)
    gap_note = check_request_gates(req)  # what apply --audit on the artifact refuses, refused here too
    artifact = EnsembleArtifact(artifact_path)
    m = artifact.manifest
    refuse_exhausted(m, artifact_path)
    job = prepare(req, None, device="cpu", seed=m.seed, code=code, allow_missing=allow_missing)
    check_compatible(artifact, job)
    plan = plan_deletion(m, *artifact.assignment, [int(i) for i in job.splits.forget_idx], strict=job.splits.scenario == "sample",
                         ids=job.splits.train.ids)
    after = m.model_copy(deep=True)
    apply_plan(after, plan, len(m.deletions) + 1)
    info = {"ok": True, **describe_job(job), "method": f"{m.method} (exact deletion)", "checkpoint": str(artifact_path),
            "checkpoint_matches": m.model.arch, "missing_ids": list(job.splits.missing_ids),
            "exact": {"would_delete": len(plan.indices), "would_deactivate": len(plan.deactivated),
                      "active_components": len(m.active_stages()), "shards_serving_after": len(after.served()),
                      "exhausts_budget": not after.served(), "budget_after": after.budget()}}
    if job.notes or gap_note:
        info["notes"] = job.notes + ([gap_note] if gap_note else [])
    e = info["exact"]
    info["exact_note"] = (f"exact artifact: the deletion would deactivate {e['would_deactivate']} of {e['active_components']} active components, "
                          f"{e['shards_serving_after']} of {len(m.shards)} shards would still serve"
                          + ("; it exhausts the budget: apply needs --retrain-affected" if e["exhausts_budget"] else ""))
    return info


def exact_train_params(options: dict[str, Any]) -> dict[str, Any]:
    """`unlearn train` options for an exact method: --epochs/--lr/--optimizer/--batch-size and --param k=v are its parameters."""
    if options.get("regularizer"):
        raise MethodError("--regularizer: exact training takes no regularizer; drop --regularizer")
    params = {k: options[k] for k in ("epochs", "lr", "optimizer", "batch_size") if options.get(k) is not None}
    params.update(options.get("regularizer_params") or {})
    return params
