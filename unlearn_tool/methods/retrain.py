"""Retrain from scratch on the retain set: the gold standard every other method is measured against."""

from __future__ import annotations

from ..training import TrainConfig, fit
from .base import MethodOutput, MethodParams, UnlearnContext, register_method
from .common import task_loss


class RetrainParams(MethodParams, TrainConfig):
    """`unlearn train`'s recipe (TrainConfig), on the retain set."""


def run(ctx: UnlearnContext, p: RetrainParams) -> MethodOutput:
    model = ctx.make_model()
    config = TrainConfig(**p.model_dump())
    fit(model, ctx.retain, config, ctx.device, ctx.generator(7), ctx.progress, task="retrain", loss_fn=task_loss(ctx, p.loss))
    return MethodOutput(model=model, info={"epochs": p.epochs})


register_method("retrain", RetrainParams, run, summary="Retrain from scratch on the retain set (gold standard; slow).",
                reference="exact unlearning baseline", tasks=("classification", "regression"), scenarios=("class", "sample", "range"),
                data_parallel=True)
