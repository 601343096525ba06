"""Data sources named by a request, loaded as labelled image tensors.

Every source yields (x float32 tensor, y int64) in a fixed order; forget indices
address the train split in exactly that order. Nothing here unpickles: CIFAR is
read from its official *binary* distribution, SVHN from its .mat files, the
MNIST family from its idx files (through torchvision), tensors from
safetensors or npz (allow_pickle=False).

Image files (`imagefolder`, a `csv` manifest) are never all in memory: each image is read
when a batch needs it, by DataLoader workers when `num_workers` > 0 (`--num-workers`).
"""

from __future__ import annotations

import math
import os
import stat
import struct
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .errors import DataError, UnlearnError
from .interrupts import raise_interrupt_behind
from .request import DataSpec, Normalize, Request

if TYPE_CHECKING:
    from .tasks import Task

DIGITS_TEST_SIZE = 360  # scikit-learn digits: 1797 images -> 1437 train / 360 test
DIGITS_SPLIT_SEED = 0


class LabelledData:
    """A labelled data set: `len`, `targets`, `subset(indices)`, `batches(...)`.

    In-memory tensors are sliced directly (fast path for small data); a subset of them is a view (row positions
    into the same tensor, never a copy: the retain set of 50k CIFAR images would otherwise hold 0.6 GB again).
    Other sources (image files, read lazily) go through a DataLoader with `num_workers` worker processes.
    """

    def __init__(self, dataset: Dataset, targets: torch.Tensor, x: Optional[torch.Tensor] = None, ids: Optional[list[str]] = None,
                 num_workers: int = 0, rows: Optional[torch.Tensor] = None):
        self.dataset = dataset
        # class labels are int64; regression targets stay float, (N,) or (N, k)
        self.targets = targets if targets.dtype.is_floating_point else targets.long()
        self._x = x  # set when all inputs are in memory (for a subset: the whole tensor it is a view of)
        self._rows = rows  # a subset's positions in _x (None: all of _x, in order)
        self.ids = ids  # record IDs, one per sample, when the source has them (strings)
        self.labelled = True  # False: a train split without labels (targets are -1, or the original's predictions)
        self.load_notes: list[str] = []  # what reading the source changed about the inputs, for the run's summary
        self.num_workers = num_workers  # DataLoader workers for lazily read data (ignored in memory)
        self._seeded: dict[tuple[int, int], "LabelledData"] = {}  # seeded_sample's results, one object per (k, seed)

    @classmethod
    def from_tensors(cls, x: torch.Tensor, y: torch.Tensor, ids: Optional[list[str]] = None) -> "LabelledData":
        return cls(torch.utils.data.TensorDataset(x, y), y, x=x, ids=ids)

    @property
    def x(self) -> Optional[torch.Tensor]:
        """All inputs when they are in memory (a subset's are gathered: a copy), else None."""
        if self._x is None or self._rows is None:
            return self._x
        return self._x[self._rows]

    def _inputs(self, idx: torch.Tensor) -> torch.Tensor:
        assert self._x is not None
        return self._x[idx if self._rows is None else self._rows[idx]]

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "LabelledData":
        idx = torch.as_tensor(indices, dtype=torch.long)
        ids = [self.ids[i] for i in idx.tolist()] if self.ids is not None else None
        if self._x is not None:
            rows = idx if self._rows is None else self._rows[idx]
            out = LabelledData(torch.utils.data.Subset(self.dataset, idx.tolist()), self.targets[idx], x=self._x, ids=ids, rows=rows)
        else:
            out = LabelledData(torch.utils.data.Subset(self.dataset, idx.tolist()), self.targets[idx], ids=ids,
                               num_workers=self.num_workers)
        out.labelled = self.labelled
        return out

    def seeded_sample(self, k: int, seed: int) -> "LabelledData":
        """At most k samples at seeded positions (in data order); the data itself when it holds no more than k.

        The same object for the same (k, seed), so predictions remembered for it (`evaluate.remember_predictions`)
        are found again: apply's before-summary and a method sampling the test set with the same rule share them.
        """
        if not k or len(self) <= k:
            return self
        if (k, seed) not in self._seeded:
            keep = np.sort(np.random.default_rng(seed).choice(len(self), size=k, replace=False))
            self._seeded[(k, seed)] = self.subset(torch.from_numpy(keep))
        return self._seeded[(k, seed)]

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: Optional[torch.Generator] = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x, y) CPU batches; shuffled with `generator` when asked.

        A shuffled pass is a training pass: a last batch of one sample joins the batch before it, because BatchNorm
        in training mode cannot normalise one sample (an error at 1x1 spatial size, a meaningless update otherwise).
        Under `distributed.data_parallel()` a shuffled (training) pass yields this rank's part of each global batch.
        """
        from .distributed import shard
        from .precision import pin_batches

        pin = pin_batches()
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        groups = [order[i:i + batch_size] for i in range(0, n, batch_size)]
        if shuffle and len(groups) > 1 and len(groups[-1]) == 1:
            groups[-2:] = [torch.cat(groups[-2:])]
        if self._x is not None:
            for idx in groups:
                x, y = self._inputs(idx), self.targets[idx]
                x, y = shard(x, y) if shuffle else (x, y)
                yield (x.pin_memory(), y.pin_memory()) if pin else (x, y)
            return
        loader = DataLoader(self.dataset, batch_sampler=[g.tolist() for g in groups], num_workers=self.num_workers, pin_memory=pin,
                            collate_fn=collate_images)
        for x, y in loader:
            y = torch.as_tensor(y)
            x, y = x.float(), (y.float() if y.dtype.is_floating_point else y.long())
            yield shard(x, y) if shuffle else (x, y)

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch (x, y) at positions `idx`."""
        if self._x is not None:
            return self._inputs(idx), self.targets[idx]
        items = [self.dataset[int(i)] for i in idx]
        x, _ = collate_images([(torch.as_tensor(a).float(), 0) for a, _ in items])  # images of two sizes: named, not a crash
        return x, self.targets[idx]

    def sample(self, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch of k samples (with replacement only if k > len)."""
        n = len(self)
        idx = torch.randperm(n, generator=generator)[:k] if k <= n else torch.randint(n, (k,), generator=generator)
        return self.take(idx)

    def input_shape(self) -> tuple[int, ...]:
        x, _ = self.dataset[0]
        return tuple(torch.as_tensor(x).shape)


def _bytes_of(t: torch.Tensor) -> np.ndarray:
    """The tensor's bytes as a flat uint8 array sharing its memory (hashlib reads it in place: no 0.6 GB copy at 50k CIFAR images)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def fingerprint(data: LabelledData) -> str:
    """sha256 over the inputs and labels when in memory; else labels, length, the file list and a strided sample of inputs."""
    import hashlib
    import json

    h = hashlib.sha256()
    h.update(f"n={len(data)}\n".encode())
    h.update(_bytes_of(data.targets))
    if data.x is not None:
        h.update(f"{data.x.dtype}|{tuple(data.x.shape)}\n".encode())
        h.update(_bytes_of(data.x))
    else:
        samples = getattr(data.dataset, "samples", None)  # imagefolder: (path, class) pairs
        if samples is not None:
            h.update(json.dumps([[str(a), int(b)] for a, b in samples]).encode())
        n = len(data)
        idx = torch.unique(torch.linspace(0, n - 1, min(n, 64)).long())
        x, _ = data.take(idx)
        h.update(_bytes_of(x.float()))
    if data.ids is not None:
        h.update(json.dumps(data.ids).encode())
    return h.hexdigest()


@dataclass
class Splits:
    """What a request's data resolves to: train split, test split, and the forget/retain partition."""

    train: LabelledData
    test: LabelledData
    forget_idx: torch.Tensor
    retain_idx: torch.Tensor
    scenario: str  # "class" or "sample"
    forget_classes: list[int]
    missing_ids: list[str] = field(default_factory=list)  # requested IDs not in the data (--allow-missing)
    excluded: int = 0  # train samples removed because earlier requests in the lineage forgot them
    already_forgotten: int = 0  # of this request's samples, how many earlier requests had forgotten already
    forget_positions: Optional[torch.Tensor] = None  # the forget set as positions in the full train split (for the ledger)
    forget_ids: Optional[list[str]] = None  # and as record IDs, when the data has them
    target_range: Optional[tuple[float, float, int]] = None  # regression range unlearning: (min, max, column)
    notes: list[str] = field(default_factory=list)  # what loading changed about the data (e.g. integer targets read as float)

    @cached_property
    def forget(self) -> LabelledData:
        """Built once (a view of the train split's tensors, or a Subset of its files)."""
        return self.train.subset(self.forget_idx)

    @cached_property
    def retain(self) -> LabelledData:
        return self.train.subset(self.retain_idx)


SUMMARY_SETS = ("retain", "forget", "test")  # what apply's before/after summary evaluates


def summary_seed(seed: int, name: str) -> int:
    """The seed of the summary's sample of split `name` (retain or test) for a run seeded `seed`; a method drawing
    the test set with the same seed and size (RFA's held-out sample) gets the very samples the summary evaluated."""
    return seed * 7919 + 101 + SUMMARY_SETS.index(name)


# ---------------------------------------------------------------- preprocessing

def _normalize(x: torch.Tensor, norm: Optional[Normalize], where: str) -> torch.Tensor:
    if norm is None:
        return x
    mean, std = _channel_stats(norm, x.shape[1] if x.dim() == 4 else 1, where)
    shape = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
    return (x - mean.to(x.dtype).view(*shape)) / std.to(x.dtype).view(*shape)


def _channel_stats(norm: Normalize, channels: int, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`normalize`'s mean and std as (1, C, 1, 1) float64 (C = 1 when one value serves every channel)."""
    if len(norm.mean) not in (1, channels):
        raise DataError(f"{where}.preprocess.normalize has {len(norm.mean)} values but the images have {channels} channels; give one value per channel")
    return (torch.tensor(norm.mean, dtype=torch.float64).view(1, -1, 1, 1),
            torch.tensor(norm.std, dtype=torch.float64).view(1, -1, 1, 1))


def available_memory() -> int:
    """Bytes of memory available to this process now (a generous guess when the OS will not say)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception as e:  # noqa: BLE001 - psutil missing or unsupported
        raise_interrupt_behind(e)
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 1 << 40


def check_fits_in_memory(n_values: int, where: str, fix: str) -> None:
    """Refuse an in-memory tensor that would not fit (e.g. resize: 100000), instead of dying in the allocator."""
    need = 4 * n_values
    have = available_memory()
    if need > 0.8 * have:
        raise DataError(f"{where}: the data would need {need / 2**30:.1f} GiB in memory but {have / 2**30:.1f} GiB are available; {fix}")


RESIZE_PEAK_COPIES = 4  # measured: resize 4096 on 20 images (4 GiB per split) peaked at 15 GB, where one copy was checked


def check_resize_fits(n_images: int, channels: int, size: int, where: str) -> None:
    """Refuse a resize whose images would not fit with RESIZE_PEAK_COPIES copies of them held at the peak (the split,
    normalize's two temporaries or the chunk being converted, the other split and the model's first batch); the
    message names the largest size that would."""
    per_pixel = 4 * RESIZE_PEAK_COPIES * n_images * channels
    need, have = per_pixel * size * size, available_memory()
    if need > 0.8 * have:
        fits = int((0.8 * have / per_pixel) ** 0.5)
        fix = f"use preprocess.resize {fits} or smaller" if fits else "give a smaller data set"
        raise DataError(f"{where}.preprocess.resize {size} would need ~{need / 2**30:.1f} GiB in memory ({n_images} images of "
                        f"{channels}x{size}x{size} float32, {RESIZE_PEAK_COPIES} copies at the peak) but {have / 2**30:.1f} GiB "
                        f"are available; {fix}")


def _resize(x: torch.Tensor, size: Optional[int], where: str = "data") -> torch.Tensor:
    if size is None:
        return x
    if x.dim() != 4:  # it returned them unchanged, silently
        raise DataError(f"{where}.preprocess.resize: the inputs have shape {tuple(x.shape)[1:]} per sample, not images (C, H, W); "
                        "drop resize, or give x as (N, C, H, W)")
    check_resize_fits(x.shape[0], x.shape[1], size, where)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


CONVERT_CHUNK = 4096  # images converted at a time: the float copy of the whole set is the only large allocation


def _uint8_images_to_tensor(images: np.ndarray, spec: DataSpec, where: str) -> torch.Tensor:
    """(N, H, W[, C]) uint8 -> (N, C, H, W) float32 in [0, 1], resized and normalised.

    Converted in chunks into one preallocated tensor, so peak memory is the uint8 images plus the result
    (a whole-set conversion would hold three float copies at once: 1.8 GB more at 50k CIFAR images).
    """
    if images.dtype != np.uint8 or images.ndim not in (3, 4):  # a float .mat can hold NaN; other layouts are not images
        raise DataError(f"{where}: the images are {images.dtype} with {images.ndim} dimensions, not 8-bit images (N, H, W[, C]); "
                        "give the data set's original files")
    n = images.shape[0]
    c = 1 if images.ndim == 3 else images.shape[3]
    size = spec.preprocess.resize
    h, w = (size, size) if size else images.shape[1:3]
    if size:
        check_resize_fits(n, c, size, where)
    else:
        check_fits_in_memory(n * c * h * w, where, "use a smaller split")
    out = torch.empty((n, c, h, w), dtype=torch.float32)
    scale, shift = _affine(spec.preprocess.normalize, c, where)
    for start in range(0, n, CONVERT_CHUNK):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + CONVERT_CHUNK]))
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
        chunk = out[start:start + len(x)]
        if size:
            chunk.copy_(torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False))
        else:
            chunk.copy_(x)  # uint8 -> float32 in the copy, no temporary
        chunk.mul_(scale).add_(shift)  # in place: x / 255, then normalised, as one affine map per channel
    return out


def _affine(norm: Optional[Normalize], channels: int, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel scale and shift taking uint8 values v to (v / 255 - mean) / std (or v / 255 without `norm`)."""
    if norm is None:
        return torch.tensor(1 / 255.0), torch.tensor(0.0)
    mean, std = _channel_stats(norm, channels, where)
    return (1 / (255.0 * std)).float(), (-mean / std).float()


# ---------------------------------------------------------------- sources

NPZ_KEYS = ("x", "y", "ids")
NPZ_BOMB_RATIO, NPZ_BOMB_BYTES = 1000, 1 << 30  # unpacked more than 1000x its packed size and over 1 GiB: a bomb, not data


def _refuse_npz_bomb(npz: Any, path: Path, where: str) -> None:
    """Before anything is unpacked: an .npz member that would unpack past NPZ_BOMB_BYTES at over NPZ_BOMB_RATIO times its
    compressed size is refused, and so is one whose array (its .npy header's shape) would not fit in memory once read as
    float32 (a 525 KB file took 8.9 GB of memory, with nothing checked)."""
    for info in npz.zip.infolist():
        key = info.filename.removesuffix(".npy")
        if key not in NPZ_KEYS:
            continue
        if info.file_size > NPZ_BOMB_BYTES and info.file_size > NPZ_BOMB_RATIO * max(info.compress_size, 1):
            raise DataError(f"{where}.path: {path}: {key} unpacks to {info.file_size / 2**30:.1f} GiB from {info.compress_size / 2**10:.0f} KiB "
                            "(a decompression bomb, or data that is almost all one value); save the data with np.savez (uncompressed) "
                            "or safetensors")
        with npz.zip.open(info) as member:  # the header only: a few hundred bytes are unpacked
            version = np.lib.format.read_magic(member)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(member)
        _refuse_odd_array(key, tuple(shape), dtype, path, where)
        n = int(np.prod(shape, dtype=np.float64))
        # the array as stored, its float32 copy and a float32 temporary (the finiteness check): values of 4 bytes
        check_fits_in_memory(int(n * (dtype.itemsize / 4 + 2)), f"{where}.path: {path}: {key} {tuple(shape)}",
                             "give a smaller data set, or more memory")


def _refuse_odd_array(key: str, shape: tuple[int, ...], dtype: np.dtype, path: Path, where: str) -> None:
    """An npz array of text, objects, records, dates or extended floats, or a scalar, named by key, dtype and shape (each
    read as "not a readable .safetensors/.npz file (TypeError)", "(ValueError)" or "(IndexError)")."""
    numbers = not dtype.fields and (dtype.kind in "biu" or (dtype.kind == "f" and dtype.itemsize <= 8)
                                    or (dtype.kind == "c" and dtype.itemsize <= 16))
    fix = ("give record IDs as integers, or one per line in a text file named by ids_path" if key == "ids"
           else "save x as float32 (or uint8 images) and y as int64 labels or float targets")
    if not numbers:
        raise DataError(f"{where}.path: {path}: {key} holds {dtype.str if not dtype.fields else 'records'} values (shape {shape}), "
                        f"not numbers; {fix}")
    if not shape:
        raise DataError(f"{where}.path: {path}: {key} is a single value (shape ()), not one per sample; {fix}, one row per sample")


def _load_tensors(spec: DataSpec, path: Path, where: str) -> LabelledData:
    if not path.exists():
        raise DataError(f"{where}.path: {path} not found; give a .safetensors or .npz file with keys x and y")
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise DataError(f"{where}.path: {path} is not a regular file; give a .safetensors or .npz file with keys x and y")
    try:
        if path.suffix.lower() == ".npz":  # UP.NPZ was read as safetensors
            with np.load(path, allow_pickle=False) as f:
                _refuse_npz_bomb(f, path, where)
                arrays = {k: f[k] for k in f.files if k in NPZ_KEYS}  # only what is read: every key was unpacked
            # big-endian arrays (valid numpy, refused by torch) are read in this machine's byte order
            tensors = {k: torch.from_numpy(v if v.dtype.isnative else v.astype(v.dtype.newbyteorder("="))) for k, v in arrays.items()}
        else:
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            for k, t in tensors.items():
                if t.dim() == 0:  # "(IndexError: tuple index out of range)"
                    raise DataError(f"{where}.path: {path}: {k} is a single value (shape ()), not one per sample; save it with one row per sample")
                if t.dtype.is_floating_point and t.element_size() == 1:  # float8: isfinite is not implemented for it
                    tensors[k] = t.float()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise DataError(f"{where}.path: {path} is not a readable .safetensors/.npz file ({type(e).__name__}); save x and y with safetensors.torch.save_file") from None
    missing = [k for k in ("x", "y") if k not in tensors and not (k == "y" and where == "data.train")]
    if missing:
        raise DataError(f"{where}.path: {path} lacks key(s) {', '.join(missing)}; it must hold x (N, ...) float and y (N,) int64")
    x = tensors["x"]
    labelled = "y" in tensors  # a train split may come without labels, for label-free methods (checked in Job.prepare)
    y = tensors["y"] if labelled else torch.full((x.shape[0],), -1, dtype=torch.long)
    if y.dtype.is_floating_point:  # regression targets, (N,) or (N, k); the task decides whether float targets fit
        y = _float_targets(y, x, path, where)
    elif y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"{where}.path: {path}: x has {tuple(x.shape)} and y {tuple(y.shape)}; y must be (N,) with N = len(x)")
    if y.dtype == torch.bool:
        raise DataError(f"{where}.path: {path}: y is boolean; give class labels as integers (int64), or regression targets as floats")
    if x.dtype.is_complex:
        raise DataError(f"{where}.path: {path}: x is complex ({x.dtype}); give real inputs (e.g. the real and imaginary parts as two channels)")
    load_notes = []
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    elif not x.dtype.is_floating_point:
        load_notes.append(f"{where}: x of {str(x.dtype).replace('torch.', '')} read as float values, unscaled (only uint8 is scaled to [0, 1])")
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{where}.path: {path}: x holds NaN or Inf values; clean the data (every input must be finite)")
    x = _as_float32(x, "x", path, where, "the inputs")
    ids = None
    if "ids" in tensors:
        raw = tensors["ids"]
        if raw.dim() != 1 or raw.shape[0] != x.shape[0] or raw.dtype.is_floating_point or raw.dtype == torch.bool:
            raise DataError(f"{where}.path: {path}: ids has dtype {raw.dtype} and shape {tuple(raw.shape)}; record IDs must be (N,) integers (or use ids_path)")
        ids = [str(int(v)) for v in raw.tolist()]
    if spec.ids_path:
        ids = read_id_lines(_resolve(path.parent, spec.ids_path) if not Path(spec.ids_path).is_absolute() else Path(spec.ids_path),
                            f"{where}.ids_path")
        if len(ids) != x.shape[0]:
            raise DataError(f"{where}.ids_path: {len(ids)} IDs for {x.shape[0]} samples; give one ID per line, in the samples' order")
    x = _resize(x, spec.preprocess.resize, where)
    x = _normalize(x, spec.preprocess.normalize, where)
    data = LabelledData.from_tensors(x.contiguous(), y if y.dtype.is_floating_point else y.long(), check_unique_ids(ids, where))
    data.labelled = labelled
    data.load_notes = load_notes
    return data


def _float_targets(y: torch.Tensor, x: torch.Tensor, path: Path, where: str) -> torch.Tensor:
    """Float targets (regression): (N,) or (N, k), finite, as float32."""
    if y.dim() not in (1, 2) or y.shape[0] != x.shape[0]:
        raise DataError(f"{where}.path: {path}: x has {tuple(x.shape)} and y {tuple(y.shape)}; float targets must be (N,) or (N, k) with N = len(x)")
    if not bool(torch.isfinite(y).all()):
        raise DataError(f"{where}.path: {path}: y holds NaN or Inf values; clean the data (every target must be finite)")
    return _as_float32(y, "y", path, where, "the targets")


def _as_float32(t: torch.Tensor, name: str, path: Path, where: str, what: str) -> torch.Tensor:
    """`t` as float32, refusing finite values that float32 cannot hold (a float64 1e39 became Inf, then read "holds
    NaN or Inf", a NaN the user could not find)."""
    out = t.float()
    if not bool(torch.isfinite(out).all()):
        big = float(t[torch.isfinite(t)].abs().max()) if t.numel() else 0.0
        raise DataError(f"{where}.path: {path}: {name} holds values beyond float32's range (up to {big:.3g}); rescale {what}")
    return out


def read_id_lines(path: Path, where: str) -> list[str]:
    """One record ID per line (UTF-8; surrounding blanks stripped; blank lines and # comments skipped)."""
    from .request import read_regular_file

    raw = read_regular_file(path, f"{where}:", "give a text file with one record ID per line")
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{where}: {path} is not UTF-8 text; give one record ID per line") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def check_unique_ids(ids: Optional[list[str]], where: str) -> Optional[list[str]]:
    """Record IDs must name one sample each: a duplicate would make a deletion ambiguous."""
    if ids is None:
        return None
    seen: set[str] = set()
    dups = [i for i in ids if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
    if dups:
        raise DataError(f"{where}: {len(dups)} duplicate record ID(s) in the data (e.g. line/sample of ID #{ids.index(dups[0])}); "
                        "each sample needs its own ID")
    return ids


def _load_digits(spec: DataSpec, role: str, where: str) -> LabelledData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = d.images.astype(np.float32) / 16.0
    idx_train, idx_test = train_test_split(
        np.arange(len(d.target)), test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SPLIT_SEED, stratify=d.target
    )
    idx = idx_train if (spec.split or role) == "train" else idx_test
    x = torch.from_numpy(images[idx]).unsqueeze(1)
    x = _resize(x, spec.preprocess.resize, where)
    x = _normalize(x, spec.preprocess.normalize, where)
    return LabelledData.from_tensors(x.contiguous(), torch.from_numpy(d.target[idx]).long())


DIABETES_TEST_SIZE = 0.2  # scikit-learn diabetes: 442 samples -> 353 train / 89 test
ROTATION_MAX_DEGREES = 45.0  # digits-rotation: each image turned by an angle drawn uniformly from [-45, 45] degrees
ROTATION_SEED = 0
ROTATION_SIZE = 16  # digits upsampled from 8x8 before rotating, so a turned stroke stays a stroke


def _load_diabetes(spec: DataSpec, role: str, where: str) -> LabelledData:
    """scikit-learn's diabetes regression data: 10 features and the disease-progression target, both z-scored over
    the whole data set (fixed statistics, so train and test share them); a fixed 80/20 split."""
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    d = load_diabetes()
    x = d.data.astype(np.float64)
    x = (x - x.mean(0)) / x.std(0)
    y = (d.target - d.target.mean()) / d.target.std()
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=DIABETES_TEST_SIZE, random_state=DIGITS_SPLIT_SEED)
    idx = idx_train if (spec.split or role) == "train" else idx_test
    xt = _normalize(torch.from_numpy(x[idx]).float(), spec.preprocess.normalize, where)
    return LabelledData.from_tensors(xt.contiguous(), torch.from_numpy(y[idx]).float())


def rotated_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn digits upsampled to 16x16 and turned by a known random angle: (images (N, 16, 16) in [0, 1],
    angles in radians (N,), the digit labels (N,)). Fixed seed: the same data on every machine."""
    from scipy.ndimage import rotate, zoom
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(ROTATION_SEED)
    degrees = rng.uniform(-ROTATION_MAX_DEGREES, ROTATION_MAX_DEGREES, len(d.target))
    images = np.empty((len(d.target), ROTATION_SIZE, ROTATION_SIZE), dtype=np.float32)
    for i, (img, deg) in enumerate(zip(d.images, degrees)):
        big = zoom(img / 16.0, ROTATION_SIZE / 8, order=1)
        images[i] = np.clip(rotate(big, deg, reshape=False, order=1, mode="constant", cval=0.0), 0.0, 1.0)
    return images, np.deg2rad(degrees).astype(np.float32), d.target


def _load_digits_rotation(spec: DataSpec, role: str, where: str) -> LabelledData:
    """Image regression from real data: digits turned by a random angle, the angle (radians) the target; the digits
    source's stratified split (1437 train / 360 test)."""
    from sklearn.model_selection import train_test_split

    images, angles, labels = rotated_digits()
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SPLIT_SEED, stratify=labels
    )
    idx = idx_train if (spec.split or role) == "train" else idx_test
    x = torch.from_numpy(images[idx]).unsqueeze(1)
    x = _resize(x, spec.preprocess.resize, where)
    x = _normalize(x, spec.preprocess.normalize, where)
    return LabelledData.from_tensors(x.contiguous(), torch.from_numpy(angles[idx]).float())


# a file of 8-bit images read whole: its bytes, their copy (concatenated, or made writable) and the float32 images, in
# values of 4 bytes per byte on disk; checked from the file's size before reading it (a sparse 8.6 GB CIFAR batch was
# read first, and running out of memory then advised a smaller batch size)
FILE_READ_VALUES_PER_BYTE = 1.5


def _read_cifar_binary(folder: Path, files: list[str], label_bytes: int, label_offset: int) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR binary format: each record is label byte(s) then 3072 bytes (R, G, B planes of 32x32)."""
    record = label_bytes + 3072
    for name in files:
        if not (folder / name).is_file():  # a folder, or a FIFO (reading it would hang) or device of that name
            raise DataError(f"{folder / name} is not a regular file; extract the data set's binary archive there again")
    sizes = {name: os.stat(folder / name).st_size for name in files}
    biggest = max(sizes, key=sizes.__getitem__)
    check_fits_in_memory(int(sum(sizes.values()) * FILE_READ_VALUES_PER_BYTE), f"{folder / biggest} ({sizes[biggest]:,} bytes)",
                         "extract the data set's binary archive there again, or give more memory")
    xs, ys = [], []
    for name in files:
        raw = np.fromfile(folder / name, dtype=np.uint8)
        if raw.size % record:
            raise DataError(f"{folder / name} has {raw.size} bytes, not a multiple of {record}; the file is truncated, download it again")
        raw = raw.reshape(-1, record)
        ys.append(raw[:, label_offset].astype(np.int64))
        xs.append(raw[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.concatenate(xs), np.concatenate(ys)


CIFAR_LAYOUT = {
    # name: (folder, train files, test files, label bytes, which label byte, archive url)
    "CIFAR10": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], 1, 0,
                "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"),
    "CIFAR100": ("cifar-100-binary", ["train.bin"], ["test.bin"], 2, 1,
                 "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"),
}


@contextmanager
def _download_named(name: str, where: str, by_hand: str) -> Iterator[None]:
    """A failed download (no network, a proxy, a checksum) is said to be one, with how to place the files by hand;
    it read "cannot be read as torchvision:MNIST data (URLError: ...)"."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - urllib, http and torchvision's checksum raise several types
        raise_interrupt_behind(e)
        raise DataError(f"{where}: downloading {name} failed ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else '-'}); "
                        f"check the network, or {by_hand} and drop download: true") from None


def _load_cifar(name: str, spec: DataSpec, root: Path, role: str, where: str) -> LabelledData:
    folder_name, train_files, test_files, label_bytes, label_offset, url = CIFAR_LAYOUT[name]
    folder = root / folder_name
    files = train_files if (spec.split or role) == "train" else test_files
    if not all((folder / f).exists() for f in files) and spec.download:
        from torchvision.datasets.utils import download_and_extract_archive

        with _download_named(name, where, f"extract {url.rsplit('/', 1)[1]} ({url}) into {root}"):
            download_and_extract_archive(url, download_root=str(root))
    missing = [f for f in files if not (folder / f).exists()]
    if missing:
        pickled = root / ("cifar-10-batches-py" if name == "CIFAR10" else "cifar-100-python")
        hint = (f" ({pickled.name} is the pickle edition, which this tool never unpickles)" if pickled.exists() else "")
        raise DataError(f"{where}: {name} binary files not found in {folder}{hint}; extract {url.rsplit('/', 1)[1]} into {root} or set download: true")
    images, labels = _read_cifar_binary(folder, files, label_bytes, label_offset)
    return LabelledData.from_tensors(_uint8_images_to_tensor(images, spec, where), torch.from_numpy(labels))


def _load_svhn(spec: DataSpec, root: Path, role: str, where: str) -> LabelledData:
    split = spec.split or role
    path = root / f"{split}_32x32.mat"
    if not path.exists() and spec.download:
        import torchvision

        with _download_named("SVHN", where, f"put torchvision's {path.name} (from http://ufldl.stanford.edu/housenumbers/) in {root}"):
            torchvision.datasets.SVHN(str(root), split=split, download=True)
    if not path.exists():
        raise DataError(f"{where}: {path} not found; put torchvision's SVHN file {path.name} in root or set download: true")
    from scipy.io import loadmat

    try:
        declared = mat_array_headers(path)
        for key in ("X", "y") if declared else ():
            found = [(shape, klass) for name, shape, klass in declared if name == key]
            if len(found) != 1 or found[0][1] not in MAT_CLASS_BYTES:  # a cell or struct hides its content's size
                what = "is missing" if not found else f"appears {len(found)} times" if len(found) > 1 else "is not a numeric array"
                raise DataError(f"{where}: {path}: {key} {what}; SVHN's files hold one numeric X and one y, download the file again")
            shape, klass = found[0]  # as stored, then X as float32 (y as float64 and int64): values of 4 bytes
            n = int(np.prod(shape, dtype=np.float64))
            check_fits_in_memory(int(n * (MAT_CLASS_BYTES[klass] / 4 + (1 if key == "X" else 4))), f"{where}: {path}: {key} {shape}",
                                 "give a smaller data set, or more memory")
        mat = loadmat(str(path), variable_names=["X", "y"])
        images = np.transpose(mat["X"], (3, 0, 1, 2))  # (32, 32, 3, N) -> (N, 32, 32, 3)
        y = np.asarray(mat["y"])
        raw = y.reshape(-1)
        whole = raw.astype(np.float64) if raw.dtype.kind in "iuf" else None
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{where}: {path} is not a readable SVHN .mat file ({type(e).__name__}); download it again") from None
    if y.ndim > 2 or raw.shape[0] != images.shape[0]:  # "AssertionError: Size mismatch between tensors"
        raise DataError(f"{where}: {path}: X holds {images.shape[0]} images and y has shape {y.shape}; give one label per image "
                        "(y of shape (N, 1)), or download the file again")
    if whole is None or not (np.isfinite(whole).all() and (whole == np.round(whole)).all() and ((whole >= 1) & (whole <= 10)).all()):
        raise DataError(f"{where}: {path}: y holds labels that are not whole numbers from 1 to 10 (SVHN's digits; 10 is 0); "
                        "download the file again")  # 1.7 read as 1, NaN as -9223372036854775808, silently
    labels = whole.astype(np.int64)
    labels[labels == 10] = 0  # SVHN stores digit 0 as label 10, like torchvision we map it to 0
    return LabelledData.from_tensors(_uint8_images_to_tensor(images, spec, where), torch.from_numpy(labels))


MAT_CLASS_BYTES = {6: 8, 7: 4, 8: 1, 9: 1, 10: 2, 11: 2, 12: 4, 13: 4, 14: 8, 15: 8}  # mxDOUBLE_CLASS .. mxUINT64_CLASS


def mat_array_headers(path: Path) -> list[tuple[str, tuple[int, ...], int]]:
    """(name, shape, MAT class) of each top-level array of a MAT v5 file, in file order, from each element's first bytes
    only; [] for another MAT version (loadmat judges those). scipy's whosmat unpacks a compressed array whole to tell its
    shape (a 261 KB SVHN file held 0.25 GiB of X), so a decompression bomb is known here before anything is unpacked.
    A cell or struct (class 1, 2) tells only its own shape, and a name may appear twice: the caller refuses both."""
    import zlib

    out: list[tuple[str, tuple[int, ...], int]] = []
    with open(path, "rb") as f:
        head = f.read(128)
        if len(head) < 128 or head[126:128] not in (b"IM", b"MI"):
            return out
        order = "<" if head[126:128] == b"IM" else ">"
        while len(tag := f.read(8)) == 8:
            mdtype, nbytes = struct.unpack(order + "II", tag)
            end = f.tell() + nbytes
            if mdtype == 15:  # miCOMPRESSED: its first 1 KiB unpacked, no more (max_length)
                body = zlib.decompressobj().decompress(f.read(min(nbytes, 1 << 16)), 1024)
                mdtype, body = struct.unpack(order + "I", body[:4])[0], body[8:]
            else:
                body = f.read(min(nbytes, 1024))
            f.seek(end)
            if mdtype != 14:  # not a miMATRIX
                continue
            (flags, _), body = _mat_subelement(body, order)
            (dims, dtype), body = _mat_subelement(body, order)
            (name, _), body = _mat_subelement(body, order)
            klass = struct.unpack(order + "I", flags[:4])[0] & 0xFF
            shape = tuple(np.frombuffer(dims, dtype=order + ("i4" if dtype == 5 else "u4")).tolist())
            out.append((name.decode("latin1"), shape, klass))
    return out


def _mat_subelement(body: bytes, order: str) -> tuple[tuple[bytes, int], bytes]:
    """((data, type), rest) of a MAT v5 sub-element: a tag then its data padded to 8 bytes, or the small form (4+4 bytes)."""
    mdtype, nbytes = struct.unpack(order + "II", body[:8])
    if mdtype >> 16:  # small data element: byte count in the upper 16 bits, data in the tag's second word
        return (body[4:4 + (mdtype >> 16)], mdtype & 0xFFFF), body[8:]
    return (body[8:8 + nbytes], mdtype), body[8 + nbytes + (-nbytes % 8):]


def _load_mnist_family(name: str, spec: DataSpec, root: Path, role: str, where: str) -> LabelledData:
    """MNIST, FashionMNIST, KMNIST: the idx files in root/NAME/raw, read here. torchvision's class would load
    root/NAME/processed/*.pt with torch.load (an unpickler) whenever they exist, and prefer them to the idx files."""
    import torchvision

    raw = root / name / "raw"
    prefix = "train" if (spec.split or role) == "train" else "t10k"
    files = [raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"]
    if not all(f.exists() for f in files) and spec.download:
        from torchvision.datasets.utils import download_and_extract_archive

        cls = getattr(torchvision.datasets, name)
        with _download_named(name, where, f"put its idx files ({files[0].name}, ...) in {raw}, unpacked"):
            for filename, md5 in cls.resources:
                download_and_extract_archive(f"{cls.mirrors[0]}{filename}", download_root=str(raw), filename=filename, md5=md5)
    missing = [f.name for f in files if not f.exists()]
    if missing and (raw / f"{missing[0]}.gz").exists():  # not read packed: its size on disk would not bound its size in memory
        raise DataError(f"{where}: found {raw / missing[0]}.gz but not {missing[0]}; unpack it there (gunzip -k {raw / missing[0]}.gz)")
    if missing:
        raise DataError(f"{where}: {name} not found under {raw} (no {missing[0]}); put the idx files there or set download: true")
    fix = f"put {name}'s original idx files in {raw}"
    images, labels = _read_idx(files[0], 3, where, fix), _read_idx(files[1], 1, where, fix)
    if len(images) != len(labels):
        raise DataError(f"{where}: {files[0].name} holds {len(images)} images and {files[1].name} {len(labels)} labels; {fix}")
    return LabelledData.from_tensors(_uint8_images_to_tensor(images, spec, where), torch.from_numpy(labels.astype(np.int64)))


def _read_idx(path: Path, ndim: int, where: str, fix: str) -> np.ndarray:
    """An idx file of uint8 values: magic 0x0000080N (N = ndim), N big-endian sizes, then the values, nothing more."""
    from .errors import RequestError
    from .request import read_regular_file

    header = 4 + 4 * ndim
    try:
        if path.is_file():
            size = os.stat(path).st_size
            check_fits_in_memory(int(size * FILE_READ_VALUES_PER_BYTE), f"{where}: {path} ({size:,} bytes)", f"{fix}, or give more memory")
        raw = read_regular_file(path, f"{where}: idx file", fix)
    except RequestError as e:
        raise DataError(str(e)) from None
    magic = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if len(raw) < header or magic != 0x800 + ndim:
        raise DataError(f"{where}: {path.name} is not an idx file of {ndim}-dimensional 8-bit data; {fix}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(dims):  # Python's ints: 2^31 x 2^31 x 4 wrapped to 0 in int64 and passed
        raise DataError(f"{where}: {path.name} holds {len(raw) - header} values, its header says {' x '.join(map(str, dims))}; "
                        f"the file is truncated or damaged; {fix}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()  # writable: torch warns on a read-only array


def _image_transform(spec: DataSpec):
    """PIL image -> float tensor (C, H, W): grayscale, resize, to [0, 1], normalise, as the request's preprocess says."""
    from torchvision import transforms as T

    steps = []
    if spec.preprocess.grayscale:
        steps.append(T.Grayscale(1))
    if spec.preprocess.resize:
        steps.append(T.Resize((spec.preprocess.resize, spec.preprocess.resize)))
    steps.append(T.ToTensor())
    if spec.preprocess.normalize:
        steps.append(T.Normalize(spec.preprocess.normalize.mean, spec.preprocess.normalize.std))
    return T.Compose(steps)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's IMG_EXTENSIONS


def image_folder_samples(path: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, [(image path, class index)]) of a folder laid out as torchvision's ImageFolder, in its order (classes
    sorted, then each class's folders and files sorted), so sample indices mean what they meant before. Unlike it:
    hidden names (``.ipynb_checkpoints``, macOS ``._x.png``) are neither classes nor samples; each real folder is
    walked once, so a symlink loop cannot repeat the images; and a folder that cannot be read, a link out of its
    class folder (into another class's images) or two classes that are one folder are DataErrors, not other data."""
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    samples: list[tuple[str, int]] = []
    homes: dict[str, str] = {}
    for index, name in enumerate(classes):
        home = os.path.realpath(path / name)
        if home in homes:
            raise DataError(f"{path}: class folders {homes[home]} and {name} are the same folder (a link); remove one")
        homes[home] = name
        seen: set[tuple[int, int]] = set()
        found = []

        def unreadable(e: OSError) -> None:
            raise DataError(f"{path}: folder {e.filename} cannot be read ({e.strerror}); fix its permissions or remove it")

        for root, dirs, files in os.walk(path / name, onerror=unreadable, followlinks=True):
            real = os.path.realpath(root)
            if real != home and not real.startswith(home + os.sep):
                raise DataError(f"{path}: {Path(root).relative_to(path).as_posix()} links out of class folder {name} (to {real}), "
                                "so other images would take its label; remove the link")
            st = os.stat(root)
            if (st.st_dev, st.st_ino) in seen:
                dirs[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.append((root, sorted(f for f in files if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES))))
        samples += [(os.path.join(root, f), index) for root, files in sorted(found) for f in files]
    return classes, samples


def _load_imagefolder(spec: DataSpec, path: Path, where: str) -> LabelledData:
    if not path.is_dir():
        raise DataError(f"{where}.path: {path} is not a folder; give a folder with one sub-folder of images per class")
    classes, samples = image_folder_samples(path)
    if not classes:
        raise DataError(f"{where}.path: {path} has no class sub-folders; give a folder with one sub-folder of images per class")
    empty = sorted(set(classes) - {classes[c] for _, c in samples})
    if empty:
        raise DataError(f"{where}.path: {path}: class folder(s) {', '.join(empty[:3])} hold no image files "
                        f"({', '.join(IMAGE_SUFFIXES)}); add images or remove the folder")
    ids = [Path(p).relative_to(path).as_posix() for p, _ in samples]  # the record ID of an image is its path in the folder
    labels = [c for _, c in samples]
    ds = ImageFiles([p for p, _ in samples], labels, _image_transform(spec), ids)
    ds.samples = samples  # as ImageFolder's: the data fingerprint hashes the file list, so recorded ones still match
    return LabelledData(ds, torch.tensor(labels, dtype=torch.long), ids=check_unique_ids(ids, where))


def collate_images(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's default collation, with images of different sizes named as the data's problem, not a crash."""
    from torch.utils.data import default_collate

    try:
        return default_collate(batch)
    except RuntimeError as e:
        if "equal size" not in str(e):
            raise
        sizes = sorted({tuple(x.shape[-2:]) for x, _ in batch})
        raise DataError(f"the images differ in size ({' and '.join('x'.join(map(str, s)) for s in sizes[:2])}); "
                        "set data.preprocess.resize to one size") from None


def read_image(path: str):
    """One image file as RGB, or a DataError naming it: a file that is not an image, truncated, a decompression bomb, or
    not a regular file (a FIFO would hang the read). Used for imagefolder and csv, in DataLoader workers too."""
    from PIL import Image

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise DataError(f"image {path} is not a regular file; remove it from the data or replace it with the image")
        with warnings.catch_warnings():  # PIL only warns between its limit and twice it; both are refused alike
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.convert("RGB")
    except DataError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise DataError(f"image {path} is too large to read safely ({str(e).split(', could')[0]}, PIL's guard against "
                        "decompression bombs); downscale the file") from None
    except Exception as e:  # noqa: BLE001 - PIL and the OS raise several types for a file that is not a readable image
        raise DataError(f"image {path} cannot be read ({type(e).__name__}); fix or remove it") from None


class ImageFiles(Dataset):
    """Images named by path, each read (and transformed) only when a batch asks for it; picklable for DataLoader workers."""

    def __init__(self, paths: list[str], labels: list[int], transform, ids: Optional[list[str]] = None):
        self.paths, self.labels, self.transform = paths, labels, transform
        self.ids = ids  # the manifest's optional id column, as text

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(read_image(self.paths[i])), self.labels[i]


CSV_FIX = "give a CSV with a header row path,label (and optionally id): one image per row, paths relative to the CSV"


def _load_csv(spec: DataSpec, path: Path, where: str) -> LabelledData:
    """A manifest: a CSV with columns path,label (optional id: the record IDs, else the paths); paths relative to the
    CSV's folder. Nothing of the file's contents is echoed in an error: rows are named by line number."""
    import csv

    if not path.is_file():
        raise DataError(f"{where}.path: {path} is not a file; {CSV_FIX}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # Excel's "CSV UTF-8" starts with a BOM
            reader = csv.DictReader(f)
            if reader.fieldnames:  # "path, label" (a space after the comma) read as no label column
                reader.fieldnames = [name.strip() for name in reader.fieldnames]
            missing = [c for c in ("path", "label") if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{where}.path: {path} has no {' or '.join(missing)} column in its header; {CSV_FIX}")
            twice = sorted({c for c in reader.fieldnames if reader.fieldnames.count(c) > 1})
            if twice:  # the last one won, silently
                raise DataError(f"{where}.path: {path}: its header names the column {twice[0][:40]!r} twice; {CSV_FIX}")
            rows = [(reader.line_num, r) for r in reader]
    except UnicodeDecodeError:
        raise DataError(f"{where}.path: {path} is not UTF-8 text; {CSV_FIX}") from None
    except csv.Error as e:
        raise DataError(f"{where}.path: {path} is not a readable CSV ({e}); {CSV_FIX}") from None
    if not rows:
        raise DataError(f"{where}.path: {path} lists no images; {CSV_FIX}")
    folder = path.parent
    paths, labels, ids, names = [], [], [], []
    first_label: dict[str, tuple[int, int]] = {}
    for line, r in rows:
        if r.get(None):  # DictReader's place for fields beyond the header's: they were dropped, silently
            raise DataError(f"{where}.path: {path} line {line}: more fields than the header has columns; {CSV_FIX}")
        label = (r.get("label") or "").strip()
        if not (label.isascii() and label.isdigit()) or len(label) > 9:  # '¹' is a digit to isdigit, not to int()
            raise DataError(f"{where}.path: {path} line {line}: the label is not a whole number from 0 to 999999999; labels are class indices 0..C-1")
        image = folder / (r.get("path") or "").strip()
        if (r.get("path") or "").strip() and image.exists() and not image.is_file():  # it said "does not exist"
            raise DataError(f"{where}.path: {path} line {line}: the image path is not a regular file (a folder, FIFO or device); "
                            "list image files")
        if not (r.get("path") or "").strip() or not image.is_file():
            raise DataError(f"{where}.path: {path} line {line}: the image file does not exist; paths are relative to the CSV's folder")
        seen = first_label.setdefault(str(image), (line, int(label)))
        if seen[1] != int(label):  # one image, two classes: forgetting one row by its path left the other
            raise DataError(f"{where}.path: {path} line {line}: the image of line {seen[0]} again, with another label; list each "
                            "image once")
        paths.append(str(image))
        labels.append(int(label))
        ids.append((r.get("id") or "").strip())
        names.append((r.get("path") or "").strip())
    if "id" in rows[0][1]:
        ids = check_unique_ids(ids, where)
    else:  # the record ID of an image is its path as the manifest writes it, when each path is listed once
        ids = names if len(set(names)) == len(names) else None
    ds = ImageFiles(paths, labels, _image_transform(spec), ids)
    try:
        ds[0]
    except DataError as e:  # names the image's own problem and its fix (a decompression bomb, ...): it was hidden
        raise DataError(f"{where}.path: {path} line {rows[0][0]}: {e}") from None
    except Exception as e:  # noqa: BLE001 - PIL raises several types for a file that is not an image
        raise DataError(f"{where}.path: {path} line {rows[0][0]}: the image cannot be read ({type(e).__name__}); list image files (PNG, JPEG, ...)") from None
    return LabelledData(ds, torch.tensor(labels, dtype=torch.long), ids=ids)


def load_split(spec: DataSpec, role: str, base_dir: Path) -> LabelledData:
    """Load one split (`role` is 'train' or 'test', the default split to read); an empty one is refused here, before
    anything indexes its first sample."""
    try:
        data = _read_split(spec, role, base_dir)
    except (UnlearnError, MemoryError):
        raise
    except Exception as e:  # a reader's own error on malformed files (an assertion, a dtype it cannot convert): bad input
        raise_interrupt_behind(e)  # a signal during a reader's lazy import stays that signal
        what = spec.path or spec.root or spec.source
        raise DataError(f"data.{role}: {what} cannot be read as {spec.source} data ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else '-'}); "
                        "check its files against the README's data sources") from e
    if len(data) == 0:
        raise DataError(f"data.{role}: {spec.path or spec.root or spec.source} holds no samples; give a split with data")
    return data


def _read_split(spec: DataSpec, role: str, base_dir: Path) -> LabelledData:
    where = f"data.{role}"
    src = spec.source
    if src == "tensors":
        return _load_tensors(spec, _resolve(base_dir, spec.path), where)
    if src == "sklearn:digits":
        return _load_digits(spec, role, where)
    if src == "sklearn:diabetes":
        return _load_diabetes(spec, role, where)
    if src == "sklearn:digits-rotation":
        return _load_digits_rotation(spec, role, where)
    if src == "imagefolder":
        return _load_imagefolder(spec, _resolve(base_dir, spec.path), where)
    if src == "csv":
        return _load_csv(spec, _resolve(base_dir, spec.path), where)
    name = src.split(":", 1)[1]
    root = _resolve(base_dir, spec.root)
    if name in CIFAR_LAYOUT:
        return _load_cifar(name, spec, root, role, where)
    if name == "SVHN":
        return _load_svhn(spec, root, role, where)
    return _load_mnist_family(name, spec, root, role, where)


def _resolve(base_dir: Path, p: Optional[str]) -> Path:
    path = Path(p or ".").expanduser()
    return path if path.is_absolute() else base_dir / path


def resolve_forget(request: Request, train: LabelledData, num_outputs: int, task: "Task",
                   allow_missing: bool = False) -> tuple[torch.Tensor, list[str]]:
    """The train positions the request forgets (checked against the data and model), and the IDs not found (allow_missing)."""
    n = len(train)
    missing: list[str] = []
    if request.forget.classes is not None:
        mask = task.forget_mask(request.forget.classes, train.targets, num_outputs)
    elif request.forget.target_range is not None:
        mask = task.range_mask(request.forget.target_range, train.targets)
    elif request.forget.by_ids:
        ids = request.forget_ids_list() or []
        if train.ids is None:
            raise DataError("forget.ids: the train split has no record IDs; give tensors an `ids` key or `ids_path`, "
                            "use imagefolder or csv (IDs are file paths or an id column), or forget by indices")
        position = {rid: i for i, rid in enumerate(train.ids)}
        missing = [i for i in ids if i not in position]
        if missing and not allow_missing:
            shown = ", ".join(repr(m)[:40] for m in missing[:3])
            raise DataError(f"forget.ids: {len(missing)} of {len(ids)} record ID(s) are not in the train split (e.g. {shown}); "
                            "check the IDs, or pass --allow-missing to forget the others")
        mask = torch.zeros(n, dtype=torch.bool)
        found = [position[i] for i in ids if i in position]
        if found:
            mask[torch.tensor(found, dtype=torch.long)] = True
    else:
        indices = request.forget_indices_list() or []
        bad = [i for i in indices if i >= n]
        if bad:
            raise DataError(f"forget.indices: index {bad[0]} is out of range for a train split of {n} samples (valid 0..{n - 1}); fix the index list")
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.tensor(indices, dtype=torch.long)] = True
    return torch.nonzero(mask).flatten(), missing


def _columns(targets: torch.Tensor) -> int:
    return 1 if targets.dim() == 1 else int(targets.shape[1])


def load_splits(request: Request, num_outputs: int, task: "Task", train: Optional[LabelledData] = None,
                excluded: Optional[torch.Tensor] = None, allow_missing: bool = False) -> Splits:
    """Train and test splits plus the forget/retain partition, checked against the model's outputs.

    excluded: train positions forgotten by earlier requests (a lineage): they leave the train split before
    anything else, so no method, retain set or audit ever sees them again.
    """
    train = train if train is not None else load_split(request.data.train, "train", request.base_dir)
    test = load_split(request.data.test, "test", request.base_dir)
    notes = train.load_notes + test.load_notes
    notes += [n for n in (task.adapt_targets(d, f"data.{role}") for d, role in ((train, "train"), (test, "test")) if d.labelled) if n]
    if train.labelled:
        task.check_targets(train.targets, num_outputs, "data.train")
    elif request.forget.classes is not None:
        raise DataError("forget.classes: the train split has no labels (no y), so its classes are unknown; forget by indices or ids")
    elif request.forget.target_range is not None:
        raise DataError("forget.target_range: the train split has no targets (no y), so no range can be selected; forget by indices or ids")
    if train.labelled and task.name == "regression" and _columns(train.targets) != _columns(test.targets):
        raise DataError(f"data: the train split's targets have {_columns(train.targets)} column(s) and the test split's "
                        f"{_columns(test.targets)}; give both splits the same target columns")
    task.check_targets(test.targets, num_outputs, "data.test")
    if train.input_shape() != test.input_shape():
        raise DataError(f"data: train inputs have shape {train.input_shape()} but test inputs {test.input_shape()}; preprocess both splits the same way")
    forget_full, missing = resolve_forget(request, train, num_outputs, task, allow_missing)
    full_ids = train.ids
    already = 0
    if excluded is not None and len(excluded):
        gone = torch.zeros(len(train), dtype=torch.bool)
        gone[excluded] = True
        already = int(gone[forget_full].sum())
        forget_full = forget_full[~gone[forget_full]]
        original_positions = forget_full.clone()
        keep = torch.nonzero(~gone).flatten()
        new_position = torch.full((len(train),), -1, dtype=torch.long)
        new_position[keep] = torch.arange(len(keep))
        forget_full = new_position[forget_full]
        train = train.subset(keep)
    else:
        original_positions = forget_full.clone()
    n = len(train)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[forget_full] = True
    forget_idx, retain_idx = torch.nonzero(mask).flatten(), torch.nonzero(~mask).flatten()
    if len(forget_idx) == 0:
        why = f" (all {already} were forgotten by earlier requests in the lineage)" if already else ""
        kinds = "a target_range, indices or IDs" if task.name == "regression" else "classes, indices or IDs"  # classes: not a regressor's
        raise DataError(f"forget: the forget set is empty{why}; name {kinds} that exist in the train split")
    if len(retain_idx) == 0:
        raise DataError("forget: the request forgets the whole train split, so nothing is retained; forget a subset")
    return Splits(
        train=train,
        test=test,
        forget_idx=forget_idx,
        retain_idx=retain_idx,
        scenario=request.forget.scenario,
        forget_classes=list(request.forget.classes or []),
        missing_ids=missing,
        excluded=0 if excluded is None else int(len(excluded)),
        already_forgotten=already,
        forget_positions=original_positions,
        forget_ids=[full_ids[i] for i in original_positions.tolist()] if full_ids is not None else None,
        target_range=(request.forget.target_range.min, request.forget.target_range.max, request.forget.target_range.column)
        if request.forget.target_range is not None else None,
        notes=notes,
    )


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """Write uint8 images (N, H, W) in the idx3 format that MNIST-family readers expect (used by tests and tools)."""
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """Write uint8 labels (N,) in the idx1 format."""
    path.write_bytes(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())
