"""The training loop's parts that RFA for classification (rfa.py) and for regression (rfa_regression.py) share:
the student cut at its frozen prefix, the forget set's encoded inputs, the pool of retained samples with the
teacher's outputs, and the adapters' optimizer and learning-rate schedule (design: docs/rfa.md).

Not a method file (the leading underscore keeps it out of the registry's discovery); both RFA files import it,
so neither imports the other for these.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch

from .. import lora
from ..optim import Adam
from .base import MethodParams, UnlearnContext

ADAM_BETAS = (0.5, 0.999)  # beta1 0.5 took about half the steps of 0.9 (docs/rfa.md)
RESIDUAL_ROWS = 16  # retain rows per step on which the zero-residual term is computed
RETAIN_POOL = 256  # retained samples whose encoded inputs and teacher outputs are reused once drawn
GUARD_SAMPLES, GUARD_CANDIDATES = 128, 512  # held-back retained samples measuring agreement with the teacher
CACHE_BYTES = 1 << 30  # the forget set's encoded inputs are kept in memory up to this size
MASKED_LOGIT = -1e4  # finite, so KL terms of removed classes are exactly 0 (not NaN): exp(-1e4 / T) == 0 in float32


def _without(logits: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Logits with the given classes removed (set to a very low finite value)."""
    if not classes:
        return logits
    out = logits.clone()
    out[:, classes] = MASKED_LOGIT
    return out


class _Net:
    """The student as the loop sees it: inputs -> `encode` (the frozen prefix, when the adapted layers sit on a
    suffix of the network and the graph can be cut there; else the identity) -> `forward` (the part that
    trains). `teacher` runs the original model's function on encoded inputs."""

    def __init__(self, ctx: UnlearnContext, model, layers: list[str], fused: lora.AdapterState, probe: torch.Tensor):
        self.ctx, self.model, self.layers, self.fused = ctx, model, layers, fused
        # a cut can only pay when some Linear/Conv2d layer runs before the first adapted one
        cut = layers[0] != lora.lora_capable_layers(ctx.original)[0]
        self.split = lora.split_frozen_prefix(model, layers, probe) if cut else None
        self.forward = self.split.suffix if self.split is not None else model

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.ctx.device)
        if self.split is None:
            return x
        with torch.no_grad():
            return self.split.prefix(x)

    @contextlib.contextmanager
    def adapters_off(self):
        """The frozen layers alone (the original model's function)."""
        self.fused.disabled = True
        try:
            yield
        finally:
            self.fused.disabled = False

    def teacher(self, z: torch.Tensor, energy: Optional[dict] = None) -> torch.Tensor:
        """The original model's logits on encoded inputs; records each adapted layer's mean squared feature in
        `energy` when given (the residual penalty's scale)."""
        with torch.no_grad(), self.adapters_off(), contextlib.ExitStack() as stack:
            if energy is not None:
                feats = stack.enter_context(lora.capture_outputs(self.model, self.layers))
            out = self.batched(z)
            if energy is not None:
                energy.update({n: feats[n].detach().pow(2).mean().clamp_min(1e-8) for n in self.layers})
        return out

    def batched(self, z: torch.Tensor, size: int = 256) -> torch.Tensor:
        return torch.cat([self.forward(z[i:i + size]) for i in range(0, len(z), size)])


class _ForgetSet:
    """The forget set's encoded inputs (kept in memory when they fit) and the teacher's logits on it (`known`: the
    original's logits apply's before-summary already computed on this set; then the teacher is not run again)."""

    def __init__(self, net: _Net, data, known: Optional[torch.Tensor] = None):
        self.net, self.data = net, data
        zs, logits, size = [], [], 0
        for x, _ in data.batches(256):
            z = net.encode(x)
            if known is None:
                logits.append(net.teacher(z))
            size += z.numel() * z.element_size()
            zs.append(z if size <= CACHE_BYTES else None)
        self.z = torch.cat(zs) if zs and all(z is not None for z in zs) else None
        self.teacher_logits = known.float().cpu() if known is not None else torch.cat(logits).float().cpu()

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        if self.z is not None:
            return self.z[idx.to(self.z.device)]
        return self.net.encode(self.data.take(idx)[0])


class _RetainPool:
    """Retain batches with the teacher's (masked) logits. Fresh retained samples are drawn (encoded, passed
    through the teacher) until RETAIN_POOL of them have been seen; later batches are drawn from those (the
    teacher is frozen, so its outputs are reused). `guard` retained samples are never trained on: they
    measure agreement with the teacher. With `boundary`, they are the ones nearest the teacher's decision
    boundary among GUARD_CANDIDATES drawn (where a shift of the remaining classes shows first)."""

    def __init__(self, net: _Net, data, forgotten: list[int], guard: int, boundary: bool, gen: torch.Generator):
        self.net, self.data, self.forgotten, self.gen = net, data, forgotten, gen
        order = torch.randperm(len(data), generator=gen)
        self.energy: dict[str, torch.Tensor] = {}
        self._guard = None
        if boundary and guard and GUARD_CANDIDATES > guard:
            cand = order[:GUARD_CANDIDATES]
            z, _, t = self._encode(cand)
            top = t.topk(2, dim=1).values
            near = (top[:, 0] - top[:, 1]).argsort()[:guard].cpu()
            keep = torch.ones(len(cand), dtype=torch.bool)
            keep[near] = False
            self._guard = (z[near.to(z.device)], t[near.to(t.device)])
            self.guard_idx, self.train_idx = cand[near], torch.cat([cand[keep], order[GUARD_CANDIDATES:]])
        else:
            self.guard_idx, self.train_idx = order[:guard], order[guard:]
        self.order, self.next = self.train_idx, 0
        self.z, self.y, self.t = [], [], []

    def _encode(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = self.data.take(idx)
        z = self.net.encode(x)
        t = self.net.teacher(z, None if self.energy else self.energy)
        if self.net.ctx.anchor is not None:  # apply --anchor: retained data stay aligned with the lineage's original
            with torch.no_grad():
                t = self.net.ctx.anchor(x.to(z.device)).float()
        return z, y.to(z.device), _without(t, self.forgotten)

    def guard(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoded x, teacher logits) of the guard samples."""
        if self._guard is None and not len(self.guard_idx):  # a retain set under 4 samples holds none back: nothing to check
            empty = torch.empty(0, device=self.net.ctx.device)
            self._guard = (empty, empty)
        if self._guard is None:
            z, _, t = self._encode(self.guard_idx)
            self._guard = (z, t)
        return self._guard

    def _fresh(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.next + k > len(self.order):
            self.order, self.next = self.train_idx[torch.randperm(len(self.train_idx), generator=self.gen)], 0
        idx = self.order[self.next:self.next + k]
        self.next += k
        return self._encode(idx)

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(encoded x, y, teacher logits) of k retained samples."""
        k = min(k, len(self.train_idx))
        seen = sum(len(y) for y in self.y)
        if seen < min(RETAIN_POOL, len(self.train_idx)):
            z, y, t = self._fresh(k)
            self.z.append(z), self.y.append(y), self.t.append(t)
            return z, y, t
        if len(self.z) > 1:
            self.z, self.y, self.t = [torch.cat(self.z)], [torch.cat(self.y)], [torch.cat(self.t)]
        j = torch.randperm(len(self.y[0]), generator=self.gen)[:k].to(self.y[0].device)
        return self.z[0][j], self.y[0][j], self.t[0][j]


def _adam(params: list[torch.nn.Parameter], lr: float) -> Adam:
    """Adam without torch.optim, whose first use imports torch._dynamo (unlearn_tool/optim.py)."""
    return Adam(params, lr=lr, betas=ADAM_BETAS)


def _scheduled_lr(p: MethodParams, step: int, total_steps: int) -> float:
    """The lr of step `step` (1-based) of at most `total_steps`: `p.lr` constant, or decayed to 0 on a cosine (`p.lr_schedule`)."""
    if p.lr_schedule == "constant":
        return p.lr
    return p.lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / total_steps))


def _snapshot(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """A copy of the adapters as they now are (a check worth returning to)."""
    return [q.detach().clone() for q in params]


def _restore(params: list[torch.nn.Parameter], state: list[torch.Tensor]) -> None:
    """Put the adapters back to a `_snapshot` (the fused adapters read the same parameters)."""
    with torch.no_grad():
        for q, b in zip(params, state):
            q.copy_(b)
