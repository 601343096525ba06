"""The exact artifact's manifest: schema, reading with integrity checks, lineage queries, deletion planning.

An exact artifact is a folder:

    manifest.json              this schema (version 1): method, parameters, base, assignment, per shard and
                               sequence its stages (the slices each saw, the samples excluded, the component file
                               and its sha256, active or deactivated) and the deletion log
    base.safetensors           the frozen starting point (S3T's pre-trained backbone; SISA's initial weights)
    assignment.safetensors     int64 tensors `shard` and `slice`: the part that holds each train sample (by index)
    components/*.safetensors   one file per trained stage that is still active (S3T: the stage's LoRA + head;
                               SISA: the whole model after the stage). A deactivated stage's file is not copied
                               into the next artifact: its weights saw forgotten data.

Torch-free: opening and checking an artifact, and planning a deletion, need only json, hashlib and numpy.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import CheckpointError, DataError
from . import FORMAT, MANIFEST

SCHEMA_VERSION = 1
BASE_FILE = "base.safetensors"
ASSIGNMENT_FILE = "assignment.safetensors"
COMPONENTS = "components"
COMPONENT_NAME = re.compile(r"^components/k\d+_b\d+_s\d+_g\d+\.safetensors$")  # no other path is ever opened
MAX_MANIFEST_BYTES = 256 << 20
SHA = Field(pattern=r"^[0-9a-f]{64}$")
Index = Annotated[int, Field(ge=0)]  # a train position: a negative one would wrap around in numpy and name another sample


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Stage(_Strict):
    stage: int = Field(ge=0)  # position in the sequence
    slice: int = Field(ge=0)  # the slice this stage added
    slices: list[int]  # every slice in this stage's data (the sequence's first stage+1 slices)
    layers: list[str]  # what the stage trained: S3T its LoRA layers (+ the head); SISA ["*"] (every weight)
    epochs: int = Field(ge=1)
    samples: int = Field(ge=0)  # training samples it saw
    excluded: list[Index] = Field(default_factory=list)  # samples of those slices deleted before it was trained
    generation: int = Field(ge=0)  # 0: trained with the artifact; d: retrained by deletion d (--retrain-affected)
    file: Optional[str] = None  # component file while active
    sha256: str = SHA  # of the component file as written when the stage was trained
    status: Literal["active", "deactivated"] = "active"
    deactivated_by: Optional[int] = None  # deletion id


class SequenceEntry(_Strict):
    sequence: int = Field(ge=0)
    order: list[int]  # slice ids in training order
    prefix: int = Field(ge=0)  # active stages: 0..prefix-1
    stages: list[Stage]


def serving_prefix(seq: SequenceEntry, prefix: Optional[int] = None) -> int:
    """The sequence's active prefix (or `prefix`), or 0 when its last stage saw no sample: a stage's data holds every
    earlier stage's slices, so that prefix learnt nothing from the data (an untrained head, or SISA's random
    initialisation, that a deletion of a whole shard with --retrain-affected left "retrained" on 0 samples)."""
    p = seq.prefix if prefix is None else prefix
    return p if p > 0 and seq.stages[p - 1].samples > 0 else 0


class ShardEntry(_Strict):
    shard: int = Field(ge=0)
    size: int = Field(ge=0)
    slice_sizes: list[int]
    sequences: list[SequenceEntry]


class Deletion(_Strict):
    id: int = Field(ge=1)
    request_id: str
    request_sha256: str
    scenario: Literal["class", "sample"]
    classes: list[Index] = Field(default_factory=list)
    indices: list[Index]  # the train samples deleted (positions in the train split)
    deactivated: list[list[int]]  # [shard, sequence, stage]
    retrained: list[list[int]] = Field(default_factory=list)
    parent_manifest_sha256: str = SHA
    created_utc: str
    figures: dict[str, Any] = Field(default_factory=dict)  # latency, retraining cost (left out under SOURCE_DATE_EPOCH)


class BaseEntry(_Strict):
    file: str
    sha256: str = SHA
    source: Literal["init", "random"]  # --init CKPT, or a random initialisation from the seed
    init_path: Optional[str] = None
    init_sha256: Optional[str] = None


class AssignmentEntry(_Strict):
    file: str
    sha256: str = SHA  # of the file
    digest: str = SHA  # of the arrays (assign.digest)
    rule: str
    order: Literal["cyclic", "bms", "single"]
    deletion_weights_sha256: Optional[str] = None


class DataEntry(_Strict):
    train_size: int = Field(ge=1)
    fingerprint: str = SHA
    fingerprint_of: Literal["inputs+labels", "labels"]
    source: dict[str, Any]


class ModelEntry(_Strict):
    arch: str
    kwargs: dict[str, Any]
    num_classes: int = Field(ge=1)
    head: Optional[str] = None  # S3T: the classifier layer trained fully at every stage
    stage_layers: list[list[str]] = Field(default_factory=list)  # S3T: LoRA layers per stage position (top first)


class Manifest(_Strict):
    format: Literal["unlearn-exact/v1"]
    schema_version: Literal[1]
    method: Literal["s3t", "sisa"]
    params: dict[str, Any]
    task: Literal["classification"]  # exact training refuses regression requests (run.check_task)
    seed: int = Field(ge=0, le=2**32 - 1)  # MAX_SEED: a deletion replays it
    tool_version: str
    created_utc: str
    request_id: str
    request_sha256: str
    model: ModelEntry
    data: DataEntry
    base: BaseEntry
    assignment: AssignmentEntry
    aggregation: Literal["mean", "vote", "weighted"]  # weighted: added later; manifests with mean/vote read as before
    training: dict[str, Any] = Field(default_factory=dict)  # cost of the original training (sample-epochs, wall time)
    shards: list[ShardEntry]
    deletions: list[Deletion] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        for k, sh in enumerate(self.shards):
            if sh.shard != k:
                raise ValueError(f"shards.{k}.shard is {sh.shard}, expected {k}")
            r = len(sh.slice_sizes)
            for b, seq in enumerate(sh.sequences):
                where = f"shards.{k}.sequences.{b}"
                if seq.sequence != b or sorted(seq.order) != list(range(r)) or len(seq.stages) != r:
                    raise ValueError(f"{where}: order must be a permutation of the {r} slices with one stage each")
                if not 0 <= seq.prefix <= r:
                    raise ValueError(f"{where}.prefix {seq.prefix} is out of range")
                for i, st in enumerate(seq.stages):
                    if st.stage != i or st.slice != seq.order[i] or st.slices != seq.order[: i + 1]:
                        raise ValueError(f"{where}.stages.{i}: stage, slice and slices must follow the order")
                    active = i < seq.prefix
                    if active != (st.status == "active") or active != (st.file is not None):
                        raise ValueError(f"{where}.stages.{i}: status {st.status} contradicts prefix {seq.prefix}")
                    if st.file is not None and not COMPONENT_NAME.match(st.file):
                        raise ValueError(f"{where}.stages.{i}.file {st.file[:60]!r} is not a component path (components/k<K>_b<B>_s<S>_g<G>.safetensors)")
                    own = f"{COMPONENTS}/k{k}_b{b}_s{i}_g{st.generation}.safetensors"
                    if st.file is not None and st.file != own:  # else one stage could serve another's (deactivated) weights
                        raise ValueError(f"{where}.stages.{i}.file {st.file[:60]!r} is not this stage's component ({own})")
        n = self.data.train_size
        beyond = [f"shards.{k}.sequences.{b}.stages.{st.stage}.excluded" for k, b, st in self.all_stages() if any(i >= n for i in st.excluded)]
        beyond += [f"deletions.{j}.indices" for j, d in enumerate(self.deletions) if any(i >= n for i in d.indices)]
        if beyond:
            raise ValueError(f"{beyond[0]} names a sample beyond the {n} train samples")
        if self.base.file != BASE_FILE or self.assignment.file != ASSIGNMENT_FILE:
            raise ValueError(f"base.file and assignment.file must be {BASE_FILE} and {ASSIGNMENT_FILE}")
        self._log_consistent()
        return self

    def _log_consistent(self) -> None:
        """The deletion log agrees with itself and with the stages: ids 1..n in order, each deletion names samples, its
        deactivated stages exist, and every deactivated stage names a deletion that lists it (a tampered log was
        accepted and copied into the next artifact)."""
        stages = {(sh.shard, seq.sequence, st.stage): st for sh in self.shards for seq in sh.sequences for st in seq.stages}
        listed: dict[int, set[tuple[int, ...]]] = {}
        for j, d in enumerate(self.deletions):
            if d.id != j + 1:
                raise ValueError(f"deletions.{j}.id is {d.id}, expected {j + 1}")
            if not d.indices:
                raise ValueError(f"deletions.{j}.indices is empty; a deletion deletes samples")
            bad = [t for t in d.deactivated if tuple(t) not in stages]
            if bad:
                raise ValueError(f"deletions.{j}.deactivated names {str(bad[0])[:40]}, not a [shard, sequence, stage] of this artifact")
            listed[d.id] = {tuple(t) for t in d.deactivated}
        for key, st in stages.items():
            if st.status == "deactivated" and (st.deactivated_by not in listed or key not in listed[st.deactivated_by]):
                raise ValueError(f"shards.{key[0]}.sequences.{key[1]}.stages.{key[2]}: deactivated_by {st.deactivated_by} names no "
                                 "deletion that deactivated it")
        if self.params.get("aggregation", self.aggregation) != self.aggregation:
            raise ValueError(f"aggregation {self.aggregation!r} contradicts params.aggregation {str(self.params.get('aggregation'))[:20]!r}")

    # ---- derived views
    def deleted(self) -> set[int]:
        return {i for d in self.deletions for i in d.indices}

    def all_stages(self) -> list[tuple[int, int, Stage]]:
        return [(sh.shard, seq.sequence, st) for sh in self.shards for seq in sh.sequences for st in seq.stages]

    def active_stages(self) -> list[tuple[int, int, Stage]]:
        return [(k, b, st) for k, b, st in self.all_stages() if st.status == "active"]

    def served(self) -> dict[int, tuple[int, int]]:
        """Per surviving shard, (sequence, prefix) of its longest surviving prefix (ties: the lowest sequence)."""
        out = {}
        for sh in self.shards:
            best = max(sh.sequences, key=lambda s: (serving_prefix(s), -s.sequence))
            if serving_prefix(best) > 0:
                out[sh.shard] = (best.sequence, best.prefix)
        return out

    def budget(self) -> dict[str, Any]:
        """Worst-case single-sample deletions the artifact can still absorb and serve: a deletion removes at most one
        first slice per shard, and a shard serves while a sequence's first stage is active."""
        per = []
        for sh in self.shards:
            firsts = {seq.order[0] for seq in sh.sequences if serving_prefix(seq) > 0}
            per.append(len(firsts))
        total = sum(per)
        return {"deletions_left": max(0, total - 1), "exhausted_after": total, "per_shard": per,
                "active_shards": sum(1 for p in per if p > 0), "active_components": len(self.active_stages()),
                "components": sum(len(seq.stages) for sh in self.shards for seq in sh.sequences)}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


MAX_MANIFEST_DEPTH = 32


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in parsed JSON (iterative: the value may be deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def parse_manifest(text: str, where: str) -> Manifest:
    fix = "restore the artifact from a backup or train it again (unlearn train --exact)"
    try:
        raw = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"exact artifact {where}: manifest.json is not valid JSON ({str(e).splitlines()[0][:100]}); {fix}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"exact artifact {where}: manifest.json is not a JSON object; {fix}")
    if _depth(raw) > MAX_MANIFEST_DEPTH:  # what this tool writes is a few levels deep; the model and pydantic recurse on it
        raise CheckpointError(f"exact artifact {where}: manifest.json is corrupt (nested more than {MAX_MANIFEST_DEPTH} levels deep); {fix}")
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"exact artifact {where}: manifest.json format is {str(raw.get('format'))[:40]!r}, not {FORMAT!r}; {fix}")
    if type(raw.get("schema_version")) is not int or raw["schema_version"] != SCHEMA_VERSION:  # true and 1.0 equal 1 in Python
        raise CheckpointError(f"exact artifact {where}: manifest schema_version {json.dumps(raw.get('schema_version'))[:20]} is not supported "
                              f"(this tool reads {SCHEMA_VERSION}); use the tool version that wrote it")
    try:
        m = Manifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        msg = first["msg"].removeprefix("Value error, ")
        raise CheckpointError(f"exact artifact {where}: manifest.json is corrupt ({loc}: {msg[:160]}); {fix}") from None
    problem = params_problem(m)
    if problem:
        raise CheckpointError(f"exact artifact {where}: manifest.json is corrupt ({problem}); {fix}")
    return m


def params_problem(m: Manifest) -> Optional[str]:
    """The recorded parameters must be valid for the method and describe the recorded layout: a deletion replays
    them (--retrain-affected) and the served model is built from them, so a mismatch is a corrupt manifest."""
    from ..errors import MethodError
    from .params import PARAMS

    try:
        p = PARAMS[m.method].model_validate(m.params, strict=True)  # as written: "2" for shards is not what this tool writes
    except ValidationError as e:
        first = e.errors()[0]
        loc = "".join(f"{x}: " for x in first["loc"])  # a whole-model check names its field in the message
        return f"params.{loc}{first['msg'].removeprefix('Value error, ').split(';')[0][:120]}"
    except MethodError as e:
        return f"params: {str(e)[:120]}"
    if p.shards != len(m.shards):
        return f"params.shards: {p.shards}, but the artifact records {len(m.shards)}"
    for sh in m.shards:  # each shard's slices and sequences (SISA: one) are what the params say
        if len(sh.slice_sizes) != p.slices or len(sh.sequences) != getattr(p, "sequences", 1):
            return f"shards.{sh.shard}: {len(sh.slice_sizes)} slices and {len(sh.sequences)} sequences, the params say {p.slices} and {getattr(p, 'sequences', 1)}"
    return None


def dump_manifest(m: Manifest) -> str:
    return json.dumps(m.model_dump(mode="json"), indent=1, sort_keys=True) + "\n"


@dataclass
class DeletionPlan:
    """What deleting `indices` does to an artifact: the stages deactivated and each sequence's new prefix."""

    indices: list[int]
    prefixes: dict[tuple[int, int], int]  # (shard, sequence) -> new prefix
    deactivated: list[tuple[int, int, int]] = field(default_factory=list)

    def served_after(self, m: Manifest) -> dict[int, tuple[int, int]]:
        out = {}
        for sh in m.shards:
            best = max(sh.sequences, key=lambda s: (serving_prefix(s, self.prefixes[(sh.shard, s.sequence)]), -s.sequence))
            p = serving_prefix(best, self.prefixes[(sh.shard, best.sequence)])
            if p > 0:
                out[sh.shard] = (best.sequence, p)
        return out


def held(m: Manifest, shard_of: "Any") -> "Any":
    """Boolean mask: which train samples some shard still holds (assigned and never deleted)."""
    import numpy as np

    mask = np.asarray(shard_of) >= 0
    gone = sorted(m.deleted())
    if gone:
        mask[np.asarray(gone, dtype=np.int64)] = False
    return mask


def plan_deletion(m: Manifest, shard_of: "Any", slice_of: "Any", indices: list[int], strict: bool = True,
                  ids: Optional[list[str]] = None) -> DeletionPlan:
    """Every (shard, sequence, stage) whose training data included one of `indices`, and the prefixes left.

    A stage's data is its slices minus the samples excluded when it was trained; the first such stage of a
    sequence that holds a forgotten sample cuts the sequence there. strict: a sample that no shard holds
    (already deleted, or never assigned) is an input error, naming each by position and, given the train split's
    record `ids`, by the ID a request may have named it with; otherwise it is skipped (class requests).
    """
    holds = held(m, shard_of)
    n = len(holds)
    missing = [i for i in indices if not (0 <= i < n and holds[i])]
    if missing and strict:
        gone = m.deleted()
        why = "already deleted" if all(i in gone for i in missing[:5]) else "held by no shard (deleted before, or never assigned)"
        shown = ", ".join(f"{i} (ID {ids[i]!r})" if ids is not None and 0 <= i < len(ids) else str(i) for i in missing[:5]) \
            + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise DataError(f"forget: sample(s) {shown} {why}; no component of this artifact was trained on them, drop them from the request")
    keep = sorted(i for i in indices if 0 <= i < n and holds[i])
    if not keep:
        raise DataError("forget: no sample of the request is held by any shard of this artifact (all deleted before or never assigned); nothing to delete")
    by_shard: dict[int, list[tuple[int, int]]] = {}
    for i in keep:
        by_shard.setdefault(int(shard_of[i]), []).append((i, int(slice_of[i])))
    prefixes: dict[tuple[int, int], int] = {}
    deactivated: list[tuple[int, int, int]] = []
    for sh in m.shards:
        forgotten = by_shard.get(sh.shard, [])
        for seq in sh.sequences:
            p = seq.prefix
            for st in seq.stages[: seq.prefix]:
                slices, excluded = set(st.slices), set(st.excluded)
                if any(s in slices and i not in excluded for i, s in forgotten):
                    p = st.stage  # the first stage whose data held a forgotten sample: cut the sequence before it
                    break
            prefixes[(sh.shard, seq.sequence)] = p
            deactivated += [(sh.shard, seq.sequence, i) for i in range(p, seq.prefix)]
    return DeletionPlan(indices=keep, prefixes=prefixes, deactivated=deactivated)


def stage_data(m: Manifest, shard_of: "Any", slice_of: "Any", k: int, stage: Stage) -> list[int]:
    """The train indices a stage was trained on, from the recorded assignment, slices and exclusions."""
    import numpy as np

    mask = (np.asarray(shard_of) == k) & np.isin(np.asarray(slice_of), stage.slices)
    excluded = set(stage.excluded)
    return [int(i) for i in np.nonzero(mask)[0] if int(i) not in excluded]


# ---------------------------------------------------------------- opening an artifact (every check, torch-free)

FIX = "restore the artifact from a backup or train it again (unlearn train --exact)"


def _sha(path: Path) -> str:
    from ..checkpoint import sha256_file

    return sha256_file(path)


def read_part(folder: str | Path, rel: str) -> dict:
    """The tensors of one of the artifact's files (base or component), already checked by sha256. One that still cannot
    be read was forged with a matching hash: the artifact's fix (FIX), not a plain checkpoint's ('convert it ...')."""
    from ..checkpoint import read_checkpoint

    try:
        return read_checkpoint(Path(folder) / rel)[0]
    except CheckpointError:
        raise CheckpointError(f"exact artifact {folder}: {rel} is not a readable safetensors file though its sha256 matches the "
                              f"manifest; {FIX}") from None


def _file_ok(folder: Path, rel: str, want: str, what: str) -> None:
    import os
    import stat

    p = folder / rel
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        raise CheckpointError(f"exact artifact {folder}: {what} {rel} is missing; {FIX}") from None
    except OSError as e:
        raise CheckpointError(f"exact artifact {folder}: {what} {rel} cannot be read ({e.strerror}); {FIX}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"exact artifact {folder}: {what} {rel} is not a regular file; {FIX}")
    got = _sha(p)
    if got != want:
        raise CheckpointError(f"exact artifact {folder}: {what} {rel} has sha256 {got[:12]}..., the manifest records {want[:12]}...; "
                              f"the file was modified or replaced, {FIX}")


def _names_its_stage(folder: Path, st: Stage, k: int, b: int, what: str) -> None:
    """A component records the stage it was trained as (shard, sequence, stage, generation): two files swapped with their
    sha256s in the manifest were served by each other's stage, past the rule that a stage serves only its own file."""
    from safetensors import safe_open

    want = {"unlearn.shard": str(k), "unlearn.sequence": str(b), "unlearn.stage": str(st.stage), "unlearn.generation": str(st.generation)}
    try:
        with safe_open(str(folder / (st.file or "")), framework="np") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - not readable: read_part names it when the weights are read
        return
    got = {key: meta.get(key) for key in want}
    if got != want:
        seen = ", ".join(f"{key.removeprefix('unlearn.')} {got[key]}" for key in want)
        raise CheckpointError(f"exact artifact {folder}: {what} {st.file} was trained as {seen}, not as this stage; the manifest "
                              f"was edited, {FIX}")


def read_manifest(folder: str | Path) -> tuple[Manifest, str]:
    """The manifest and its sha256, after checking the schema, every listed file's sha256, and that the folder holds
    no component the manifest does not list as active (a stale component would still hold deleted data)."""
    from ..request import read_regular_file
    from ..errors import RequestError

    folder = Path(folder)
    path = folder / MANIFEST
    if path.is_symlink():  # as the base and components: the artifact's own file, which a later edit elsewhere cannot change
        raise CheckpointError(f"exact artifact manifest {path} is a link, not a file of the artifact; {FIX}")
    try:
        raw = read_regular_file(path, "exact artifact manifest", FIX, MAX_MANIFEST_BYTES)
    except RequestError as e:
        raise CheckpointError(str(e)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"exact artifact {folder}: manifest.json is not UTF-8 text; {FIX}") from None
    m = parse_manifest(text, str(folder))
    import hashlib

    digest = hashlib.sha256(raw).hexdigest()
    _file_ok(folder, m.base.file, m.base.sha256, "base")
    _file_ok(folder, m.assignment.file, m.assignment.sha256, "assignment")
    listed = set()
    for k, b, st in m.active_stages():
        what = f"component (shard {k}, sequence {b}, stage {st.stage})"
        _file_ok(folder, st.file or "", st.sha256, what)
        _names_its_stage(folder, st, k, b, what)
        listed.add(st.file)
    comp = folder / COMPONENTS
    if comp.is_symlink() or (comp.exists() and not comp.is_dir()):
        raise CheckpointError(f"exact artifact {folder}: {COMPONENTS} is not a folder of the artifact (a link, or a file); {FIX}")
    if comp.is_dir():
        stale = sorted(f"{COMPONENTS}/{p.name}" for p in comp.iterdir() if f"{COMPONENTS}/{p.name}" not in listed)
        if stale:
            raise CheckpointError(f"exact artifact {folder}: {stale[0]} is not an active component of the manifest; it may hold deleted data, "
                                  f"so the artifact is refused; {FIX}")
    return m, digest


def read_assignment(folder: str | Path, m: Manifest) -> tuple["Any", "Any"]:
    """The (shard, slice) int64 arrays, checked against the manifest's digest and the train size."""
    from safetensors import safe_open

    from . import assign

    path = Path(folder) / m.assignment.file
    try:
        with safe_open(str(path), framework="np") as f:
            shard, slc = f.get_tensor("shard"), f.get_tensor("slice")
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise CheckpointError(f"exact artifact {folder}: {m.assignment.file} is not a valid assignment file ({type(e).__name__}); {FIX}") from None
    if shard.shape != (m.data.train_size,) or slc.shape != shard.shape or assign.digest(shard, slc) != m.assignment.digest:
        raise CheckpointError(f"exact artifact {folder}: the assignment does not match the manifest's digest or train size; {FIX}")
    import numpy as np

    for sh in m.shards:  # the recorded sizes are what the assignment gives (weighted aggregation and inspect read them)
        mine = slc[shard == sh.shard]
        sizes = [int(np.sum(mine == s)) for s in range(len(sh.slice_sizes))]
        if sh.size != len(mine) or sh.slice_sizes != sizes:
            raise CheckpointError(f"exact artifact {folder}: shard {sh.shard}'s size and slice sizes in the manifest differ from the "
                                  f"assignment's ({len(mine)} samples, slices {sizes[:5]}); {FIX}")
    for k, b, st in m.all_stages():  # a stage's data: its slices of its shard, less the samples excluded from them
        outside = [i for i in st.excluded if shard[i] != k or int(slc[i]) not in st.slices]
        held = sum(m.shards[k].slice_sizes[s] for s in st.slices) - len(set(st.excluded))
        if outside or st.samples != held:
            why = f"excludes sample {outside[0]}, which is not in its slices" if outside else f"records {st.samples} samples, its slices hold {held}"
            raise CheckpointError(f"exact artifact {folder}: shard {k} sequence {b} stage {st.stage} {why}; {FIX}")
    return shard, slc


def lineage_violations(m: Manifest, shard_of: "Any", slice_of: "Any") -> list[str]:
    """Active components whose recorded training data (slices minus excluded samples) holds a deleted sample."""
    import numpy as np

    gone = np.asarray(sorted(m.deleted()), dtype=np.int64)
    if gone.size == 0:
        return []
    if gone.max() >= len(shard_of):
        return [f"the deletion log names sample {int(gone.max())}, beyond the {len(shard_of)} assigned samples"]
    out = []
    for k, b, st in m.active_stages():
        hit = gone[(np.asarray(shard_of)[gone] == k) & np.isin(np.asarray(slice_of)[gone], st.slices)]
        bad = sorted(set(int(i) for i in hit) - set(st.excluded))
        if bad:
            out.append(f"shard {k} sequence {b} stage {st.stage} was trained on deleted sample(s) {', '.join(map(str, bad[:3]))}")
    return out
