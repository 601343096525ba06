"""Gaussian Amnesiac (Tarun et al. 2023, "Deep Regression Unlearning", its regression baseline).

The regression analogue of Amnesiac / random-label unlearning: every forget sample's target is
replaced by a draw from N(mean, std) of the training targets (per target column), and the
original is fine-tuned on the whole train split with those targets (DRU: 1 epoch, Adam 1e-3).
A forget sample's new target carries no information about its input, so the fit to it is
overwritten by noise of the data's own scale; the retained samples keep their targets.
Algorithm and defaults: docs/methods.md.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..data import LabelledData
from .base import MethodOutput, MethodParams, UnlearnContext, register_method
from .common import task_loss


class GaussianAmnesiacParams(MethodParams):
    epochs: int = Field(1, ge=1, description="Passes over the train split with the forget targets replaced (DRU: 1).")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate (DRU: 1e-3).")
    batch_size: int = Field(64, ge=1, description="Batch size. DRU: 256 on its large data sets; 64 for small ones.")
    loss: Literal["auto", "mse", "l1"] = Field(
        "l1", description="Fine-tuning loss: l1 (DRU's regression loss), mse, or auto (the task's own, MSE).")


def gaussian_targets(targets: torch.Tensor, forget_idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The train targets with each forget sample's replaced by a draw from N(mean, std) of all training targets,
    per column (drawn on the CPU with `generator`, so a seed gives the same targets on every device)."""
    t = targets.float()
    mean, std = t.mean(0), t.std(0) if len(t) > 1 else torch.zeros_like(t[0])
    noise = torch.randn((len(forget_idx),) + tuple(t.shape[1:]), generator=generator)
    out = t.clone()
    out[forget_idx] = mean + std * noise
    return out


def run(ctx: UnlearnContext, p: GaussianAmnesiacParams) -> MethodOutput:
    train = ctx.splits.train
    targets = gaussian_targets(train.targets, ctx.splits.forget_idx, ctx.generator(61))
    index_data = LabelledData.from_tensors(torch.arange(len(train)), targets)  # batches of (index, target); inputs via take()
    loss_fn = task_loss(ctx, p.loss)
    model = ctx.student().train()
    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    gen = ctx.generator(62)
    steps, loss = 0, torch.tensor(float("nan"))
    for epoch in range(1, p.epochs + 1):
        for idx, y in index_data.batches(p.batch_size, shuffle=True, generator=gen):
            x, _ = train.take(idx)
            loss = loss_fn(model(x.to(ctx.device)), y.to(ctx.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        ctx.report("gaussian-amnesiac", epoch, p.epochs)
    return MethodOutput(model=model.eval(), info={"epochs": p.epochs, "steps": steps, "last_loss": round(loss.item(), 6)})


register_method(
    "gaussian-amnesiac", GaussianAmnesiacParams, run,
    summary="Gaussian Amnesiac: forget targets redrawn from N(mean, std) of the training targets, then fine-tune on the train split.",
    reference="Tarun et al. 2023, Deep Regression Unlearning, arXiv 2210.08196 (ayushkumartarun/deep-regression-unlearning)",
    tasks=("regression",), scenarios=("sample", "range"),
)
