"""Small pieces the baseline methods share (loops over data, distillation loss)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from ..data import LabelledData
from ..errors import DivergedError
from ..training import make_optimizer
from .base import MethodParams

if TYPE_CHECKING:
    from ..tasks import Task


class SGDParams(MethodParams):
    """The optimizer fields the fine-tuning baselines share: SGD with momentum 0.9 and weight decay 5e-4
    (Unlearn-Sparse `unlearn/FT.py`, SalUn `unlearn/RL.py`); a method with other defaults overrides a field."""

    optimizer: Literal["sgd", "adam"] = Field("sgd", description="sgd (with the momentum below, as in Unlearn-Sparse and SalUn) or adam.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (Unlearn-Sparse, SalUn and SCRUB: 0.9); ignored by adam.")
    weight_decay: float = Field(5e-4, ge=0, description="L2 weight decay (Unlearn-Sparse and SalUn: 5e-4; SCRUB's code: 0).")

    def optimizer_for(self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: Optional[float] = None) -> torch.optim.Optimizer:
        return make_optimizer(params, self.optimizer, lr, self.weight_decay if weight_decay is None else weight_decay, self.momentum)


def task_of(ctx) -> "Task":
    """The job's task (classification when a context was built without one)."""
    from ..tasks import CLASSIFICATION

    return ctx.task if ctx.task is not None else CLASSIFICATION


def is_regression(ctx) -> bool:
    return task_of(ctx).name == "regression"


def task_loss(ctx, name: str = "auto") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss a method's `loss` parameter names: auto is the task's own (CE, or MSE for regression)."""
    return task_of(ctx).loss_fn(name)


class RegressionLoss(MethodParams):
    """The `loss` parameter of the methods that unlearn regression models too."""

    loss: Literal["auto", "mse", "l1"] = Field(
        "auto", description="Training loss: auto is the task's own (cross-entropy for classification, MSE for regression); "
        "regression may also use l1 (mean absolute error) or mse.",
    )


def lower_lr_hint(lr: object) -> str:
    """What to change after a run that diverged at learning rate `lr` (a tenth of it, or less)."""
    return (f"lower the learning rate (it was {lr:g}: try --param lr={lr / 10:g}, or less)" if isinstance(lr, (int, float)) and lr > 0
            else "lower the learning rate or check the method's parameters")


def divergence_hint(params: MethodParams, task: str) -> str:
    """What to change after a non-finite result: the learning rate the run used, and for a regression model trained
    with SGD defaults (MSE's gradients are unbounded; on a 4-epoch ResNet-18 regressor finetune's SGD diverged even at
    lr 0.01 and ran at 0.001, or with Adam at 1e-4) the steadier optimizer."""
    hint = lower_lr_hint(getattr(params, "lr", None))
    if task == "regression" and getattr(params, "optimizer", None) == "sgd":
        hint += "; on a regression model --param optimizer=adam --param lr=1e-4 is steadier"
    return hint


def diverged_at(what: str, loss: float, step: int, params: MethodParams, task: str) -> DivergedError:
    """The error for a loss that is not finite at `step` (1-based). At the first step no update has been made yet: the
    original model's own loss overflows on this data (targets near 1e30 square past float32), which no learning rate
    explains, so the fix named is the data's scale."""
    if step == 1:
        scale = "standardise the regression targets" if task == "regression" else "check the inputs' scale"
        return DivergedError(f"cannot unlearn: {what} is {loss:g} at the first step, before any update (the original model's "
                             f"loss on this data overflows); nothing was written; {scale}")
    return DivergedError(f"unlearning diverged: {what} became {loss:g} at step {step}; nothing was written; {divergence_hint(params, task)}")


def endless_batches(data: LabelledData, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches forever (a new permutation each pass), for pairing a small set with a large one."""
    while True:
        yield from data.batches(batch_size, shuffle=True, generator=generator)


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) at temperature T, batch-mean, scaled by T^2 (Hinton); 'batchmean', never 'mean'."""
    t = temperature
    return F.kl_div((student_logits / t).log_softmax(1), (teacher_logits / t).log_softmax(1),
                    log_target=True, reduction="batchmean") * t * t


def other_labels(y: torch.Tensor, num_classes: int, generator: torch.Generator,
                 exclude: list[int] | None = None, keep_true: bool = False) -> torch.Tensor:
    """A uniformly random label per sample, never one in `exclude` and (unless keep_true) never the true one.

    Used by random-label (Amnesiac / RL) and SalUn. Drawn on the CPU with `generator`, so a seed gives
    the same labels on every device.
    """
    allowed = torch.ones(len(y), num_classes)
    if exclude:
        allowed[:, exclude] = 0.0
    if not keep_true:
        allowed[torch.arange(len(y)), y.cpu()] = 0.0
    if (allowed.sum(1) == 0).any():
        raise ValueError("no label left to draw from: every class is excluded")
    return torch.multinomial(allowed, 1, generator=generator).squeeze(1)


def mixed_batches(first: LabelledData, second: LabelledData, batch_size: int,
                  generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One shuffled pass over the union of two sets: (x, positions in `first`, positions in `second`) per batch.

    x holds the `first` samples, then the `second` ones; works for in-memory and lazy data sets alike.
    """
    n1 = len(first)
    order = torch.randperm(n1 + len(second), generator=generator)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        i1, i2 = idx[idx < n1], idx[idx >= n1] - n1
        xs = [d.take(i)[0] for d, i in ((first, i1), (second, i2)) if len(i)]
        yield torch.cat(xs), i1, i2
