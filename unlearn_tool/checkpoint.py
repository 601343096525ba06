"""Read, check and write checkpoints: safetensors only, outputs written atomically.

Inputs are never modified. An output is written to a temporary file in the
destination folder and renamed into place, so a crash leaves no half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from .errors import CheckpointError, OutputError

META_PREFIX = "unlearn."


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a .safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found; give the path of a .safetensors file")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give a .safetensors file (adapter folders are read by `unlearn audit`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad header
        raise CheckpointError(f"checkpoint {path} is not a valid safetensors file ({str(e).splitlines()[0][:120]}); convert it with safetensors.torch.save_file(model.state_dict(), path)") from None
    return tensors, metadata


def mismatches(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between a model's state_dict and a checkpoint's tensors."""
    expected = model.state_dict()
    out = [f"missing {k}" for k in expected if k not in state]
    out += [f"unexpected {k}" for k in state if k not in expected]
    out += [
        f"{k} has shape {tuple(state[k].shape)}, model wants {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    return out


def load_into(model: nn.Module, state: dict[str, torch.Tensor], arch: str, path: str | Path) -> nn.Module:
    """Load a checkpoint strictly, or say which keys/shapes differ and how to fix it."""
    diffs = mismatches(model, state)
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; +{len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise CheckpointError(f"checkpoint {path} does not match {arch}: {shown}; set model.arch/kwargs to the architecture it was trained with")
    target = model.state_dict()
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()}, strict=True)
    return model


# ---------------------------------------------------------------- atomic outputs

def check_writable(path: Path, force: bool) -> None:
    """Fail before any work if the output exists (without force) or its folder is not writable."""
    if path.exists() and not force:
        raise OutputError(f"output {path} exists; pass --force to overwrite it or choose another --output")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist; create it or choose another --output")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output folder {parent} is not writable; choose another --output")


@contextmanager
def _atomic_file(path: Path, fix: str) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename it onto `path` only if the block succeeds."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path} ({e.strerror}); {fix}") from None
        raise


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], force: bool = False) -> Path:
    """Write tensors + metadata atomically (temp file in the same folder, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    check_writable(path, force)
    with _atomic_file(path, "choose another --output") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path


def write_bytes(path: str | Path, data: bytes, fix: str = "choose another output folder") -> Path:
    """Write a small file atomically (reports, caches): readers never see a half-written file."""
    path = Path(path)
    with _atomic_file(path, fix) as tmp:
        tmp.write_bytes(data)
    return path


def write_directory(path: str | Path, fill: Callable[[Path], None], force: bool = False) -> Path:
    """Write a folder atomically: `fill` writes into a temporary sibling, which then replaces `path`."""
    path = Path(path)
    check_writable(path, force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        fill(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path} ({e.strerror}); choose another --output") from None
        raise
    return path


def metadata_for(fields: dict[str, object]) -> dict[str, str]:
    """safetensors metadata must be str -> str: scalars as text, the rest as JSON, keys prefixed."""
    out = {}
    for k, v in fields.items():
        out[META_PREFIX + k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return out


def read_metadata_fields(metadata: dict[str, str]) -> dict[str, object]:
    """Inverse of metadata_for (values that are not JSON stay text)."""
    out: dict[str, object] = {}
    for k, v in metadata.items():
        if not k.startswith(META_PREFIX):
            continue
        try:
            out[k[len(META_PREFIX):]] = json.loads(v)
        except json.JSONDecodeError:
            out[k[len(META_PREFIX):]] = v
    return out
