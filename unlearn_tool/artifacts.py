"""Model artifacts: what a model is on disk, behind one interface for loading, evaluating, writing and inspecting.

- `CheckpointArtifact`: one safetensors file holding the whole state dict (inputs, merged outputs,
  retrained references).
- `CheckpointArtifact` on a folder: a Hugging Face `save_pretrained` folder (config.json + model.safetensors);
  its weights are the folder's model.safetensors, so it reads, loads and writes like a file.
- `AdapterArtifact`: a PEFT adapter folder (`apply --adapter-only`), evaluated as base + adapter.
- `EnsembleArtifact`: an exact-unlearning folder (`train --exact s3t|sisa`), evaluated as its shards' ensemble.

`open_artifact(path)` picks the kind from what is on disk. New kinds (an exact-unlearning ensemble
folder, `EnsembleArtifact`) implement the same methods: `sha256`, `fields`, `load(job)`, `describe()`.
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional

from .checkpoint import (
    ADAPTER_MARKER,
    HF_CONFIG,
    HF_EXTRA,
    HF_WEIGHTS,
    check_finite,
    dtypes_of,
    load_into,
    metadata_for,
    read_checkpoint,
    read_metadata_fields,
    save_canonical,
    sha256_file,
    write_directory,
    write_safetensors,
)
from .errors import AuditError, CheckpointError

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class LoadContext:
    """What loading a model needs (a Job provides it: `job.load_context()`)."""

    make_model: Callable[[], "nn.Module"]  # a fresh model of the architecture
    arch: str  # its name, for error messages
    device: "torch.device"
    base: Optional["nn.Module"] = None  # the original model, which an adapter is applied to
    base_sha256: str = ""


class Artifact(ABC):
    kind: str

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    @abstractmethod
    def sha256(self) -> str:
        """The digest a lineage, a report or a ledger records for this artifact."""

    @property
    @abstractmethod
    def fields(self) -> dict[str, Any]:
        """Our provenance fields (the `unlearn.*` metadata), parsed."""

    @abstractmethod
    def load(self, ctx: LoadContext) -> "nn.Module":
        """The model to evaluate, of the context's architecture, on its device, in eval mode."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What `unlearn inspect` shows: tensors, sizes, metadata."""

    def info(self) -> dict[str, Any]:
        """The provenance a report records for this artifact."""
        return {"path": str(self.path.resolve()), "kind": self.kind, "sha256": self.sha256, "metadata": self.fields}


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / HF_CONFIG).is_file()


class CheckpointArtifact(Artifact):
    """One safetensors file with the model's full state dict, or a save_pretrained folder holding one."""

    kind = "merged"

    @property
    def file(self) -> Path:
        """The safetensors file: the path itself, or a save_pretrained folder's model.safetensors."""
        if not self.path.is_dir():
            return self.path
        if not is_hf_folder(self.path):
            raise CheckpointError(f"checkpoint {self.path} is a folder without {HF_CONFIG}; give a .safetensors file or a save_pretrained "
                                  f"folder ({HF_CONFIG} and {HF_WEIGHTS})")
        if not (self.path / HF_WEIGHTS).is_file():
            pickles = sorted(p.name for p in self.path.glob("*.bin"))
            if pickles and not any(self.path.glob("*.safetensors.index.json")):
                raise CheckpointError(f"checkpoint folder {self.path} holds {pickles[0]}{' ...' if len(pickles) > 1 else ''}, a pickle file, which "
                                      f"this tool never reads (unpickling can run code), and no {HF_WEIGHTS}; convert it where you trust it: "
                                      "model.save_pretrained(folder, safe_serialization=True) writes model.safetensors")
            sharded = " (sharded checkpoints are not supported: save with a larger max_shard_size)" if any(self.path.glob("*.index.json")) else ""
            raise CheckpointError(f"checkpoint folder {self.path} has no {HF_WEIGHTS}{sharded}; give a save_pretrained folder or a .safetensors file")
        return self.path / HF_WEIGHTS

    @cached_property
    def _contents(self) -> tuple[dict[str, "torch.Tensor"], dict[str, str]]:
        return read_checkpoint(self.file)

    @property
    def tensors(self) -> dict[str, "torch.Tensor"]:
        return self._contents[0]

    @property
    def raw_metadata(self) -> dict[str, str]:
        return self._contents[1]

    @cached_property
    def sha256(self) -> str:  # type: ignore[override]
        return sha256_file(self.file)

    @property
    def fields(self) -> dict[str, Any]:
        return read_metadata_fields(self.raw_metadata)

    @property
    def dtypes(self) -> dict[str, "torch.dtype"]:
        return dtypes_of(self.tensors)

    def load(self, ctx: LoadContext) -> "nn.Module":
        model = load_into(ctx.make_model(), self.tensors, ctx.arch, self.path)
        return model.to(ctx.device).eval()

    def describe(self) -> dict[str, Any]:
        rows = [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."), "numel": v.numel()}
                for k, v in self.tensors.items()]
        return {"path": str(self.path), "kind": self.kind, "tensors": rows, "parameters": sum(r["numel"] for r in rows),
                "metadata": self.fields, "raw_metadata": self.raw_metadata}


# LoRA config keys that do not change what a merge computes; every other key must hold peft's default, as apply writes it
FREE_LORA_KEYS = frozenset({"peft_type", "task_type", "peft_version", "auto_mapping", "base_model_name_or_path", "revision",
                            "inference_mode", "target_modules", "r", "lora_alpha", "lora_dropout"})
MAX_LORA_ALPHA = 1e6


def lora_config_problem(config: dict[str, Any], ranks: set[int]) -> Optional[str]:
    """What in a LoRA adapter config would make a merge compute something other than B @ A * alpha / r on the layers its
    weights name (None: nothing): a rank that is not the weights', an alpha that is not a positive sane number, DoRA,
    rsLoRA, per-layer patterns, excluded modules, or a key peft does not know (it only warns and ignores it)."""
    import dataclasses

    from peft import LoraConfig

    fields = {f.name: f for f in dataclasses.fields(LoraConfig)}
    unknown = sorted(set(config) - set(fields))
    if unknown:
        return f"has key(s) peft's LoRA config does not know: {', '.join(repr(k)[:40] for k in unknown[:3])}"
    for name, value in config.items():
        if name in FREE_LORA_KEYS or (name == "init_lora_weights" and value in (True, False, "gaussian")):
            continue  # init_lora_weights: those only initialise the adapters the saved ones replace (pissa, olora ... rewrite the base)
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        if value != default and not (value in (None, [], {}, "") and default in (None, [], {}, "")):
            return f"sets {name} to {json.dumps(value)[:40]}, which `unlearn apply` never writes (it changes what merging computes)"
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or ranks != {r}:
        return f"says r {json.dumps(r)[:20]}, but the adapter's weights have rank {', '.join(map(str, sorted(ranks))) or 'none'}"
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha <= MAX_LORA_ALPHA:
        return f"says lora_alpha {json.dumps(alpha)[:20]}; it must be a number in (0, {MAX_LORA_ALPHA:g}] (apply writes the method's alpha)"
    return None


def _load_failure(error: Exception) -> str:
    """peft's failure to load an adapter, in one line: torch's load_state_dict error puts its cause (the tensor, the
    shapes) on the lines after "Error(s) in loading state_dict", which the message had cut off."""
    import re

    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    size = re.search(r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from checkpoint, "
                     r"the shape in current model is torch\.Size\(\[([^\]]*)\]\)", str(error))
    if size is not None:
        key, theirs, ours = size.groups()
        return f"its tensor {key.replace('.default.', '.')} has shape ({theirs}), the layer it adapts takes ({ours})"
    text = " ".join(lines[1:]) if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict") else lines[0]
    return f"{type(error).__name__}: {text[:200]}"


class AdapterArtifact(Artifact):
    """A PEFT adapter folder written by `apply --adapter-only`: evaluated as the original base + this adapter."""

    kind = "adapter"
    WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"

    def __init__(self, path: str | Path):
        super().__init__(path)
        missing = [n for n in (self.WEIGHTS, self.CONFIG) if not (self.path / n).is_file()]
        if missing:
            raise CheckpointError(f"adapter folder {self.path} lacks {', '.join(missing)}; give a folder written by `unlearn apply --adapter-only`")

    @cached_property
    def _contents(self) -> tuple[dict[str, "torch.Tensor"], dict[str, str]]:
        return read_checkpoint(self.path / self.WEIGHTS)

    @cached_property
    def sha256(self) -> str:  # type: ignore[override]
        return sha256_file(self.path / self.WEIGHTS)

    @property
    def fields(self) -> dict[str, Any]:
        return read_metadata_fields(self._contents[1]) or self._marker_fields()

    def _marker_fields(self) -> dict[str, Any]:
        """The provenance apply also writes beside the weights (unlearn_metadata.json); {} when absent or unreadable."""
        side = self.path / ADAPTER_MARKER
        try:
            raw = json.loads(side.read_text()) if side.is_file() else {}
        except (OSError, ValueError):
            return {}
        return read_metadata_fields(raw) if isinstance(raw, dict) and all(isinstance(v, str) for v in raw.values()) else {}

    def check_trained(self) -> None:
        """An adapter whose LoRA B matrices are all zero changes nothing: refuse to audit it as a deletion."""
        tensors = self._contents[0]
        b_keys = [k for k in tensors if "lora_B" in k]
        if not b_keys:
            raise AuditError(f"adapter {self.path} has no LoRA B matrices (no key contains 'lora_B'); give a LoRA adapter written by `unlearn apply --adapter-only`")
        odd = [k for k, t in tensors.items() if not t.dtype.is_floating_point]
        if odd:
            raise AuditError(f"adapter {self.path}: tensor {odd[0]} is {str(tensors[odd[0]].dtype).removeprefix('torch.')}, not floating point; "
                             "give a LoRA adapter written by `unlearn apply --adapter-only`")
        if all(float(tensors[k].abs().max()) == 0.0 for k in b_keys):
            raise AuditError(f"adapter {self.path}: every LoRA B matrix is zero, so the adapter trained nothing; rerun `unlearn apply` (more epochs or a higher lr)")
        check_finite(tensors, self.path / self.WEIGHTS)

    def check_config(self) -> None:
        """The config must be a LoRA adapter's, as `apply --adapter-only` writes: on another tuner's (prompt tuning) peft
        builds that tuner, with its own warnings on stderr, and fails deep inside."""
        from .request import read_regular_file
        from .errors import RequestError

        fix = "give a folder written by `unlearn apply --adapter-only`"
        try:
            config = json.loads(read_regular_file(self.path / self.CONFIG, "adapter config", fix, 1 << 20))
        except RequestError as e:
            raise CheckpointError(str(e)) from None
        except ValueError:
            raise CheckpointError(f"adapter {self.path}: {self.CONFIG} is not valid JSON; {fix}") from None
        kind = config.get("peft_type") if isinstance(config, dict) else None
        if kind != "LORA":
            raise CheckpointError(f"adapter {self.path}: {self.CONFIG} describes {'a ' + repr(kind)[:40] if kind else 'no'} peft adapter, not LoRA; {fix}")
        records = {fields.get("adapter_config_sha256") for fields in (read_metadata_fields(self._contents[1]), self._marker_fields())} - {None}
        if records and records != {sha256_file(self.path / self.CONFIG)}:  # either record (weights' metadata, marker file)
            raise CheckpointError(f"adapter {self.path}: {self.CONFIG} is not the one `unlearn apply` wrote with these weights (its sha256 "
                                  f"differs from the one {self.WEIGHTS} or {ADAPTER_MARKER} records; any edit counts), so merging it "
                                  "may not give the unlearned model; "
                                  "restore it, or write the adapter again with `unlearn apply --adapter-only`")
        problem = lora_config_problem(config, {int(t.shape[0]) for k, t in self._contents[0].items() if "lora_A" in k and t.dim() >= 1})
        if problem:
            raise CheckpointError(f"adapter {self.path}: {self.CONFIG} {problem}; {fix}")

    def load(self, ctx: LoadContext) -> "nn.Module":
        if ctx.base is None:
            raise AuditError("an adapter is evaluated as base + adapter; give the base checkpoint with --original")
        self.check_trained()
        parent = self.fields.get("parent_sha256")
        if parent and ctx.base_sha256 and parent != ctx.base_sha256:
            raise AuditError(f"adapter {self.path} was made from a base with sha256 {str(parent)[:12]}..., not {ctx.base_sha256[:12]}...; give that base checkpoint (--original for audit, --base for merge)")
        self.check_config()
        from peft import PeftModel

        from .lora import quiet_peft

        try:
            with quiet_peft():
                peft_model = PeftModel.from_pretrained(copy.deepcopy(ctx.base).cpu(), str(self.path))
        except Exception as e:  # noqa: BLE001 - peft raises many types for a foreign adapter
            same_base = bool(parent and ctx.base_sha256 and parent == ctx.base_sha256)
            fix = ("the base is the one it was made from (sha256), so the adapter folder is the problem (edited or damaged); give a "
                   "folder written by `unlearn apply --adapter-only`" if same_base else
                   "give the base it was trained on, or a folder written by `unlearn apply --adapter-only`")
            raise CheckpointError(f"adapter {self.path} does not fit the original model ({_load_failure(e)}); {fix}") from None
        from peft import get_peft_model_state_dict

        expected, saved = set(get_peft_model_state_dict(peft_model)), set(self._contents[0])
        if expected != saved:  # peft only warns, and merges the layers it found (zero for the others)
            odd = sorted(expected - saved) or sorted(saved - expected)
            raise CheckpointError(f"adapter {self.path}: {self.WEIGHTS} {'lacks' if expected - saved else 'holds unused'} tensor(s) "
                                  f"{', '.join(odd[:2])}{' ...' if len(odd) > 2 else ''} for the layers its config adapts; give a folder "
                                  "written by `unlearn apply --adapter-only`")
        return peft_model.merge_and_unload().to(ctx.device).eval()

    def describe(self) -> dict[str, Any]:
        tensors, raw = self._contents
        rows = [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."), "numel": v.numel()} for k, v in tensors.items()]
        try:
            config = json.loads((self.path / self.CONFIG).read_text())
        except (OSError, ValueError):  # unreadable or not JSON: shown as absent; merge and audit name the problem
            config = None
        return {"path": str(self.path), "kind": self.kind, "tensors": rows, "parameters": sum(r["numel"] for r in rows),
                "metadata": self.fields, "raw_metadata": raw, "adapter_config": config}


class EnsembleArtifact(Artifact):
    """An exact-unlearning folder (`unlearn train --exact s3t|sisa`): manifest.json, base, assignment, one safetensors
    file per active component. Opening it checks the manifest's schema and every file's sha256 (docs/exact.md)."""

    kind = "exact"

    def __init__(self, path: str | Path):
        super().__init__(path)
        from .exact.manifest import FIX, lineage_violations, read_assignment, read_manifest

        self.manifest, self._sha256 = read_manifest(self.path)
        self.assignment = read_assignment(self.path, self.manifest)
        bad = lineage_violations(self.manifest, *self.assignment)
        if bad:
            raise CheckpointError(f"exact artifact {self.path}: {bad[0]}, which its own deletion log forbids; {FIX}")

    @property
    def sha256(self) -> str:  # type: ignore[override]
        """The manifest's sha256: it records every component's sha256, so it pins the whole artifact."""
        return self._sha256

    @property
    def fields(self) -> dict[str, Any]:
        m = self.manifest
        return {"format": m.format, "method": m.method, "params": m.params, "seed": m.seed, "request_id": m.request_id,
                "model_arch": m.model.arch, "base_sha256": m.base.sha256, "assignment_digest": m.assignment.digest,
                "deletions": len(m.deletions), "deleted_samples": len(m.deleted()), "budget": m.budget(),
                "parent_sha256": m.deletions[-1].parent_manifest_sha256 if m.deletions else None,
                "guarantee": self.guarantee()}

    @property
    def raw_metadata(self) -> dict[str, str]:
        return metadata_for(self.fields)

    @property
    def dtypes(self) -> dict[str, "torch.dtype"]:
        return {}

    def guarantee(self) -> str:
        from .exact.describe import guarantee_text

        return guarantee_text(self.manifest)

    def load(self, ctx: LoadContext) -> "nn.Module":
        from .exact.ensemble import load_ensemble

        return load_ensemble(self, ctx)

    def describe(self) -> dict[str, Any]:
        from .exact.describe import describe_exact

        return describe_exact(self)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "notes": [self.guarantee()]}

    def not_deleted(self, positions: Iterable[int]) -> list[int]:
        """Of the train positions a request forgets, those its deletion log does not hold: the guarantee is stated for the
        log, so it says nothing of these (an audit of a request this artifact never received)."""
        gone = self.manifest.deleted()
        return [int(i) for i in positions if int(i) not in gone]


def open_artifact(path: str | Path) -> Artifact:
    """The artifact at `path`, by what is there: a folder with an exact manifest is an ensemble, a save_pretrained
    folder or a file a checkpoint, another folder an adapter."""
    from .exact import is_exact_folder

    path = Path(path)
    if is_exact_folder(path):
        return EnsembleArtifact(path)
    if path.is_dir() and not is_hf_folder(path):
        return AdapterArtifact(path)
    return CheckpointArtifact(path)


def is_checkpoint(path: str | Path) -> bool:
    """A path that can hold a checkpoint: a file, or a save_pretrained folder."""
    path = Path(path)
    return path.is_file() or is_hf_folder(path)


# ---------------------------------------------------------------- writers

def write_merged(path: Path, state: Mapping[str, "torch.Tensor"], fields: dict[str, Any], force: bool = False,
                 protect: Mapping[str, Any] = {}) -> str:
    """A drop-in checkpoint (same keys, shapes, dtypes as the caller's state) with our provenance; returns its sha256."""
    return write_safetensors(path, dict(state), metadata_for(fields), force=force, protect=protect)


def write_hf_folder(path: Path, state: Mapping[str, "torch.Tensor"], fields: dict[str, Any], source: Path, force: bool = False,
                    protect: Mapping[str, Any] = {}, config: Optional[bytes] = None) -> str:
    """A save_pretrained folder: the source folder's config.json (and preprocessor config), the weights under the keys
    save_pretrained writes ("format": "pt", as transformers expects), our provenance; returns the weights' sha256.

    config: config.json's bytes when the model was built with model.kwargs overrides (models.hf_output_config)."""
    metadata = {**metadata_for(fields), "format": "pt"}
    cpu = {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def fill(folder: Path) -> None:
        for name in (HF_CONFIG, *HF_EXTRA):
            if name == HF_CONFIG and config is not None:
                (folder / name).write_bytes(config)
            elif (source / name).is_file():
                (folder / name).write_bytes((source / name).read_bytes())
        save_canonical(cpu, folder / HF_WEIGHTS, metadata)
        (folder / ADAPTER_MARKER).write_text(json.dumps(metadata_for(fields), indent=2, sort_keys=True))

    write_directory(path, fill, force=force, protect=protect)
    return sha256_file(path / HF_WEIGHTS)


def write_adapter(path: Path, adapted: Optional["nn.Module"], fields: dict[str, Any], force: bool = False,
                  protect: Mapping[str, Any] = {}, base: Optional[Path] = None) -> str:
    """PEFT's layout (adapter_config.json, adapter_model.safetensors), written by peft from the method's adapted model
    (lora.to_peft), plus our provenance; returns the weights' sha256.

    base: the checkpoint the adapter was trained on. A save_pretrained folder is recorded (absolute) as the config's
    base_model_name_or_path, where PEFT's from_pretrained looks for the base; peft had written the config's own
    _name_or_path, the hf:<folder> the architecture came from (untrained weights: loaded that way, a random model).
    Another base (a .safetensors file, which from_pretrained cannot load) is recorded as none; the weights' metadata
    pins the base by sha256 either way."""
    if adapted is None:
        from .errors import UnlearnError

        raise UnlearnError("internal: the method produced no adapter; please report this")
    metadata = metadata_for(fields)

    def fill(folder: Path) -> None:
        from safetensors.torch import load_file

        from .lora import to_peft

        peft_model = to_peft(adapted)
        name = str(base.resolve()) if base is not None and is_hf_folder(base) else None
        for config in peft_model.peft_config.values():
            config.base_model_name_or_path = name
        plain = peft_model.get_base_model()  # a copy: peft fills a None name, and its model card, from these
        plain.name_or_path = name or ""
        if getattr(getattr(plain, "config", None), "_name_or_path", None) is not None:
            plain.config._name_or_path = name or ""
        peft_model.save_pretrained(str(folder))
        weights = folder / AdapterArtifact.WEIGHTS
        # the config decides what merging computes (alpha, r, targets): the weights' metadata pins it
        pinned = {**metadata, **metadata_for({"adapter_config_sha256": sha256_file(folder / AdapterArtifact.CONFIG)})}
        save_canonical(load_file(str(weights)), weights, pinned)
        (folder / ADAPTER_MARKER).write_text(json.dumps(pinned, indent=2, sort_keys=True))

    write_directory(path, fill, force=force, protect=protect)
    return sha256_file(path / AdapterArtifact.WEIGHTS)

