"""Retrain from scratch on the retain set: the gold standard every other method is measured against."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..training import TrainConfig, fit
from .base import MethodOutput, MethodParams, UnlearnContext, register_method


class RetrainParams(MethodParams):
    epochs: int = Field(40, ge=1, description="Passes over the retain set (same default as `unlearn train`).")
    lr: float = Field(1e-3, gt=0, description="Learning rate.")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="adam, or sgd with momentum 0.9 and cosine decay.")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay.")
    batch_size: int = Field(64, ge=1, description="Training batch size.")


def run(ctx: UnlearnContext, p: RetrainParams) -> MethodOutput:
    model = ctx.make_model()
    config = TrainConfig(**p.model_dump())
    fit(model, ctx.retain, config, ctx.device, ctx.generator(7), ctx.progress, task="retrain")
    return MethodOutput(model=model, info={"epochs": p.epochs})


register_method("retrain", RetrainParams, run, summary="Retrain from scratch on the retain set (gold standard; slow).",
                reference="exact unlearning baseline")
