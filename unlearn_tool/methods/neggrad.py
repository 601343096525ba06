"""Gradient-ascent baselines: `neggrad` (GA: maximise CE on Df only) and `neggrad+` (NegGrad+ of
SCRUB: alpha * CE on a retain batch - (1 - alpha) * CE on a forget batch, iterating Dr and cycling Df).

GA is unstable: the forget loss is unbounded, so over-training collapses the whole model. Both
methods therefore stop early once the forget set is forgotten (`stop`), checked after every
epoch: class unlearning stops when forget accuracy reaches `stop_forget_acc` (default 0), sample
unlearning when forget accuracy falls to the test accuracy (what a model that never saw Df scores).
"""

from __future__ import annotations

from typing import Callable, Iterator, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..evaluate import accuracy, stream
from .base import MethodOutput, UnlearnContext, register_method
from .common import RegressionLoss, SGDParams, diverged_at, endless_batches, is_regression, task_loss, task_of


class _AscentParams(SGDParams):
    task_only = {"stop_forget_acc": ("classification", "a regressor stops at stop_forget_mae (neggrad+)")}
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay (SCRUB's code: 0; its paper says 5e-4, issue #4).")
    stop: Literal["criterion", "epochs"] = Field(
        "criterion", description="criterion: stop after the first epoch that meets the forget target (see stop_forget_acc); "
                                 "epochs: always run every epoch (the literature's protocol, prone to collapse).",
    )
    stop_forget_acc: Optional[float] = Field(
        None, ge=0, le=1,
        description="Forget accuracy at which to stop. Default: 0 for class unlearning, the original model's test "
                    "accuracy for sample unlearning (retrain level; going lower over-forgets and is itself detectable).",
    )


class NegGradParams(_AscentParams):
    epochs: int = Field(
        10, ge=1,
        description="Maximum passes over the forget set (Unlearn-Sparse README: 5 fixed epochs; here a cap, since `stop` ends the run once Df is forgotten).",
    )
    lr: float = Field(
        3e-3, gt=0,
        description="Learning rate. Unlearn-Sparse README: 1e-4; the maintainers advise 5e-4..1e-3 when forget accuracy "
                    "does not drop (Unlearn-Saliency #8). On digits 3e-3 forgets a class in 4 epochs at retain accuracy 0.96 (1e-3: 8 epochs, 0.88).",
    )
    batch_size: int = Field(64, ge=1, description="Forget batch size.")


class NegGradPlusParams(_AscentParams, RegressionLoss):
    task_only = {**_AscentParams.task_only, "stop_forget_mae": ("regression", "a classifier stops at stop_forget_acc")}
    epochs: int = Field(10, ge=1, description="Maximum passes over the retain set (SCRUB small-scale: 10).")
    lr: float = Field(0.01, gt=0, description="Learning rate (SCRUB small-scale NegGrad+: 0.01).")
    alpha: float = Field(
        0.95, gt=0, lt=1,
        description="Weight of the retain CE; the forget CE is ascended with weight 1 - alpha (SCRUB small-scale: 0.95).",
    )
    batch_size: int = Field(64, ge=1, description="Retain batch size.")
    forget_batch_size: int = Field(64, ge=1, description="Forget batch size (the forget set is cycled, reshuffled each pass).")
    stop_forget_mae: Optional[float] = Field(
        None, gt=0, description="Regression: forget-set MAE at which to stop. Default: the original's test MAE for sample unlearning "
        "(a retrained model errs on forgotten samples like on unseen ones); range unlearning has no such level without a "
        "retrained model, so it runs every epoch unless this is given.",
    )


def _target(ctx: UnlearnContext, stop_forget_acc: Optional[float]) -> float:
    if stop_forget_acc is not None:
        return stop_forget_acc
    if ctx.scenario == "class":
        return 0.0
    return accuracy(ctx.original, ctx.splits.test, ctx.device, ctx.batch_size)


def _mae(model: nn.Module, ctx: UnlearnContext, data) -> float:
    """A regression model's mean absolute error on `data` (eval mode; the model's mode is restored)."""
    return float(stream(model, data, ctx.device, ctx.batch_size, ctx.task).abs_err.mean())


def _regression_target(ctx: UnlearnContext, stop_forget_mae: Optional[float]) -> Optional[float]:
    if stop_forget_mae is not None:
        return stop_forget_mae
    return _mae(ctx.original, ctx, ctx.splits.test) if ctx.scenario == "sample" else None


def _forgotten(model: nn.Module, ctx: UnlearnContext, target: Optional[float]) -> tuple[bool, float]:
    """Whether forget accuracy has fallen to the target (regression: forget MAE risen to it), evaluated in eval mode;
    the model is left in train mode. A None target (regression range unlearning) is never reached."""
    if is_regression(ctx):
        mae = _mae(model, ctx, ctx.forget)
        model.train()
        return target is not None and mae >= target, mae
    acc = accuracy(model, ctx.forget, ctx.device, ctx.batch_size)
    model.train()
    return acc <= target, acc


def _train(ctx: UnlearnContext, p, task: str, model: nn.Module, opt, epoch_losses: Callable[[], Iterator[torch.Tensor]],
           target: float) -> MethodOutput:
    """The loop both variants share: one step per loss; stop on divergence (keeping the last finite weights) or once
    forget accuracy reaches the target."""
    steps, epoch, stop_reason = 0, 0, "epochs"
    key = "stop_forget_mae" if is_regression(ctx) else "stop_forget_acc"
    if p.stop == "criterion" and _forgotten(model, ctx, target)[0]:  # read before any step: it said "target reached after 1 pass"
        return MethodOutput(model=model.eval(), info={"epochs_run": 0, "steps": 0, "stop_reason": "criterion",
                                                      key: None if target is None else round(target, 4)})
    for epoch in range(1, p.epochs + 1):
        for loss in epoch_losses():
            if not torch.isfinite(loss):  # the ascent has diverged: keep the last finite weights
                if steps == 0:  # none to keep: the output would be the original, unchanged, reported as a success
                    raise diverged_at(f"{task}'s loss", loss.item(), 1, p, task_of(ctx).name)
                stop_reason = "diverged"
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        ctx.report(task, epoch, p.epochs)
        if stop_reason == "diverged":
            break
        if p.stop == "criterion" and _forgotten(model, ctx, target)[0]:
            stop_reason = "criterion"
            break
    info = {"epochs_run": epoch, "steps": steps, "stop_reason": stop_reason, key: None if target is None else round(target, 4)}
    return MethodOutput(model=model.eval(), info=info)


def run_neggrad(ctx: UnlearnContext, p: NegGradParams) -> MethodOutput:
    model = ctx.student().train()
    opt = p.optimizer_for(model.parameters(), p.lr)
    gen, target = ctx.generator(21), _target(ctx, p.stop_forget_acc)

    def losses() -> Iterator[torch.Tensor]:
        for x, y in ctx.forget.batches(p.batch_size, shuffle=True, generator=gen):
            yield -F.cross_entropy(model(x.to(ctx.device)), y.to(ctx.device))

    return _train(ctx, p, "neggrad", model, opt, losses, target)


def run_neggrad_plus(ctx: UnlearnContext, p: NegGradPlusParams) -> MethodOutput:
    model = ctx.student().train()
    opt = p.optimizer_for(model.parameters(), p.lr)
    loss_fn = task_loss(ctx, p.loss)
    target = _regression_target(ctx, p.stop_forget_mae) if is_regression(ctx) else _target(ctx, p.stop_forget_acc)
    gen = ctx.generator(22)
    forget_batches = endless_batches(ctx.forget, p.forget_batch_size, ctx.generator(23))

    def losses() -> Iterator[torch.Tensor]:
        for xr, yr in ctx.retain.batches(p.batch_size, shuffle=True, generator=gen):
            xf, yf = next(forget_batches)
            out = model(torch.cat([xr, xf]).to(ctx.device))
            nr = len(yr)
            loss_r = loss_fn(out[:nr], yr.to(ctx.device))
            loss_f = loss_fn(out[nr:], yf.to(ctx.device))
            yield p.alpha * loss_r - (1 - p.alpha) * loss_f

    return _train(ctx, p, "neggrad+", model, opt, losses, target)


register_method(
    "neggrad", NegGradParams, run_neggrad,
    summary="GA / NegGrad: gradient ascent on the forget set only (unstable; stops once Df is forgotten).",
    reference="Thudi et al. 2022; Jia et al. 2023 (Unlearn-Sparse GA baseline)",
    data_parallel=True,
)
register_method(
    "neggrad+", NegGradPlusParams, run_neggrad_plus,
    summary="NegGrad+: alpha * CE(retain) - (1 - alpha) * CE(forget), iterating Dr and cycling Df (regression: MSE or L1).",
    reference="Kurmanji et al. 2023 (SCRUB repository, NegGrad+ baseline)",
    tasks=("classification", "regression"), scenarios=("class", "sample", "range"), data_parallel=True,
)
