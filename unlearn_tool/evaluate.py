"""Batched inference, streamed: logits for methods, per-sample figures for summaries and the audit."""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Mapping, Optional

import numpy as np
import torch
from torch import nn

from .data import LabelledData
from .precision import full_precision
from .tasks import CLASSIFICATION, SetOutputs, Task

if TYPE_CHECKING:
    pass


# model id -> (model, {data id: (data, weights version, logits, labels)}): predictions remembered inside `remember_predictions`
_REMEMBERED: dict[int, tuple[nn.Module, dict[int, tuple]]] = {}


def _weights_version(model: nn.Module) -> tuple[int, ...]:
    """Changes whenever a parameter or buffer is modified in place (torch counts in-place writes per tensor)."""
    return tuple(t._version for t in itertools.chain(model.parameters(), model.buffers()))


@contextmanager
def remember_predictions(model: nn.Module) -> Iterator[None]:
    """Inside the block, `predict_logits(model, data)` runs once per data set while the model's weights are unchanged:
    `apply`'s before-summary and the method share the original's predictions (e.g. on the forget set)."""
    _REMEMBERED[id(model)] = (model, {})
    try:
        yield
    finally:
        _REMEMBERED.pop(id(model), None)


def predict_logits(model: nn.Module, data: LabelledData, device: torch.device, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) and labels (N,) on CPU, in data order, in eval mode."""
    entry = _REMEMBERED.get(id(model))
    if entry is None or entry[0] is not model:
        return _predict_logits(model, data, device, batch_size)
    memo, version = entry[1], _weights_version(model)
    hit = memo.get(id(data))
    if hit is None or hit[0] is not data or hit[1] != version:
        hit = memo[id(data)] = (data, version, *_predict_logits(model, data, device, batch_size))
    return hit[2].clone(), hit[3].clone()


def remembered_logits(model: nn.Module, data: LabelledData) -> Optional[torch.Tensor]:
    """The logits `predict_logits(model, data)` already computed inside `remember_predictions` (the weights unchanged
    since), else None; computes nothing. A method that gets its teacher outputs another way (RFA's encoded inputs)
    takes these instead of a second pass over the same data."""
    entry = _REMEMBERED.get(id(model))
    if entry is None or entry[0] is not model:
        return None
    hit = entry[1].get(id(data))
    if hit is None or hit[0] is not data or hit[1] != _weights_version(model):
        return None
    return hit[2].clone()


@torch.no_grad()
def _predict_logits(model: nn.Module, data: LabelledData, device: torch.device, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    was_training = model.training
    model.eval()
    outs, ys = [], []
    with full_precision(device):  # also inside a method's bf16 pass: teacher targets and checks read these as numbers
        for x, y in data.batches(batch_size):
            outs.append(model(x.to(device)).float().cpu())
            ys.append(y)
    model.train(was_training)
    if not outs:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(ys)


def accuracy(model: nn.Module, data: LabelledData, device: torch.device, batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1]; NaN for an empty set."""
    if len(data) == 0:
        return float("nan")
    logits, y = predict_logits(model, data, device, batch_size)
    return float((logits.argmax(1) == y).float().mean())


@torch.no_grad()
def stream(model: nn.Module, data: LabelledData, device: torch.device, batch_size: int, task: Task = CLASSIFICATION,
           keep: Optional[np.ndarray] = None) -> SetOutputs:
    """One pass over `data`: the task's per-sample figures for every sample, output rows only at positions `keep`.

    Memory is O(N) scalars plus the kept rows, never the whole (N, C) output of a large data set.
    """
    was_training = model.training
    model.eval()
    keep_mask = np.zeros(len(data), dtype=bool)
    if keep is not None:
        keep_mask[keep] = True
    targets, stats, kept = [], [], []
    start = bad = 0
    for x, y in data.batches(batch_size):
        with full_precision(device):  # also inside a method's bf16 pass (a stopping rule's error)
            out = model(x.to(device)).float().cpu().numpy().astype(np.float64)
        yy = y.numpy()
        targets.append(yy)
        bad += non_finite_rows(out)
        with np.errstate(all="ignore"):  # NaN/Inf outputs are counted and refused by the caller, not warned about per batch
            stats.append(task.per_sample(out, yy))
            mask = keep_mask[start:start + len(yy)]
            if mask.any():
                kept.append(task.rows(out[mask]))
        start += len(yy)
    model.train(was_training)
    merged = {k: np.concatenate([s[k] for s in stats]) for k in (stats[0] if stats else {})}
    return SetOutputs(targets=np.concatenate(targets) if targets else np.zeros(0, dtype=np.int64), stats=merged,
                      rows=np.concatenate(kept) if kept else np.zeros((0, 0)), non_finite=bad)


FINITE_OUTPUTS_FIX = "its training diverged or its weights overflow; give a checkpoint whose outputs are finite"


def non_finite_rows(outputs: "np.ndarray | torch.Tensor") -> int:
    """How many samples' output rows hold NaN or Inf: finite weights can still overflow (a diverged BatchNorm net)."""
    a = outputs.numpy() if isinstance(outputs, torch.Tensor) else np.asarray(outputs)
    return int((~np.isfinite(a.reshape(len(a), -1))).any(1).sum()) if len(a) else 0


def non_finite_where(counts: "Mapping[str, tuple[int, int]] | Mapping[str, SetOutputs]") -> Optional[str]:
    """'283 of 283 forget and 360 of 360 test samples': the sets (forget first) whose outputs hold NaN or Inf, as
    (non-finite, total) per set or SetOutputs per set; None when every output is finite. The audit's metrics and
    attacks cannot be computed on such outputs, so every caller refuses the model with this text."""
    pairs = {k: (v.non_finite, len(v)) if isinstance(v, SetOutputs) else v for k, v in counts.items()}
    parts = [f"{bad} of {total} {name}" for name, (bad, total) in sorted(pairs.items(), key=lambda kv: kv[0] != "forget") if bad]
    if not parts:
        return None
    return (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + " samples"
