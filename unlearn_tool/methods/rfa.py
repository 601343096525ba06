"""RFA-LoRA: Residual Feature Alignment unlearning (Qin et al. 2024), as designed in docs/rfa.md.

Only LoRA adapters train. Each adapted layer's output is  W x  (frozen, the
teacher's feature) plus a residual  s * B A x.  On retained data the residuals
are driven to zero and the logits aligned with the frozen original (teacher);
on the forget set the residuals are free to shift the output towards a
scenario-aware target:

* class unlearning: the teacher's own distribution over the *other* classes
  (where a retrained model sends those inputs), never noise;
* sample unlearning: the teacher's distribution with the true-class probability
  lowered to what the teacher gives *unseen* data of the same difficulty rank
  (quantile matching against held-out data), so forgotten samples look like
  test samples, not like errors.

Training stops as soon as a measured criterion is met (docs/rfa.md).
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import peft  # noqa: F401  (imported with the registry, so the method's wall time is compute, not import)
import torch
import torch.nn.functional as F
from pydantic import Field

from .. import lora
from ..evaluate import predict_logits
from .base import MethodOutput, MethodParams, UnlearnContext, register_method
from .common import kl_to_teacher


class RFAParams(MethodParams):
    rank: int = Field(8, ge=1, description="LoRA rank r (capped at each layer's smallest dimension by peft's shapes).")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the residual is scaled by alpha / rank.")
    target_layers: lora.TargetLayers = Field(
        "all", description="'all' Linear/Conv2d layers, 'head', 'last:N', or a list of layer names/regexes."
    )
    epochs: int = Field(30, ge=1, description="Maximum passes over the forget set (each forget batch is paired with a retain batch).")
    lr: float = Field(5e-3, gt=0, description="Adam learning rate of the adapters.")
    batch_size: int = Field(64, ge=1, description="Forget-set batch size (docs/rfa.md: 64 beat 32 on steps and utility).")
    retain_batch_size: int = Field(64, ge=1, description="Retain samples drawn per step (a sample of Dr, not all of it).")
    w_residual: float = Field(1.0, ge=0, description="Weight of the zero-residual term on retained data (relative residual energy).")
    w_align: float = Field(1.0, ge=0, description="Weight of the logit alignment (KL to the teacher) on retained data.")
    w_retain_ce: float = Field(0.0, ge=0, description="Weight of plain cross-entropy on retained labels (0: alignment only).")
    w_forget: Optional[float] = Field(
        None, ge=0, description="Weight of the forget-set shift term; default 1 for class and 5 for sample unlearning "
        "(sample targets sit close to the teacher, so their pull is weaker; docs/rfa.md)."
    )
    temperature: float = Field(2.0, gt=0, description="Distillation temperature of the retain alignment.")
    forget_target: Literal["auto", "other_classes", "heldout"] = Field(
        "auto", description="auto: other_classes for class unlearning, heldout for sample unlearning."
    )
    retain_target: Literal["without_forgotten", "teacher"] = Field(
        "without_forgotten", description="Class unlearning: align retained data with the teacher's distribution over the "
        "remaining classes (without_forgotten) or with its full distribution (teacher)."
    )
    stop: Literal["criterion", "epochs"] = Field(
        "criterion", description="criterion: stop once the forget target is reached (checked every epoch); epochs: run all epochs."
    )
    class_stop_acc: float = Field(
        0.0, ge=0, le=1, description="Class target reached when the forget set's accuracy over an epoch is <= this."
    )
    sample_conf_tolerance: float = Field(
        0.01, ge=0, description="Sample target reached when the forget set's mean true-class confidence <= held-out mean + this."
    )
    retain_agreement: float = Field(
        0.99, ge=0, le=1, description="Also required to stop: share of the epoch's retain samples on which student and teacher agree (argmax)."
    )


MASKED_LOGIT = -1e4  # finite, so KL terms of removed classes are exactly 0 (not NaN): exp(-1e4 / T) == 0 in float32


def _without(logits: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Logits with the given classes removed (set to a very low finite value)."""
    if not classes:
        return logits
    out = logits.clone()
    out[:, classes] = MASKED_LOGIT
    return out


def _other_class_targets(teacher_logits: torch.Tensor, forget_classes: list[int]) -> torch.Tensor:
    """Teacher distribution with the forgotten classes removed and renormalised."""
    masked = teacher_logits.clone()
    masked[:, forget_classes] = float("-inf")
    return masked.softmax(1)


def _heldout_targets(teacher_forget: torch.Tensor, y_forget: torch.Tensor, teacher_heldout: torch.Tensor, y_heldout: torch.Tensor) -> torch.Tensor:
    """Quantile-matched targets: the k-th most confident forget sample gets the k-th quantile of held-out confidence.

    The other classes keep the teacher's relative proportions, so a sample whose
    matched confidence falls low moves towards its most similar class, as an
    unseen hard sample would.
    """
    p_f = teacher_forget.softmax(1)
    p_h = teacher_heldout.softmax(1)
    conf_h = p_h.gather(1, y_heldout[:, None]).squeeze(1).sort().values
    # rank forget samples by the teacher's true-class margin (finer than a saturated probability)
    true_logit = teacher_forget.gather(1, y_forget[:, None]).squeeze(1)
    others = teacher_forget.scatter(1, y_forget[:, None], float("-inf"))
    margin = true_logit - others.logsumexp(1)
    ranks = margin.argsort().argsort().float()
    n_f, n_h = len(y_forget), len(conf_h)
    q = ((ranks + 0.5) / n_f * n_h).long().clamp(0, n_h - 1)
    target_conf = torch.minimum(conf_h[q], p_f.gather(1, y_forget[:, None]).squeeze(1))  # never raise confidence
    rest = p_f.scatter(1, y_forget[:, None], 0.0)
    rest = rest / rest.sum(1, keepdim=True).clamp_min(1e-12)
    target = rest * (1 - target_conf)[:, None]
    return target.scatter(1, y_forget[:, None], target_conf[:, None])


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * logits.log_softmax(1)).sum(1).mean()


def _forget_targets(ctx: UnlearnContext, teacher, kind: str) -> tuple[torch.Tensor, float]:
    """Fixed per-sample target distributions for the forget set, and the held-out confidence level (sample case)."""
    t_forget, y_forget = predict_logits(teacher, ctx.forget, ctx.device, ctx.batch_size)
    if kind == "other_classes":
        if ctx.splits.forget_classes:
            return _other_class_targets(t_forget, ctx.splits.forget_classes), 0.0
        # sample unlearning forced to misclassify: drop each sample's own label (an ablation, not the default)
        masked = t_forget.scatter(1, y_forget[:, None], float("-inf"))
        return masked.softmax(1), 0.0
    t_held, y_held = predict_logits(teacher, ctx.splits.test, ctx.device, ctx.batch_size)
    heldout_conf = float(t_held.softmax(1).gather(1, y_held[:, None]).mean())
    return _heldout_targets(t_forget, y_forget, t_held, y_held), heldout_conf


def _feature_scales(ctx: UnlearnContext, teacher, layers: list[str], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Mean squared teacher feature per adapted layer on retained data: the residual penalty is relative energy."""
    x, _ = ctx.retain.sample(min(len(ctx.retain), 256), gen)
    with torch.no_grad(), lora.capture_outputs(teacher, layers) as feats:
        teacher(x.to(ctx.device))
    return {n: feats[n].pow(2).mean().clamp_min(1e-8) for n in layers}


def run(ctx: UnlearnContext, p: RFAParams) -> MethodOutput:
    if ctx.task is not None and ctx.task.name == "regression":  # regression design: rfa_regression.py, docs/rfa.md
        from .rfa_regression import run_regression
        return run_regression(ctx, p)
    device, teacher = ctx.device, ctx.original.eval()
    forget, retain = ctx.forget, ctx.retain
    layers = lora.select_layers(teacher, p.target_layers)
    model = lora.inject(teacher, layers, p.rank, p.alpha).to(device)
    model.eval()  # BatchNorm statistics and dropout stay the teacher's: only adapters change

    kind = p.forget_target if p.forget_target != "auto" else ("other_classes" if ctx.scenario == "class" else "heldout")
    targets, heldout_conf = _forget_targets(ctx, teacher, kind)
    w_forget = p.w_forget if p.w_forget is not None else (1.0 if kind == "other_classes" else 5.0)
    # Class unlearning: retained data follow the teacher *without* the forgotten classes, as a retrained model would.
    forgotten = ctx.splits.forget_classes if (kind == "other_classes" and p.retain_target == "without_forgotten") else []
    targets, y_forget = targets.to(device), forget.targets.to(device)
    gen = ctx.generator(1)
    scale = _feature_scales(ctx, teacher, layers, gen)
    adapted = lora.lora_layers(model)
    name_of = {name: name.removeprefix("base_model.model.") for name, _ in adapted}

    params = lora.adapter_parameters(model)
    opt = torch.optim.Adam(params, lr=p.lr)
    n_f = len(forget)
    steps_per_epoch = math.ceil(n_f / p.batch_size)
    info = {"adapted_layers": len(layers), "trainable_params": sum(q.numel() for q in params), "forget_target": kind,
            "w_forget": w_forget}
    stop_reason, epoch = "epochs", 0
    for epoch in range(1, p.epochs + 1):
        # Running statistics of this epoch (outputs before each step): the stopping rule needs no extra pass.
        forget_hits = forget_conf = retain_agree = retain_seen = 0.0
        order = torch.randperm(n_f, generator=gen)
        for step in range(steps_per_epoch):
            idx = order[step * p.batch_size:(step + 1) * p.batch_size]
            xf = forget.take(idx)[0].to(device)
            xr, yr = retain.sample(p.retain_batch_size, gen)
            xr, yr = xr.to(device), yr.to(device)
            with torch.no_grad():
                t_retain = _without(teacher(xr), forgotten)
            with lora.capture_residuals(model, adapted) as res:
                out = model(torch.cat([xf, xr]))
            nf, dev_idx = len(idx), idx.to(device)
            loss_forget = _soft_ce(out[:nf], targets[dev_idx])
            loss_align = kl_to_teacher(out[nf:], t_retain, p.temperature)
            loss_res = torch.stack([r[nf:].pow(2).mean() / scale[name_of[n]] for n, r in res.items()]).mean()
            loss = w_forget * loss_forget + p.w_align * loss_align + p.w_residual * loss_res
            if p.w_retain_ce:
                loss = loss + p.w_retain_ce * F.cross_entropy(out[nf:], yr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                yf = y_forget[dev_idx]
                forget_hits += float((out[:nf].argmax(1) == yf).sum())
                forget_conf += float(out[:nf].softmax(1).gather(1, yf[:, None]).sum())
                retain_agree += float((out[nf:].argmax(1) == t_retain.argmax(1)).sum())
                retain_seen += len(xr)
        ctx.report("rfa", epoch, p.epochs)
        if p.stop == "criterion" and retain_agree / retain_seen >= p.retain_agreement:
            reached = (forget_hits / n_f <= p.class_stop_acc) if kind == "other_classes" else (forget_conf / n_f <= heldout_conf + p.sample_conf_tolerance)
            if reached:
                stop_reason = "criterion"
                break
    info.update({"epochs_run": epoch, "steps": epoch * steps_per_epoch, "stop_reason": stop_reason})
    return MethodOutput(model=lora.merged_copy(model), adapter_model=model, info=info)


register_method(
    "rfa",
    RFAParams,
    run,
    summary="RFA-LoRA: LoRA residuals zero on retained data, shifted on the forget set (main method).",
    supports_adapter=True,
    reference="Qin et al. 2024, arXiv 2411.08443 (design: docs/rfa.md)",
    tasks=("classification", "regression"), scenarios=("class", "sample", "range"),
)
