"""Blindspot (Tarun et al. 2023, "Deep Regression Unlearning"): its original regression form, and adapted to classification.

A "blindspot" model B, a fresh network trained briefly on Dr only, shows how a
model that never saw Df behaves on it. The original is then trained over
Dr ∪ Df with a per-sample flag u:

    L_r = CE(out[u=0], y[u=0])
    L_f = D(softmax out[u=1], softmax B(x)[u=1]) + beta * sum_layers mean((A(act) - A(act_B))^2 [u=1])
    L   = p * L_f + (1 - p) * L_r,   p = fraction of forget samples in the batch

with D = KL(B || model) or L1 on the probabilities, and A the attention map of
a layer output: conv (N, C, H, W) -> mean over channels of a^2, flattened and
L2-normalised; linear (N, F) -> a^2, L2-normalised. Activations are recorded
with forward hooks on the Linear/Conv2d layers (no model changes needed).
Regression (DRU's own form): L_r = L1(out[u=0], y[u=0]) and the output match is L1(out[u=1], B(x)[u=1]) on the
raw outputs; B is trained with L1 too.
Note: in the SSD repository the name "blindspot" denotes Bad Teacher; this is DRU.
Algorithm, defaults and measured figures: docs/methods.md; Tarun et al., "Deep Regression Unlearning" (ayushkumartarun/deep-regression-unlearning).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from .. import lora
from ..data import LabelledData
from ..training import TrainConfig, fit
from .base import MethodOutput, MethodParams, UnlearnContext, register_method
from .common import is_regression, kl_to_teacher, task_loss


class BlindspotParams(MethodParams):
    task_only = {"forget_loss": ("classification", "a regressor's outputs on Df are always matched with L1 (DRU)")}
    blindspot_epochs: int = Field(2, ge=1, description="Epochs training the blindspot model B on Dr (DRU: 2, partially trained on purpose).")
    blindspot_lr: float = Field(1e-2, gt=0, description="Adam learning rate of B (DRU: 1e-2).")
    blindspot_batch_size: int = Field(64, ge=1, description="Batch size for training B (not fixed by the notes).")
    epochs: int = Field(
        5, ge=1, description="Passes over Dr ∪ Df for the unlearning phase. DRU: 1 (on large data); 5 gives the tiny digits models enough steps."
    )
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the unlearning phase (DRU: 1e-3).")
    batch_size: int = Field(64, ge=1, description="Batch size of the unlearning phase. DRU: 256; 64 for small data sets.")
    beta: float = Field(50.0, ge=0, description="Weight of the attention-transfer term (DRU: 50).")
    forget_loss: Literal["kl", "l1"] = Field(
        "kl", description="Classification: output match on Df, KL(B || model) on softmax or L1 between the probability vectors. "
        "Regression always matches the raw outputs with L1 (DRU)."
    )
    layers: Literal["intermediate", "all"] = Field(
        "intermediate", description="Layers of the attention term: every Linear/Conv2d except the last (classifier head), or all of them."
    )


def attention_map(a: torch.Tensor) -> torch.Tensor:
    """A(a): conv maps -> mean over channels of a^2; vectors -> a^2; flattened per sample and L2-normalised."""
    a = a.float()
    m = a.pow(2).mean(1) if a.dim() > 2 else a.pow(2)
    return F.normalize(m.flatten(1), dim=1)


def run(ctx: UnlearnContext, p: BlindspotParams) -> MethodOutput:
    device = ctx.device
    regression = is_regression(ctx)
    label_loss = task_loss(ctx, "l1") if regression else F.cross_entropy  # DRU: L1 on regression targets
    # 1. the blindspot model: never sees Df
    blind = ctx.make_model()
    fit(blind, ctx.retain, TrainConfig(epochs=p.blindspot_epochs, lr=p.blindspot_lr, optimizer="adam", batch_size=p.blindspot_batch_size),
        device, ctx.generator(51), ctx.progress, task="blindspot: train B", loss_fn=label_loss)
    blind.eval()

    layer_names = lora.lora_capable_layers(blind)
    if p.layers == "intermediate" and len(layer_names) > 1:
        layer_names = layer_names[:-1]

    # 2. unlearning phase over Dr ∪ Df, flag u = 1 for forget samples
    train = ctx.splits.train
    flags = torch.zeros(len(train), dtype=torch.long)
    flags[ctx.splits.forget_idx] = 1
    order_idx = torch.arange(len(train))
    index_data = LabelledData.from_tensors(order_idx, flags)  # batches of (index, flag); inputs fetched with take()

    model = ctx.student().train()
    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    gen = ctx.generator(52)
    steps = 0
    sums = {"retain": 0.0, "forget_out": 0.0, "forget_attention": 0.0}
    for epoch in range(1, p.epochs + 1):
        for idx, u in index_data.batches(p.batch_size, shuffle=True, generator=gen):
            x, y = train.take(idx)
            x, y, u = x.to(device), y.to(device), u.to(device).bool()
            with torch.no_grad(), lora.capture_outputs(blind, layer_names) as acts_b:
                out_b = blind(x)
            with lora.capture_outputs(model, layer_names) as acts:
                out = model(x)
            frac = float(u.float().mean())
            zero = out.sum() * 0.0
            loss_r = label_loss(out[~u], y[~u]) if (~u).any() else zero
            if u.any():
                if regression:
                    loss_out = (out[u] - out_b[u]).abs().mean()  # DRU: L1 to the blindspot model's outputs
                elif p.forget_loss == "kl":
                    loss_out = kl_to_teacher(out[u], out_b[u])
                else:
                    loss_out = (out[u].softmax(1) - out_b[u].softmax(1)).abs().sum(1).mean()
                loss_att = sum(((attention_map(acts[n][u]) - attention_map(acts_b[n][u])) ** 2).mean() for n in layer_names) if layer_names else zero
                loss_f = loss_out + p.beta * loss_att
            else:
                loss_out = loss_att = loss_f = zero
            loss = frac * loss_f + (1 - frac) * loss_r
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            sums["retain"] += loss_r.item()
            sums["forget_out"] += loss_out.item()
            sums["forget_attention"] += loss_att.item()
        ctx.report("blindspot", epoch, p.epochs)
    info = {"steps": steps, "attention_layers": layer_names,
            **{f"mean_{k}_loss": round(v / max(steps, 1), 5) for k, v in sums.items()}}
    return MethodOutput(model=model.eval(), info=info)


register_method("blindspot", BlindspotParams, run,
                summary="DRU Blindspot: match a Dr-only 'blindspot' model on Df (outputs + attention), the label loss on Dr (CE; regression: L1).",
                reference="Tarun et al. 2023, Deep Regression Unlearning, arXiv 2210.08196 (ayushkumartarun/deep-regression-unlearning)",
                tasks=("classification", "regression"), scenarios=("class", "sample", "range"))
