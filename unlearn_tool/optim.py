"""Adam for a handful of adapter tensors, without torch.optim.

torch.optim's first optimizer imports torch._dynamo (its `add_param_group` is wrapped by `_disable_dynamo`): about 1.3 s
of CPU here, as much as importing torch itself and a quarter of a small `unlearn apply` process (docs/rfa.md, "Speed:
what was tried"). The LoRA methods train a few small tensors, so the update is written out: the same arithmetic as
torch.optim.Adam's foreach implementation (Kingma & Ba 2015, bias-corrected, no weight decay), checked against it in
tests/test_methods/test_rfa_speed.py.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch


class Adam:
    """`zero_grad()` / `step()` like torch.optim.Adam(params, lr, betas, eps) with weight_decay 0 and amsgrad off."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = [p for p in params if p.requires_grad]
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.steps = [0] * len(self.params)
        self.param_groups = [{"params": self.params}]  # what torch.amp.GradScaler reads to unscale the gradients

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]  # a parameter without a gradient keeps its state
        if not live:
            return
        params = [self.params[i] for i in live]
        grads = [self.params[i].grad for i in live]
        m, v = [self.exp_avg[i] for i in live], [self.exp_avg_sq[i] for i in live]
        torch._foreach_lerp_(m, grads, 1 - self.beta1)
        torch._foreach_mul_(v, self.beta2)
        torch._foreach_addcmul_(v, grads, grads, 1 - self.beta2)
        for i in live:
            self.steps[i] += 1
        step_sizes, bias2_sqrt = [], []
        for i in live:
            step_sizes.append(self.lr / (1 - self.beta1 ** self.steps[i]))
            bias2_sqrt.append(math.sqrt(1 - self.beta2 ** self.steps[i]))
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bias2_sqrt)
        torch._foreach_add_(denom, self.eps)
        for p, m_i, d, size in zip(params, m, denom, step_sizes):
            p.addcdiv_(m_i, d, value=-size)
