"""Read, check and write checkpoints: safetensors only, outputs published atomically and never by surprise.

Inputs are never modified. An output is written to a temporary file in the
destination folder and published in one step: without `--force` by a hard link
that fails if the name exists (so two concurrent runs cannot both "win"), with
`--force` by a rename that replaces only a checkpoint or an adapter folder this
tool wrote. A crash, Ctrl-C or SIGTERM leaves no half-written file behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import struct
import tempfile
from pathlib import Path
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, NamedTuple, Optional

from .errors import CheckpointError, OutputError
from .interrupts import signals_deferred

if TYPE_CHECKING:  # torch is imported where it is used, so `unlearn --help` and request checks stay instant
    import torch
    from torch import nn

META_PREFIX = "unlearn."
TMP_PREFIX = ".unlearn-"  # temporary names do not derive from the output's name, so a long name cannot overflow them
STAGED_SUFFIX = ".staged"  # a StagedOutput's folder: an output written, not yet published
HF_CONFIG, HF_WEIGHTS = "config.json", "model.safetensors"  # a transformers save_pretrained folder
HF_EXTRA = ("preprocessor_config.json",)  # copied into a merged save_pretrained folder output when the input has it
# Files `unlearn apply --adapter-only` writes (and, for a save_pretrained folder output, config.json, model.safetensors
# and preprocessor_config.json); --force replaces a folder holding these, with our marker, and nothing else.
ADAPTER_FILES = frozenset({"adapter_config.json", "adapter_model.safetensors", "unlearn_metadata.json", "README.md",
                           HF_CONFIG, HF_WEIGHTS, *HF_EXTRA})
ADAPTER_MARKER = "unlearn_metadata.json"

# Outputs published by this process (for an honest message when it is interrupted afterwards).
PUBLISHED: list[Path] = []


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _regular_file(path: Path, what: str, fix: str) -> None:
    """Refuse folders, FIFOs and devices before opening anything (reading a FIFO would hang)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path} not found; {fix}") from None
    except OSError as e:
        raise CheckpointError(f"{what} {path} cannot be read ({e.strerror}); {fix}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{what} {path} is a folder; {fix}")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{what} {path} is not a regular file; {fix}")
    if not utf8_path(path):
        raise CheckpointError(f"{what} {path}: its path is not valid UTF-8, which safetensors cannot open; rename it (or a folder above it)")


def utf8_path(path: Path) -> bool:
    """Whether `path` (made absolute) is valid UTF-8: safetensors opens and writes files by UTF-8 name only, and a name
    of other bytes (os.fsdecode's surrogates) would fail there, after the work."""
    try:
        os.path.abspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a .safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    _regular_file(path, "checkpoint", "give the path of a .safetensors file (for an hf: model, of its save_pretrained folder)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad header
        raise CheckpointError(f"checkpoint {path} is not a valid safetensors file ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); convert it with safetensors.torch.save_file(model.state_dict(), path)") from None
    return tensors, metadata


def non_finite(tensors: dict[str, torch.Tensor]) -> list[tuple[str, int, int]]:
    """(name, non-finite count, size) of every floating tensor holding NaN or Inf."""
    import torch

    out = []
    for name, t in tensors.items():
        if t.is_floating_point() or t.is_complex():
            if t.is_floating_point() and t.element_size() == 1:  # float8: torch has no isfinite for it
                t = t.float()
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                out.append((name, bad, t.numel()))
    return out


def check_finite(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """A checkpoint with NaN or Inf weights is corrupt (or its training diverged): refuse it, naming the tensor."""
    bad = non_finite(tensors)
    if bad:
        name, count, size = bad[0]
        more = f" (and {len(bad) - 1} more tensor(s))" if len(bad) > 1 else ""
        raise CheckpointError(f"checkpoint {path}: tensor {name} holds {count} of {size} NaN/Inf values{more}; "
                              "the file is corrupt or its training diverged; give a checkpoint with finite weights")


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
    """Load a checkpoint strictly, or say which keys/shapes differ and how to fix it; refuse non-finite weights.

    Tensors are cast to the model's dtype (fp32 for computing); callers that write a drop-in
    replacement cast back to the checkpoint's own dtypes (`dtypes_of`).
    """
    diffs = mismatches(model, state)
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; +{len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise CheckpointError(f"checkpoint {path} does not match {arch}: {shown}; set model.arch/kwargs to the architecture it was trained with")
    target = model.state_dict()
    whole = [k for k, v in target.items() if v.is_floating_point() and not state[k].is_floating_point()]
    if whole:  # cast on loading, weights under 1 became zeros: the model would predict one class and unlearn nothing
        dtype = state[whole[0]].dtype  # complex: cast to real, the imaginary part was dropped
        copy = "a complex" if dtype.is_complex else "a boolean" if str(dtype) == "torch.bool" else "an integer"
        raise CheckpointError(f"checkpoint {path}: {whole[0]}{f' and {len(whole) - 1} more' if len(whole) > 1 else ''} hold "
                              f"{str(dtype).removeprefix('torch.')} values where {arch} has floating-point weights; "
                              f"give the checkpoint as training saved it (float32, bfloat16 or float16), not {copy} copy")
    check_finite(state, path)
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()}, strict=True)
    return model


def dtypes_of(state: dict[str, torch.Tensor]) -> dict[str, torch.dtype]:
    return {k: v.dtype for k, v in state.items()}


# ---------------------------------------------------------------- output checks (before any work)

def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode() -> int:
    """What open(path, 'w') would give a new file: 0666 minus the umask."""
    return 0o666 & ~_umask()


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then a JSON object."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:9] == b"{"


def looks_like_data_file(path: Path) -> bool:
    """A safetensors file holding a data set (keys x and y, as the `tensors` source reads them), not a model this tool
    wrote (its metadata says so, whatever its tensors are named): `merge --force`, which has no request to tell its data
    files, replaced one with a checkpoint."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 16 << 20:  # no safetensors header is that long (the reader refuses it too)
                return False
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return False
    ours = any(str(k).startswith(META_PREFIX) for k in (header.get("__metadata__") or {}))
    return not ours and {"x", "y"} <= set(header)


def is_our_adapter_folder(path: Path) -> bool:
    """A folder `unlearn apply --adapter-only` wrote: only its files, with our metadata marker."""
    try:
        entries = list(path.iterdir())
    except OSError:
        return False
    names = {e.name for e in entries}
    if ADAPTER_MARKER not in names or not names <= ADAPTER_FILES or any(not e.is_file() or e.is_symlink() for e in entries):
        return False
    try:
        marker = json.loads((path / ADAPTER_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and str(marker.get(META_PREFIX + "format", "")).startswith("unlearn/")


EXACT_FILES = frozenset({"manifest.json", "base.safetensors", "assignment.safetensors", "components"})


def is_our_exact_folder(path: Path) -> bool:
    """A folder `unlearn train --exact` or an exact deletion wrote: only its files, with our manifest format."""
    try:
        entries = {e.name: e for e in path.iterdir()}
        comps = list((path / "components").iterdir()) if (path / "components").is_dir() else []
        manifest = json.loads((path / "manifest.json").read_text()) if (path / "manifest.json").is_file() else None
    except (OSError, ValueError):
        return False
    return (isinstance(manifest, dict) and str(manifest.get("format", "")).startswith("unlearn-exact/")
            and set(entries) <= EXACT_FILES and not any(e.is_symlink() for e in entries.values())
            and all(c.is_file() and not c.is_symlink() and c.name.endswith(".safetensors") for c in comps))


def is_our_folder(path: Path) -> bool:
    """A folder this tool wrote and --force may replace: an adapter folder or an exact-unlearning artifact."""
    return is_our_adapter_folder(path) or is_our_exact_folder(path)


class Protected(NamedTuple):
    """An input folder an output may not be or hold, but may be written inside (a data folder, a torchvision root).
    A plain Path in `protect` may not be inside either."""

    path: Path


def protected_inputs(request: Any) -> dict[str, Any]:
    """The request's inputs (Request.inputs) as check_output's `protect` entries."""
    return {label: Protected(p) if inside_ok else p for label, (p, inside_ok) in request.inputs().items()}


def refuse_inside_inputs(path: Path, request: Any, what: str, flag: str) -> None:
    """A folder this run creates (a report folder, a ledger and its forgotten sets) may not lie inside an input folder
    whose every sub-folder is read (an imagefolder, an hf: model folder): in an imagefolder it became a new class, and
    the next run on the request failed."""
    for label, p in protected_inputs(request).items():
        if p is not None and not isinstance(p, Protected) and _inside(Path(os.path.abspath(path)), Path(os.path.abspath(p))):
            raise OutputError(f"{what} {path} is inside the {label} {p}; inputs are never modified, choose another {flag}")


def _inside(path: Path, folder: Path) -> bool:
    """`path` lies in the existing `folder`; resolved, so a link into the folder counts too."""
    return folder.is_dir() and folder.resolve() in path.resolve().parents


def check_output(path: Path, kind: str, force: bool, protect: Mapping[str, Any] = {}, flag: str = "--output") -> None:
    """Fail before any work if the output cannot or must not be written.

    kind is "file" (a checkpoint) or "dir" (an adapter folder). With `force`, an existing output is
    replaced only if it is what this tool writes there: a safetensors file, or an adapter folder
    holding only our files. The output may never be, or contain, a protected path (the input
    checkpoint, the request).
    """
    path = Path(path)
    absolute = Path(os.path.abspath(path))
    parent = absolute.parent
    if not utf8_path(absolute):
        raise OutputError(f"output {path}: its path is not valid UTF-8, which safetensors cannot write; choose a UTF-8 name for {flag}")
    if len(os.fsencode(path.name)) > _name_max(parent if parent.is_dir() else Path(".")):
        raise OutputError(f"output name {path.name[:40]}... is longer than the file system allows ({_name_max(parent)} bytes); choose a shorter {flag}")
    for label, p in dict(protect).items():
        if p is None:
            continue
        inside_ok = isinstance(p, Protected)
        p = p.path if inside_ok else p
        q = Path(os.path.abspath(p))
        if q == absolute:
            raise OutputError(f"output {path} is the {label}; inputs are never overwritten, choose another {flag}")
        if os.path.exists(absolute) and os.path.exists(q) and absolute.resolve() == q.resolve():
            raise OutputError(f"output {path} is a link to the {label}; inputs are never overwritten, choose another {flag}")
        if absolute in q.parents:
            raise OutputError(f"output {path} is a folder that holds the {label} {p}; inputs are never overwritten, choose another {flag}")
        if not inside_ok and _inside(absolute, q):
            raise OutputError(f"output {path} is inside the {label} {p}; inputs are never modified, choose another {flag}")
    if not parent.is_dir():
        raise OutputError(f"output folder {path.parent} does not exist; create it or choose another {flag}")
    if os.path.lexists(absolute):
        st = os.stat(absolute) if absolute.exists() else os.lstat(absolute)
        if kind == "file" and stat.S_ISDIR(st.st_mode):
            raise OutputError(f"output {path} is a folder; give a file name for the checkpoint ({flag})")
        if kind == "dir" and not stat.S_ISDIR(st.st_mode):
            raise OutputError(f"output {path} exists and is not a folder; this output is a folder, choose another {flag}")
        if not force:
            raise OutputError(f"output {path} exists; pass --force to overwrite it or choose another {flag}")
        if kind == "file" and not (stat.S_ISREG(st.st_mode) and looks_like_safetensors(absolute)):
            raise OutputError(f"output {path} exists and is not a safetensors checkpoint; --force replaces only checkpoints, choose another {flag}")
        if kind == "file" and looks_like_data_file(absolute):
            raise OutputError(f"output {path} is a data file (safetensors with keys x and y), not a checkpoint; --force replaces only "
                              f"checkpoints, choose another {flag}")
        if kind == "dir" and not is_our_folder(absolute):
            raise OutputError(f"output {path} is a folder holding files this tool did not write; --force replaces only an adapter folder "
                              f"written by `unlearn apply --adapter-only` or an exact artifact, choose another {flag}")
    problem = not_writable(parent)
    if problem:
        raise OutputError(f"output folder {path.parent} is not writable ({problem}); choose another {flag}")


def not_writable(folder: Path) -> Optional[str]:
    """Why a file cannot be created in `folder`, or None. Creating one is the only reliable test (root ignores
    permission bits; read-only mounts; quotas; /proc)."""
    try:
        with signals_deferred():  # a signal between creating and removing the probe left it behind
            fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".probe", dir=folder)
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        return str(e.strerror or e)
    return None


# ---------------------------------------------------------------- atomic, no-clobber publishing

def _published(path: Path) -> None:
    if not _is_staging(path.parent):  # a staged output is published later, under its own name (StagedOutput)
        PUBLISHED.append(path)


def _is_staging(folder: Path) -> bool:
    return folder.name.startswith(TMP_PREFIX) and folder.name.endswith(STAGED_SUFFIX)


def _publish_file(tmp: Path, path: Path, force: bool, flag: str) -> None:
    """Move a finished temporary file onto `path` in one step; without force, never over an existing file."""
    if force:
        os.replace(tmp, path)
        return
    try:
        try:
            os.link(tmp, path)  # fails with EEXIST if the name appeared meanwhile: no check-then-rename race
        except FileExistsError:
            raise
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
                raise
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)  # no hard links here: reserve the name
            os.close(fd)
            os.replace(tmp, path)
    except FileExistsError:
        raise OutputError(f"output {path} appeared while this run was writing (another run?); it was kept; pass --force or choose another {flag}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _write_atomically(path: Path, write: Callable[[Path], None], force: bool, fix: str, flag: str, mode: Optional[int] = None,
                      noted: bool = True) -> str:
    """Write via `write(tmp)` into a temporary file beside `path`, publish it, return the sha256 of what was published."""
    if mode is None:
        mode = file_mode(path, keep=force)
    try:
        tmp = stage_beside(path, write, mode)
    except OSError as e:
        raise OutputError(f"cannot write {path} ({e.strerror or e}); {fix}") from None
    try:
        digest = sha256_file(tmp)
        with signals_deferred():  # published and noted together: a signal meanwhile is told the output exists
            _publish_file(tmp, path, force, flag)
            if noted:
                _published(path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path} ({e.strerror or e}); {fix}") from None
        raise
    return digest


def file_mode(path: Path, keep: bool = True) -> int:
    """The permissions a file written to `path` gets: those of the file it replaces (when `keep` and there is one),
    else a new file's."""
    return stat.S_IMODE(os.stat(path).st_mode) if keep and path.is_file() else _new_file_mode()


def stage_beside(path: Path, write: Callable[[Path], None], mode: int) -> Path:
    """A temporary file beside `path` (same file system: publishing it is a rename) holding what `write(tmp)` wrote,
    with `mode`. Removed again when anything fails; the OSError propagates for the caller's one-line message."""
    fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, mode)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor with a storage of its own: safetensors refuses tensors that share memory, which a model with tied
    weights (one module under two names, an embedding reused as the output layer) has in its state_dict. Every key is
    kept, so the output has the input's keys; loading it ties them again."""
    seen: set[int] = set()
    out = {}
    for name in sorted(tensors):
        t = tensors[name]
        if t.numel():
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                t = t.clone()
            seen.add(ptr)
        out[name] = t
    return out


def save_canonical(tensors: dict[str, torch.Tensor], path: str | Path, metadata: Optional[dict[str, str]] = None) -> None:
    """safetensors.torch.save_file, then the header rewritten with sorted keys.

    safetensors keeps metadata in a hash map whose order changes from run to run, so the same
    tensors and metadata would give different bytes; sorted, they give the same file every time.
    """
    from safetensors.torch import save_file

    save_file(_unshared(tensors), str(path), metadata=metadata)
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        text += b" " * (n - len(text)) if len(text) <= n else b""
        if len(text) == n:  # same length (the usual case): rewrite the header in place
            f.seek(8)
            f.write(text)
            return
    data_start = 8 + n  # a header that serialises longer: rewrite the file around the data
    text += b" " * ((8 - len(text) % 8) % 8)
    rewritten = Path(str(path) + ".hdr")
    with open(path, "rb") as src, open(rewritten, "wb") as dst:
        dst.write(struct.pack("<Q", len(text)) + text)
        src.seek(data_start)
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(rewritten, path)


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], force: bool = False,
                      protect: Mapping[str, Any] = {}, flag: str = "--output") -> str:
    """Write tensors + metadata atomically; returns the sha256 of the published file."""
    path = Path(path)
    check_output(path, "file", force, protect, flag)
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return _write_atomically(path, lambda tmp: save_canonical(cpu, tmp, metadata), force, f"choose another {flag}", flag)


def replace_atomically(path: str | Path, write: Callable[[Path], None], fix: str = "choose another output folder",
                       noted: bool = True) -> str:
    """Write a file via `write(tmp)` and replace any previous version in one step (caches, reports); returns its sha256.
    `noted`: named by an interrupted command as what it wrote (not a part of a record written with its output)."""
    return _write_atomically(Path(path), write, force=True, fix=fix, flag="--output", noted=noted)


def write_bytes(path: str | Path, data: bytes, fix: str = "choose another output folder") -> Path:
    """Write a small file atomically, replacing a previous version (reports, caches): readers never see half a file."""
    path = Path(path)
    _write_atomically(path, lambda tmp: tmp.write_bytes(data), force=True, fix=fix, flag="--report-dir")
    return path


def write_directory(path: str | Path, fill: Callable[[Path], None], force: bool = False,
                    protect: Mapping[str, Any] = {}, flag: str = "--output") -> Path:
    """Write a folder atomically: `fill` writes into a temporary sibling, which is then published as `path`.

    Without force the name is reserved with mkdir (fails if it exists) and the finished folder renamed onto
    the empty reservation; with force an existing folder is replaced only if this tool wrote it.
    """
    path = Path(path)
    check_output(path, "dir", force, protect, flag)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise OutputError(f"cannot write {path} ({e.strerror}); choose another {flag}") from None
    try:
        fill(tmp)
        for f in tmp.rglob("*"):  # what a normal write gives (some writers, e.g. safetensors', create files 0600)
            if f.is_file() and not f.is_symlink():
                os.chmod(f, _new_file_mode())
        os.chmod(tmp, 0o777 & ~_umask())
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path} ({e.strerror or e}); choose another {flag}") from None
        raise
    with signals_deferred():  # the rename, the old folder's removal and the note: a signal meanwhile waits for all three
        _publish_folder(tmp, path, force, flag)
        _published(path)
    return path


def _publish_folder(tmp: Path, path: Path, force: bool, flag: str) -> None:
    """Move a finished temporary folder onto `path`: with force over a folder this tool wrote (the previous one is put
    back if the move fails), without force only onto a name nobody took meanwhile. `tmp` is gone afterwards."""
    reserved = old = None
    try:
        if path.exists():
            if not force:
                raise OutputError(f"output {path} appeared while this run was writing (another run?); it was kept; pass --force or choose another {flag}")
            if not is_our_folder(path):  # checked again right before replacing
                raise OutputError(f"output {path} changed while this run was writing; it was kept; choose another {flag}")
            old = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, suffix=".old", dir=path.parent))
            os.rename(path, old / "previous")
            os.rename(tmp, path)
        else:
            try:
                os.mkdir(path)
            except FileExistsError:
                raise OutputError(f"output {path} appeared while this run was writing (another run?); it was kept; pass --force or choose another {flag}") from None
            reserved = path
            os.rename(tmp, path)  # onto the empty folder we just made
            reserved = None
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if reserved is not None:
            try:
                os.rmdir(reserved)
            except OSError:
                pass
        if old is not None and (old / "previous").exists() and not path.exists():
            os.rename(old / "previous", path)  # put the previous folder back
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path} ({e.strerror or e}); choose another {flag}") from None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def publish_lock(*paths: Path) -> Iterator[None]:
    """An exclusive lock on the folder of each path (the nearest one that exists) while an output and its record are
    published: two runs writing the same output (--force) or the same --ledger publish one after the other, never
    interleaved (the output of one beside the ledger of the other). POSIX advisory locks (flock); where there are
    none, the block runs as is."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    folders = set()
    for p in paths:
        folder = Path(os.path.abspath(p)).parent
        while not folder.is_dir() and folder != folder.parent:
            folder = folder.parent
        folders.add(folder)
    fds: list[tuple[Path, int]] = []
    try:
        for folder in sorted(folders - _LOCKED, key=str):  # one order everywhere: two runs never wait on each other crosswise
            try:
                fd = os.open(folder, os.O_RDONLY)
            except OSError:  # a folder we cannot open: publishing there fails with its own message
                continue
            fds.append((folder, fd))
            fcntl.flock(fd, fcntl.LOCK_EX)
            _LOCKED.add(folder)
        yield
    finally:
        for folder, fd in reversed(fds):
            _LOCKED.discard(folder)
            os.close(fd)  # closing the only descriptor releases its lock


_LOCKED: set[Path] = set()  # folders this process holds (a nested publish_lock takes only the others: flock is per descriptor)


class StagedOutput:
    """An output written first into a private folder beside its destination, then published in one step, or discarded.

    `apply` writes its output here and publishes it together with its ledger entries; with `--audit --no-keep-on-fail`
    only once the verdict is in, so that a failing audit leaves an earlier output (--force) and its ledger as they
    were. Leaving the `with` block discards what was not published (an error, Ctrl-C, a signal).
    """

    def __init__(self, path: str | Path, force: bool, protect: Mapping[str, Any] = {}, flag: str = "--output"):
        self.path, self.force, self.protect, self.flag = Path(path), force, dict(protect), flag
        try:
            self.folder = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, suffix=STAGED_SUFFIX, dir=Path(os.path.abspath(self.path)).parent))
        except OSError as e:
            raise OutputError(f"cannot write {self.path} ({e.strerror}); choose another {flag}") from None
        self.staged = self.folder / self.path.name  # where the writer writes (a file or a folder); the same name as the output
        self.published = False

    def publish(self) -> None:
        """Move the staged output onto its destination, as its writer would have published it (same rules for --force)."""
        try:
            with publish_lock(self.path), signals_deferred():  # waiting for the lock stays interruptible
                self._publish()
                self.published = True
                _published(self.path)
        finally:
            self.discard()

    def _publish(self) -> None:
        try:
            # checked again: what is there now may not be what was there when the run began (a folder, a file of yours)
            check_output(self.path, "dir" if self.staged.is_dir() else "file", self.force, self.protect, self.flag)
            if self.staged.is_dir():
                _publish_folder(self.staged, self.path, self.force, self.flag)
            else:
                if self.force and self.path.is_file():  # --force keeps the replaced file's mode, as a direct write does
                    os.chmod(self.staged, stat.S_IMODE(os.stat(self.path).st_mode))
                _publish_file(self.staged, self.path, self.force, self.flag)
        except OSError as e:
            raise OutputError(f"cannot write {self.path} ({e.strerror or e}); choose another {self.flag}") from None

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "StagedOutput":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.discard()


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
