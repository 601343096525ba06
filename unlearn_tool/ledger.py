"""Lineage and ledger: deletion requests as they really arrive, one after another, each provable afterwards.

- Every merged output carries a **lineage** in its metadata (`unlearn.lineage`): the original checkpoint's
  sha256, the train data's fingerprint, and one step per applied request (request id and sha256, method,
  the forgotten set's count and digest, the parent's sha256, the time). `apply` on an unlearned checkpoint
  extends it.
- The lineage also goes to a JSON-lines **ledger** beside the output (`<output stem>.ledger.jsonl`, or
  `--ledger FILE`), each line hash-chained to the one before (`prev_entry_sha256`, `entry_sha256`), with the
  step's output sha256. The forgotten set of each step is stored beside the ledger
  (`<ledger stem>.d/step-N.safetensors`): train-split positions and, when the data has record IDs, the
  sha256 of each ID. Never the IDs themselves, unless `--record-ids`: an audit trail must not re-leak what
  it deleted.
- A new request on a checkpoint with a lineage excludes every earlier forgotten sample from its data
  (`Job.prepare(..., excluded=...)`); when an earlier set cannot be resolved, `apply` refuses (exit 2)
  unless `--ignore-lineage`.
- `verify` checks every hash link and that the checkpoint is the chain's last output.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .errors import UnlearnError

if TYPE_CHECKING:
    import torch

    from .data import Splits

SCHEMA = "unlearn.lineage/v1"
LEDGER_SUFFIX = ".ledger.jsonl"


class LedgerError(UnlearnError):
    """A lineage step cannot be resolved or a ledger is malformed (exit 2)."""


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")).hexdigest()  # file names of other bytes


def id_hash(record_id: str) -> str:
    return _sha("unlearn-record-id\0" + record_id)


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def forget_digest(splits: "Splits", data_sha256: str) -> str:
    """A digest of what was forgotten: of its record IDs when the data has them, else of its positions in this data."""
    if splits.forget_ids is not None:
        return _sha(canonical(sorted(id_hash(i) for i in splits.forget_ids)))
    positions = sorted(int(i) for i in splits.forget_positions.tolist()) if splits.forget_positions is not None else []
    return _sha(canonical({"data": data_sha256, "positions": positions}))


def default_ledger(output: Path) -> Path:
    name = output.name[: -len(".safetensors")] if output.name.endswith(".safetensors") else output.name
    return output.with_name(name + LEDGER_SUFFIX)


def forget_dir(ledger: Path) -> Path:
    return ledger.with_name(ledger.name[: -len(".jsonl")] + ".d" if ledger.name.endswith(".jsonl") else ledger.name + ".d")


# ---------------------------------------------------------------- lineage in metadata

@dataclass
class Lineage:
    original_sha256: str
    data_sha256: str
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "original_sha256": self.original_sha256, "data_sha256": self.data_sha256, "steps": self.steps}

    @classmethod
    def from_metadata(cls, fields: dict[str, Any]) -> Optional["Lineage"]:
        """The checkpoint's lineage; None when it has none. One that is there but damaged is an error, never "none":
        a new chain would start from the damaged file and the deletions recorded before it would be lost."""
        if "lineage" not in fields:
            return None
        raw = fields["lineage"]
        damaged = "the checkpoint's lineage metadata (unlearn.lineage) is damaged"
        fix = "restore the checkpoint from its ledger's last output (unlearn apply --ignore-lineage starts a new chain from it instead)"
        if not isinstance(raw, dict):
            raise LedgerError(f"{damaged} (not a JSON object); {fix}")
        if raw.get("schema") != SCHEMA:
            raise LedgerError(f"the checkpoint's lineage has schema {raw.get('schema')!r}; this tool reads {SCHEMA}")
        steps = raw.get("steps")
        if not isinstance(steps, list):
            raise LedgerError(f"{damaged} (steps is not a list); {fix}")
        for n, step in enumerate(steps, 1):
            if not isinstance(step, dict) or step.get("step") != n or not all(isinstance(step.get(k), str) for k in STEP_TEXT):
                raise LedgerError(f"{damaged} (step {n} is not a step record); {fix}")
        if not all(isinstance(raw.get(k), str) for k in ("original_sha256", "data_sha256")):
            raise LedgerError(f"{damaged} (no original or data sha256); {fix}")
        return cls(raw["original_sha256"], raw["data_sha256"], list(steps))


STEP_TEXT = ("request_id", "method", "scenario", "forget_digest", "parent_sha256", "created_utc")  # what `unlearn ledger` prints


def new_step(lineage: Lineage, request: Any, method: str, splits: "Splits", parent_sha256: str, created: str,
             after_forget_acc: Optional[float], record_ids: bool) -> dict[str, Any]:
    step = {
        "step": len(lineage.steps) + 1,
        "request_id": request.id,
        "request_sha256": request.sha256,
        "method": method,
        "scenario": splits.scenario,
        "forget_count": int(len(splits.forget_idx)),
        "forget_digest": forget_digest(splits, lineage.data_sha256),
        "forget_classes": list(splits.forget_classes),
        "parent_sha256": parent_sha256,
        "created_utc": created,
        "after_forget_acc": after_forget_acc,
    }
    if record_ids and splits.forget_ids is not None:
        step["forget_ids"] = list(splits.forget_ids)
    return step


# ---------------------------------------------------------------- the ledger file

def read_ledger(path: Path) -> list[dict[str, Any]]:
    from .request import read_regular_file

    raw = read_regular_file(path, "ledger", "give the ledger the lineage was written to (--ledger FILE)")
    entries = []
    for n, line in enumerate(raw.decode("utf-8", errors="surrogateescape").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            raise LedgerError(f"ledger {path}: line {n} is not JSON; the ledger is damaged") from None
        if not isinstance(entry, dict):
            raise LedgerError(f"ledger {path}: line {n} is not an entry; the ledger is damaged")
        entries.append(entry)
    return entries


def entry_hash(entry: dict[str, Any]) -> str:
    return _sha(canonical({k: v for k, v in entry.items() if k != "entry_sha256"}))


def check_ledger_output(path: Path, inputs: list[tuple[str, Optional[Path]]]) -> None:
    """Where apply will record (--ledger, or beside the output), checked before any work: never one of the inputs or the
    output (a ledger written there destroyed the input checkpoint), never a folder or a file that is not a ledger, and
    in a folder that exists or can be made (the forgotten sets go beside it)."""
    import os

    absolute = Path(os.path.abspath(path))
    for label, p in inputs:
        if p is None:
            continue
        q = Path(os.path.abspath(p))
        if q == absolute or (absolute.exists() and q.exists() and absolute.resolve() == q.resolve()):
            raise LedgerError(f"ledger {path} is the {label}; a ledger is written there, choose another --ledger")
        if q in absolute.parents or (q.is_dir() and q.resolve() in absolute.resolve().parents):
            raise LedgerError(f"ledger {path} is inside the {label} {p}; choose another --ledger")
    if absolute.is_dir():
        raise LedgerError(f"ledger {path} is a folder; give a file name (e.g. model.ledger.jsonl) with --ledger")
    if absolute.exists():
        try:
            read_ledger(absolute)
        except LedgerError as e:
            raise LedgerError(f"ledger {path} exists and is not a ledger ({str(e).split(': ', 1)[-1]}); choose another --ledger") from None
    sets = forget_dir(absolute)
    if sets.exists() and not sets.is_dir():
        raise LedgerError(f"ledger {path}: {sets}, where its forgotten sets go, is not a folder; choose another --ledger")
    folder = absolute.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise LedgerError(f"ledger {path}: {folder} is not a folder; choose another --ledger")
    from .checkpoint import not_writable

    problem = not_writable(folder)
    if problem:  # found now, not when the output is about to be published
        raise LedgerError(f"ledger {path}: its folder {folder} is not writable ({problem}); choose another --ledger")


def lineage_entries(entries: list[dict[str, Any]], lineage: Lineage, ledger: Path) -> list[dict[str, Any]]:
    """The ledger's entries of this checkpoint's lineage, in chain order: what a run on it continues. Entries after them
    (a further step taken from this checkpoint's output) are not part of its chain and are not carried into the new one."""
    chain: list[dict[str, Any]] = []
    for step in lineage.steps:
        prev = chain[-1].get("entry_sha256") if chain else None
        match = [e for e in entries if e.get("step") == step["step"] and e.get("forget_digest") == step.get("forget_digest")
                 and e.get("prev_entry_sha256") == prev]
        if not match:
            raise LedgerError(f"lineage step {step['step']} (request {step.get('request_id')!r}, digest {str(step.get('forget_digest'))[:12]}) "
                              f"has no matching entry in ledger {ledger}; give the ledger it was written to (--ledger FILE), "
                              "or --ignore-lineage to proceed without excluding it")
        chain.append(match[0])
    return chain


def check_one_chain(path: Path, base: list[dict[str, Any]], output: Path) -> None:
    """A ledger holds one chain, rewritten whole as `base` plus this run's steps. Refused, before any work, when that
    would drop entries of another output: a branch of the lineage or another lineage sharing `--ledger` lost its record
    (its `ledger verify` failed) and this run's chain ran through the other's steps. Entries of the output this run
    replaces (--force) may go: that is what --force asks for."""
    import os

    if not path.is_file():
        return
    existing = read_ledger(path)
    kept = 0
    while kept < min(len(existing), len(base)) and existing[kept].get("entry_sha256") == base[kept].get("entry_sha256"):
        kept += 1
    ours = os.path.abspath(output)
    replaced: list[Optional[str]] = []  # the sha256 of the file --force replaces, read only when needed

    def describes_ours(entry: dict[str, Any]) -> bool:
        written = str(entry.get("output", ""))
        if written.startswith("in-run step") or os.path.abspath(written) == ours:
            return True
        if not replaced:
            from .checkpoint import sha256_file

            replaced.append(sha256_file(output) if Path(output).is_file() else None)
        return replaced[0] is not None and entry.get("output_sha256") == replaced[0]

    for entry in existing[kept:]:
        if not describes_ours(entry):
            raise LedgerError(f"ledger {path} holds the chain of {existing[-1].get('output')} (step {existing[-1].get('step')}), which this "
                              f"run would cut from its step {entry.get('step')}; a ledger holds one chain: omit --ledger (one is written "
                              "beside the output) or give a new --ledger FILE")


def forget_set_name(step: dict[str, Any]) -> str:
    return f"step-{step['step']}-{step['forget_digest'][:12]}.safetensors"


def sharing_ledgers(ledger: Path) -> list[Path]:
    """The other ledger files whose forgotten sets go to the same folder as `ledger`'s (forget_dir maps x.ledger.jsonl
    and x.ledger both to x.ledger.d)."""
    folder = forget_dir(ledger)
    stem = folder.name[: -len(".d")]
    candidates = (folder.with_name(stem + ".jsonl"), folder.with_name(stem))
    return [c for c in candidates if c.is_file() and c.resolve() != Path(ledger).resolve() and forget_dir(c) == folder]


FORGET_SET_NAME = re.compile(r"step-[0-9]+-[0-9a-f]{12}\.safetensors")  # forget_set_name's form, nothing else


def remove_dropped_sets(ledger: Path, before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[Path]:
    """The forgotten sets of entries a rewrite dropped (--force replaced their output) that no kept entry names: a set
    no ledger line names records nothing and would only keep positions of a deletion that no longer holds. Only
    names of forget_set_name's form, in the ledger's own folder (an edited entry cannot point elsewhere); a file that
    cannot be removed stays (the ledger is already right). Returns the files removed."""
    kept = {str(e.get("forget_file", "")) for e in after}
    folder = forget_dir(ledger)
    for other in sharing_ledgers(ledger):  # x.ledger and x.ledger.jsonl keep their sets in one folder, x.ledger.d
        try:
            kept |= {str(e.get("forget_file", "")) for e in read_ledger(other)}
        except UnlearnError:  # unreadable: what it names is unknown, so nothing of that folder is removed
            return []
    removed = []
    for entry in before:
        name = str(entry.get("forget_file", ""))
        if name in kept or not FORGET_SET_NAME.fullmatch(name):
            continue
        path = folder / name
        try:
            if path.is_file() and not path.is_symlink():
                path.unlink()
                removed.append(path)
        except OSError:
            pass
    return removed


def store_forget_set(ledger: Path, step: dict[str, Any], splits: "Splits") -> str:
    """The step's forgotten set beside the ledger: positions, and ID hashes when the data has IDs. Returns its file name."""
    import torch

    from .checkpoint import replace_atomically, save_canonical

    folder = forget_dir(ledger)
    folder.mkdir(parents=True, exist_ok=True)
    name = forget_set_name(step)
    tensors = {"positions": splits.forget_positions.to(torch.int64).contiguous()}
    if splits.forget_ids is not None:
        tensors["id_sha256"] = torch.tensor([list(bytes.fromhex(id_hash(i))) for i in splits.forget_ids], dtype=torch.uint8)
    replace_atomically(folder / name, lambda tmp: save_canonical(tensors, tmp, {"forget_digest": step["forget_digest"]}),
                       fix="choose another --ledger", noted=False)  # a part of the record apply publishes with its output
    return name


def copy_forget_files(entries: list[dict[str, Any]], source: Path, target: Path) -> list[Path]:
    """A new ledger carries the earlier steps' forgotten sets with it (self-contained, verifiable on its own). Returns
    the files it created."""
    import shutil

    src, dst = forget_dir(source), forget_dir(target)
    dst.mkdir(parents=True, exist_ok=True)
    created = []
    for e in entries:
        name = str(e.get("forget_file", ""))
        if name and (src / name).is_file() and not (dst / name).exists():
            shutil.copyfile(src / name, dst / name)
            created.append(dst / name)
    return created


class StagedLedger:
    """A ledger written beside its place now and put there later by `commit`, a rename, which a full disk cannot fail:
    `apply` writes its record before it publishes the output, so that an I/O error fails the run with nothing published
    instead of leaving an output no ledger knows. Not committed, it is removed."""

    def __init__(self, path: Path, entries: list[dict[str, Any]]):
        from .checkpoint import file_mode, stage_beside
        from .errors import OutputError

        self.path, self.entries = Path(path), entries
        mode = file_mode(self.path)
        text = "".join(canonical(e) + "\n" for e in entries)
        try:
            # surrogateescape: a record ID from a file name of other bytes is written as those bytes (read back alike)
            self.tmp = stage_beside(self.path, lambda tmp: tmp.write_text(text, encoding="utf-8", errors="surrogateescape"), mode)
        except OSError as e:
            raise OutputError(f"cannot write ledger {self.path} ({e.strerror or e}); free some space or choose another --ledger") from None

    def commit(self) -> None:
        import os

        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


def state_sha256(state: dict[str, "torch.Tensor"]) -> str:
    """The digest of a state dict as a canonical safetensors file without metadata (for results never written)."""
    import os
    import tempfile

    from .checkpoint import save_canonical, sha256_file

    fd, name = tempfile.mkstemp(prefix="unlearn-state-", suffix=".safetensors")
    os.close(fd)
    try:
        save_canonical({k: v.detach().cpu().contiguous() for k, v in state.items()}, name)
        return sha256_file(name)
    finally:
        os.unlink(name)


def new_entry(base_entries: list[dict[str, Any]], step: dict[str, Any], output: Path, output_sha256: str, forget_file: str,
              extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A step's ledger entry, hash-chained to the last of `base_entries`. `extra`: more fields (covered by the hash)."""
    prev = base_entries[-1]["entry_sha256"] if base_entries else None
    entry = {**step, **(extra or {}), "output": str(output), "output_sha256": output_sha256, "forget_file": forget_file,
             "prev_entry_sha256": prev}
    entry["entry_sha256"] = entry_hash(entry)
    return entry


# ---------------------------------------------------------------- resolving earlier deletions

def resolve_excluded(lineage: Lineage, entries: list[dict[str, Any]], ledger: Path, train_ids: Optional[list[str]],
                     data_sha256: str) -> "torch.Tensor":
    """Train positions every earlier step forgot, from the ledger's stored sets (checked against the lineage's digests)."""
    import torch
    from safetensors.torch import load_file

    by_step = {e.get("step"): e for e in entries}
    position_of = {id_hash(i): k for k, i in enumerate(train_ids)} if train_ids is not None else None
    excluded: set[int] = set()
    for step in lineage.steps:
        entry = by_step.get(step["step"])
        what = f"lineage step {step['step']} (request {step.get('request_id')!r}, digest {str(step.get('forget_digest'))[:12]})"
        if entry is None or entry.get("forget_digest") != step.get("forget_digest"):
            raise LedgerError(f"{what} has no matching entry in ledger {ledger}; give the ledger it was written to (--ledger FILE), "
                              "or --ignore-lineage to proceed without excluding it")
        path = forget_dir(ledger) / str(entry.get("forget_file", ""))
        try:
            stored = load_file(str(path))
        except Exception:  # noqa: BLE001 - any unreadable file is a missing one
            raise LedgerError(f"{what}: its forgotten set {path} is missing or unreadable; restore it, or pass --ignore-lineage") from None
        if "id_sha256" in stored and position_of is not None:
            hashes = [bytes(row.tolist()).hex() for row in stored["id_sha256"]]
            if _sha(canonical(sorted(hashes))) != step["forget_digest"]:
                raise LedgerError(f"{what}: the stored set does not match its digest; the ledger folder was altered")
            excluded.update(position_of[h] for h in hashes if h in position_of)
        else:
            positions = sorted(int(i) for i in stored["positions"].tolist())
            if lineage.data_sha256 != data_sha256:
                raise LedgerError(f"{what}: the train data changed since that step and it records no IDs, so its samples cannot be "
                                  "found again; use the same data, or pass --ignore-lineage")
            if _sha(canonical({"data": data_sha256, "positions": positions})) != step["forget_digest"]:
                raise LedgerError(f"{what}: the stored set does not match its digest; the ledger folder was altered")
            excluded.update(positions)
    return torch.tensor(sorted(excluded), dtype=torch.long)


# ---------------------------------------------------------------- verify

def lineage_artifact(path: Path):
    """What apply wrote at `path`: a merged checkpoint (file or save_pretrained folder) or an adapter folder, whose
    weights file's sha256 is the output the ledger records. An exact artifact keeps its own deletion log."""
    from .artifacts import EnsembleArtifact, open_artifact

    art = open_artifact(path)
    if isinstance(art, EnsembleArtifact):
        raise LedgerError(f"{path} is an exact artifact: its deletions are logged in its manifest.json, not a ledger; "
                          "see them with unlearn inspect")
    return art


def verify(checkpoint: Path, original: Path, ledger: Optional[Path] = None) -> dict[str, Any]:
    """Every hash link of the chain, and that the checkpoint (or adapter) is its last output. Returns the findings (ok: bool)."""
    from .artifacts import CheckpointArtifact

    art, orig = lineage_artifact(checkpoint), CheckpointArtifact(original)
    lineage = Lineage.from_metadata(art.fields)
    problems: list[str] = []
    if lineage is None:
        return {"ok": False, "problems": [f"{checkpoint} carries no lineage (it was not written by `unlearn apply`)"], "steps": [],
                "checkpoint_sha256": art.sha256, "original_sha256": orig.sha256, "ledger": str(ledger or default_ledger(checkpoint))}
    if lineage.original_sha256 != orig.sha256:
        problems.append(f"the lineage starts from {lineage.original_sha256[:12]}..., not the given original {orig.sha256[:12]}...")
    ledger = ledger or default_ledger(checkpoint)
    try:
        entries = read_ledger(ledger) if ledger.exists() else []
    except LedgerError as e:  # damaged (a line cut short, not JSON): the chain does not verify (exit 3), like an altered entry
        if not ledger.is_file():
            raise
        return {"ok": False, "problems": [str(e)], "steps": [], "checkpoint_sha256": art.sha256, "original_sha256": orig.sha256,
                "ledger": str(ledger)}
    if not entries:
        problems.append(f"ledger {ledger} is missing or empty")
    prev_entry, prev_output = None, lineage.original_sha256
    for k, step in enumerate(lineage.steps):
        e = entries[k] if k < len(entries) else None
        if e is None:
            problems.append(f"step {step['step']}: no ledger entry")
            continue
        if entry_hash(e) != e.get("entry_sha256"):
            problems.append(f"step {step['step']}: the ledger entry was altered (its hash does not match)")
        if e.get("prev_entry_sha256") != prev_entry:
            problems.append(f"step {step['step']}: the ledger entry does not chain to the one before")
        for key, value in step.items():
            if e.get(key) != value:
                problems.append(f"step {step['step']}: ledger field {key} differs from the checkpoint's lineage")
                break
        if step.get("parent_sha256") != prev_output:
            problems.append(f"step {step['step']}: parent {str(step.get('parent_sha256'))[:12]}... is not the previous output {str(prev_output)[:12]}...")
        prev_entry, prev_output = e.get("entry_sha256"), e.get("output_sha256")
    if len(entries) > len(lineage.steps):
        problems.append(f"the ledger has {len(entries) - len(lineage.steps)} step(s) after this checkpoint: it is not the chain's last output")
    if lineage.steps and len(entries) >= len(lineage.steps) and prev_output != art.sha256:  # else the missing entries are the problem
        if art.fields.get("merged_from_adapter_sha256") == prev_output:  # unlearn merge of the chain's last output (an adapter)
            problems.append(f"the checkpoint is a merge of the chain's last output, the adapter {str(prev_output)[:12]}..., which "
                            "the ledger records instead of it: verify that adapter folder (unlearn ledger verify ADAPTER)")
        else:
            problems.append(f"the checkpoint's sha256 {art.sha256[:12]}... is not the chain's last output {str(prev_output)[:12]}...: it was altered or replaced")
    return {"ok": not problems, "problems": problems, "checkpoint_sha256": art.sha256, "original_sha256": orig.sha256,
            "ledger": str(ledger), "steps": [{k: s.get(k) for k in ("step", "request_id", "method", "scenario", "forget_count",
                                                                         "forget_digest", "parent_sha256", "created_utc")} for s in lineage.steps]}
