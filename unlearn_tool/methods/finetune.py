"""FT: fine-tune the original on the retain set only, relying on catastrophic forgetting of Df.

Unlearn-Sparse baseline (Jia et al. 2023, `unlearn/FT.py`): SGD with momentum 0.9 and weight
decay 5e-4 at a constant learning rate for 10 epochs over Dr. `l1-sparse` reuses the loop here
with an extra penalty.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from pydantic import Field
from torch import nn

from .base import MethodOutput, UnlearnContext, register_method
from .common import RegressionLoss, SGDParams, diverged_at, task_loss, task_of


class FinetuneParams(SGDParams, RegressionLoss):
    epochs: int = Field(10, ge=1, description="Passes over the retain set (Unlearn-Sparse README: 10).")
    lr: float = Field(
        0.05, gt=0,
        description="Constant learning rate. Unlearn-Sparse uses 0.01 on ResNet-18; the field searches 1e-4..1e-1. "
                    "0.05 is what moves the forget metrics of the small digits models in 10 epochs.",
    )
    batch_size: int = Field(64, ge=1, description="Retain batch size (Unlearn-Sparse issue #4: 64 reproduced FT best).")


Penalty = Callable[[nn.Module, int], Optional[torch.Tensor]]  # (model, epoch) -> extra loss term or None


def train_on_retain(ctx: UnlearnContext, p: FinetuneParams, task: str, penalty: Optional[Penalty] = None) -> tuple[nn.Module, dict]:
    """The task's loss on Dr (CE; regression: MSE or L1) plus an optional per-epoch penalty, from a copy of the original;
    returns (model in eval mode, info)."""
    loss_fn = task_loss(ctx, p.loss)
    model = ctx.student().train()
    opt = p.optimizer_for(model.parameters(), p.lr)
    gen = ctx.generator(11)
    steps, loss = 0, torch.tensor(float("nan"))
    for epoch in range(p.epochs):
        for x, y in ctx.retain.batches(p.batch_size, shuffle=True, generator=gen):
            loss = loss_fn(model(x.to(ctx.device)), y.to(ctx.device))
            extra = penalty(model, epoch) if penalty is not None else None
            if extra is not None:
                loss = loss + extra
            if not torch.isfinite(loss):  # descent on Dr does not recover from here: say so now, not after every epoch
                raise diverged_at(f"{task}'s loss on the retain set", loss.item(), steps + 1, p, task_of(ctx).name)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        ctx.report(task, epoch + 1, p.epochs)
    return model.eval(), {"epochs": p.epochs, "steps": steps, "last_loss": round(loss.item(), 6)}


def run(ctx: UnlearnContext, p: FinetuneParams) -> MethodOutput:
    model, info = train_on_retain(ctx, p, "finetune")
    return MethodOutput(model=model, info=info)


register_method(
    "finetune", FinetuneParams, run,
    summary="FT: fine-tune on the retain set only (forgetting by catastrophic interference).",
    reference="Jia et al. 2023 (Unlearn-Sparse, FT baseline); Warnecke et al. 2023",
    tasks=("classification", "regression"), scenarios=("class", "sample", "range"), data_parallel=True,
)
