"""RL / Amnesiac: train on the forget set relabelled with random wrong labels, together with the retain set.

Class unlearning draws labels among the retained classes only (never another forgotten class);
sample unlearning draws any label but the true one. Labels are redrawn every epoch. Two data
orders: `mixed` (shuffled union of relabelled Df and Dr: Amnesiac as in Bad Teacher / SSD, and
SalUn's CIFAR-100 branch) and `forget-first` (a pass over relabelled Df, then a pass over Dr:
SalUn's CIFAR-10 branch). SalUn (`salun`) is this loop with a gradient mask.
"""

from __future__ import annotations

from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .base import MethodOutput, UnlearnContext, register_method
from .common import SGDParams, mixed_batches, other_labels


class RandomLabelParams(SGDParams):
    epochs: int = Field(5, ge=1, description="Passes over Df and Dr (SalUn RL: 10 on CIFAR; Amnesiac: 3). 5 suffices on digits.")
    lr: float = Field(
        0.01, gt=0,
        description="Learning rate (SalUn searches it; its CIFAR-10 example uses 0.013 with SGD). 0.01 with SGD suits the digits models.",
    )
    batch_size: int = Field(64, ge=1, description="Batch size.")
    order: Literal["mixed", "forget-first"] = Field(
        "mixed", description="mixed: shuffled union of relabelled Df and Dr; forget-first: one pass over Df, then one over Dr per epoch.",
    )


def _random_labels(ctx: UnlearnContext, gen: torch.Generator) -> torch.Tensor:
    exclude = ctx.splits.forget_classes if ctx.scenario == "class" else None
    return other_labels(ctx.forget.targets, ctx.num_classes, gen, exclude=exclude)


def _batches(ctx: UnlearnContext, p: RandomLabelParams, labels: torch.Tensor, gen: torch.Generator):
    """One epoch of (x, y) batches, forget samples carrying their random labels."""
    forget, retain = ctx.forget, ctx.retain
    if p.order == "forget-first":
        for i in torch.randperm(len(forget), generator=gen).split(p.batch_size):
            yield forget.take(i)[0], labels[i]
        yield from retain.batches(p.batch_size, shuffle=True, generator=gen)
        return
    for x, i_f, i_r in mixed_batches(forget, retain, p.batch_size, gen):
        yield x, torch.cat([labels[i_f], retain.targets[i_r]])


def train_relabelled(
    ctx: UnlearnContext,
    model: nn.Module,
    p: RandomLabelParams,
    task: str,
    params: Optional[list[nn.Parameter]] = None,
    before_step: Optional[Callable[[], None]] = None,
    after_step: Optional[Callable[[torch.optim.Optimizer], None]] = None,
    weight_decay: Optional[float] = None,
) -> dict:
    """The RL loop (in place). SalUn passes hooks to mask gradients and restore masked-out weights."""
    model.train()
    opt = p.optimizer_for(params if params is not None else model.parameters(), p.lr, weight_decay)
    gen, label_gen = ctx.generator(31), ctx.generator(32)
    steps, loss = 0, torch.tensor(float("nan"))
    for epoch in range(p.epochs):
        labels = _random_labels(ctx, label_gen)
        for x, y in _batches(ctx, p, labels, gen):
            loss = F.cross_entropy(model(x.to(ctx.device)), y.to(ctx.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if before_step is not None:
                before_step()
            opt.step()
            if after_step is not None:
                after_step(opt)
            steps += 1
        ctx.report(task, epoch + 1, p.epochs)
    model.eval()
    return {"epochs": p.epochs, "steps": steps, "last_loss": round(loss.item(), 6)}


def run(ctx: UnlearnContext, p: RandomLabelParams) -> MethodOutput:
    model = ctx.student()
    info = train_relabelled(ctx, model, p, "random-label")
    return MethodOutput(model=model, info=info)


register_method(
    "random-label", RandomLabelParams, run,
    summary="RL / Amnesiac: train on the forget set with random wrong labels together with the retain set.",
    reference="Golatkar et al. 2020; Graves et al. 2021 (Amnesiac); Fan et al. 2024 (SalUn RL baseline)",
)
