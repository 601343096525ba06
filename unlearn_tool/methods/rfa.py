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

Training stops as soon as a measured criterion is met (docs/rfa.md). What keeps it cheap (measured in
docs/rfa.md, "Speed: what was tried"): each adapted layer runs as one op with its effective weight; when
the adapters sit on a suffix of the network, the frozen prefix runs once per sample; the teacher's outputs
on retained data come from a small pool; the stopping rule is checked every few steps.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from .. import lora
from ..errors import MethodError
from ..evaluate import predict_logits, remembered_logits
from ..precision import ScaledSteps
from ._rfa_loop import (
    GUARD_SAMPLES,
    RESIDUAL_ROWS,
    _adam,
    _ForgetSet,
    _Net,
    _RetainPool,
    _restore,
    _scheduled_lr,
    _snapshot,
)
from .base import MethodOutput, MethodParams, UnlearnContext, register_method
from .common import kl_to_teacher


class RFAParams(MethodParams):
    task_only = {
        "class_stop_acc": ("classification", "a regressor stops by its forget-MAE target (docs/rfa.md R5)"),
        "sample_conf_tolerance": ("classification", "a regressor stops by its forget-MAE target (docs/rfa.md R5)"),
        "retain_target": ("classification", "a regressor's retained outputs are aligned with the teacher's (docs/rfa.md R1)"),
        "retain_agreement": ("classification", "a regressor's retained drift is bounded instead (docs/rfa.md R5)"),
        "agreement_patience": ("classification", "a regressor's retained drift is bounded instead (docs/rfa.md R5)"),
        "temperature": ("classification", "a regressor's retained outputs are matched by squared error (docs/rfa.md R1)"),
    }
    rank: int = Field(8, ge=1, description="LoRA rank r (capped at each layer's smallest dimension by peft's shapes).")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the residual is scaled by alpha / rank.")
    target_layers: lora.TargetLayers = Field(
        "auto", description="'auto': on transformers (HF ViT, timm ViT/DeiT) the attention projections (measured: "
        "lora.DEFAULT_TARGETS, docs/rfa.md); elsewhere the Linear/Conv2d layers after the earliest point where the network can be "
        "cut at one tensor with at least half of its multiply-accumulates before it (all layers if no such cut leaves two); "
        "'all', 'head', 'last:N', 'attention', 'mlp', 'blocks:N' (last N transformer blocks), or a list of these and layer names/regexes. "
        "Regression: 'auto' is every Linear/Conv2d layer (docs/rfa.md R7)."
    )
    epochs: Optional[int] = Field(
        None, ge=1, description="Maximum passes over the forget set (each forget batch is paired with a retain batch); "
        "default 30 for class and 3 for sample unlearning (docs/rfa.md); regression: 30 (docs/rfa.md R7)."
    )
    lr: float = Field(1e-2, gt=0, description="Adam learning rate of the adapters (beta1 0.5; docs/rfa.md).")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="constant, or cosine decay to 0 over the maximum steps (settles the adapters instead of ending "
        "wherever Adam's oscillation is; measured for sample unlearning in docs/rfa.md, not a default there)."
    )
    batch_size: int = Field(64, ge=1, description="Forget-set batch size (docs/rfa.md: 64 beat 32 on steps and utility).")
    retain_batch_size: int = Field(64, ge=1, description="Retain samples drawn per step (a sample of Dr, not all of it).")
    w_residual: float = Field(1.0, ge=0, description="Weight of the zero-residual term on retained data (relative residual energy).")
    w_align: float = Field(1.0, ge=0, description="Weight of the logit alignment (KL to the teacher) on retained data "
                             "(regression: squared error to the teacher's outputs).")
    w_retain_ce: float = Field(0.0, ge=0, description="Weight of plain cross-entropy on retained labels (regression: squared error on "
                                  "retained targets; 0: alignment only).")
    w_forget: Optional[float] = Field(
        None, ge=0, description="Weight of the forget-set shift term; default 1 for class and 5 for sample unlearning "
        "(sample targets sit close to the teacher, so their pull is weaker; docs/rfa.md); regression: 10 for sample and 5 for "
        "range unlearning (docs/rfa.md R4)."
    )
    temperature: float = Field(2.0, ge=0.01, description="Distillation temperature of the retain alignment. At least 0.01: logits / T overflow below.")
    forget_target: Literal["auto", "other_classes", "heldout"] = Field(
        "auto", description="auto: other_classes for class unlearning, heldout for sample unlearning. Regression: auto is each "
        "forget sample's own error plus the teacher's generalisation gap (sample) or the mean target of its 10 nearest retained "
        "samples in the teacher's features (range); heldout the quantile-matched held-out errors (docs/rfa.md R2, R3)."
    )
    retain_target: Literal["without_forgotten", "teacher"] = Field(
        "without_forgotten", description="Class unlearning: align retained data with the teacher's distribution over the "
        "remaining classes (without_forgotten) or with its full distribution (teacher)."
    )
    solver: Literal["adam", "gauss-newton"] = Field(
        "adam", description="adam: train the adapters by Adam passes over Df. gauss-newton (regression only): one damped "
        "Gauss-Newton step in the adapters' B weights, weighed by the retained outputs' curvature (docs/rfa.md R9)."
    )
    stop: Literal["criterion", "epochs"] = Field(
        "criterion", description="criterion: stop once the forget target is reached (checked every few steps); epochs: run all epochs."
    )
    class_stop_acc: float = Field(
        0.0, ge=0, le=1, description="Class target reached when the accuracy on (up to 256 of) the forget samples is <= this."
    )
    sample_conf_tolerance: float = Field(
        0.01, ge=0, description="Sample target reached when the forget samples' mean true-class confidence <= held-out mean + this."
    )
    retain_agreement: float = Field(
        0.99, ge=0, le=1, description="Also required to stop: share of 128 held-back retained samples on which student and "
        "teacher agree (argmax); for class unlearning those nearest the teacher's decision boundary."
    )
    agreement_patience: Optional[int] = Field(
        3, ge=1, description="Class unlearning: once the forget target holds, stop when the retained agreement has not "
        "improved for this many checks, and keep the adapters of the check with the best agreement (a weakly trained "
        "teacher's boundary samples flip too easily to ever reach retain_agreement; docs/rfa.md). None: wait for "
        "retain_agreement or the last epoch."
    )


    @model_validator(mode="after")
    def _forgets(self) -> "RFAParams":
        if self.w_forget == 0:
            raise ValueError("w_forget 0 removes the forget term, so nothing would be forgotten; give a positive weight "
                             "(or leave it unset for the default)")
        return self

    def check_task(self, task: str) -> None:
        super().check_task(task)
        if self.solver != "adam" and task != "regression":
            raise MethodError(f"rfa: solver {self.solver} is for regression models; a classifier trains its adapters with solver adam")
        if self.forget_target == "other_classes" and task == "regression":
            raise MethodError("rfa: forget_target other_classes is for classification; a regression model uses auto (sample: its own "
                              "error plus the generalisation gap; range: retained neighbours), or heldout (quantile-matched held-out errors)")


DEFAULT_EPOCHS = {"other_classes": 30, "heldout": 3}  # sample: more passes only over-shoot (docs/rfa.md)
EVAL_FORGET = 256  # forget samples the stopping rule is checked on
HELDOUT_SAMPLES = 1000  # test samples behind the held-out confidence distribution (sample unlearning): apply's summary size


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


def _forget_targets(ctx: UnlearnContext, teacher, t_forget: torch.Tensor, kind: str) -> tuple[torch.Tensor, float]:
    """Fixed per-sample target distributions for the forget set, and the held-out confidence level (sample case)."""
    y_forget = ctx.forget.targets
    if kind == "other_classes":
        if ctx.splits.forget_classes:
            return _other_class_targets(t_forget, ctx.splits.forget_classes), 0.0
        # sample unlearning forced to misclassify: drop each sample's own label (an ablation, not the default)
        masked = t_forget.scatter(1, y_forget[:, None], float("-inf"))
        return masked.softmax(1), 0.0
    test = ctx.test_sample(HELDOUT_SAMPLES)  # a sample is enough for a confidence distribution; apply's summary ran it
    t_held, y_held = predict_logits(teacher, test, ctx.device, 256)
    heldout_conf = float(t_held.softmax(1).gather(1, y_held[:, None]).mean())
    return _heldout_targets(t_forget, y_forget, t_held, y_held), heldout_conf


def run(ctx: UnlearnContext, p: RFAParams) -> MethodOutput:
    if ctx.task is not None and ctx.task.name == "regression":  # regression design: rfa_regression.py, docs/rfa.md
        from .rfa_regression import run_regression
        return run_regression(ctx, p)
    if p.solver != "adam":
        raise MethodError(f"rfa: solver {p.solver} is for regression models; a classifier trains its adapters with solver adam")
    device, teacher = ctx.device, ctx.original.eval()
    probe = ctx.retain.take(torch.arange(min(2, len(ctx.retain))))[0].to(device)  # a real input batch, to trace shapes
    if p.target_layers == "auto" and lora.family(teacher) == "transformer":
        layers = lora.select_layers(teacher, "auto")  # the family default measured on a pre-trained ViT (attention)
    else:
        layers = lora.auto_layers(teacher, probe) if p.target_layers == "auto" else lora.select_layers(teacher, p.target_layers)
    model = lora.inject(teacher, layers, p.rank, p.alpha).to(device)
    model.eval()  # BatchNorm statistics and dropout stay the teacher's: only adapters change
    adapted = lora.lora_layers(model)
    kind = p.forget_target if p.forget_target != "auto" else ("other_classes" if ctx.scenario == "class" else "heldout")
    w_forget = p.w_forget if p.w_forget is not None else (1.0 if kind == "other_classes" else 5.0)
    # Class unlearning: retained data follow the teacher *without* the forgotten classes, as a retrained model would.
    forgotten = ctx.splits.forget_classes if (kind == "other_classes" and p.retain_target == "without_forgotten") else []
    if forgotten and ctx.anchor is not None:  # the anchor still knows the classes earlier requests removed: those have no retained sample
        forgotten = sorted(set(forgotten) | (set(range(ctx.num_classes)) - set(ctx.retain.targets.unique().tolist())))
    gen = ctx.generator(1)
    params = lora.adapter_parameters(model)
    opt = _adam(params, p.lr)
    scaled = ScaledSteps(device)  # fp16 loss scaling on a GPU without bf16; plain steps otherwise
    n_f = len(ctx.forget)
    steps_per_epoch = math.ceil(n_f / p.batch_size)
    max_steps = (p.epochs or DEFAULT_EPOCHS[kind]) * steps_per_epoch
    boundary = kind == "other_classes"
    info = {"adapted_layers": len(layers), "trainable_params": sum(q.numel() for q in params), "forget_target": kind,
            "w_forget": w_forget, "guard": "boundary" if boundary else "random", "max_epochs": p.epochs or DEFAULT_EPOCHS[kind]}
    stop_reason, step = "epochs", 0
    with lora.fused_adapters(model, adapted) as fused:
        net = _Net(ctx, model, layers, fused, probe)
        info["frozen_prefix"] = net.split.boundary if net.split is not None else None
        forget = _ForgetSet(net, ctx.forget, remembered_logits(teacher, ctx.forget))
        targets, heldout_conf = _forget_targets(ctx, teacher, forget.teacher_logits, kind)
        targets, y_forget = targets.to(device), ctx.forget.targets.to(device)
        guard = min(GUARD_SAMPLES, len(ctx.retain) // 4)
        retain = _RetainPool(net, ctx.retain, forgotten, guard, boundary, gen)
        # the stopping rule reads the model after a step: a forget subset and the held-back retained samples
        eval_idx = torch.randperm(n_f, generator=gen)[:EVAL_FORGET] if n_f > EVAL_FORGET else torch.arange(n_f)
        zf_eval, yf_eval = forget.take(eval_idx), y_forget[eval_idx.to(device)]
        check_every = max(1, round((len(eval_idx) + guard) / (p.batch_size + p.retain_batch_size)))  # checks cost ~1/3 of training
        best_agree, best_state, since_best = -1.0, None, 0
        patience = p.agreement_patience if kind == "other_classes" else None
        for step in range(1, max_steps + 1):
            pos = (step - 1) % steps_per_epoch
            if pos == 0:
                order = torch.randperm(n_f, generator=gen)
            idx = order[pos * p.batch_size:(pos + 1) * p.batch_size]
            zf = forget.take(idx)
            zr, yr, t_retain = retain.batch(p.retain_batch_size)
            nf, dev_idx = len(idx), idx.to(device)
            # the residuals of a few retain rows are recorded during the forward pass (the zero-residual term)
            fused.rows = slice(nf, nf + min(RESIDUAL_ROWS, len(yr))) if p.w_residual else None
            out = net.forward(torch.cat([zf, zr]))
            res, fused.rows = fused.residuals, None
            loss = w_forget * _soft_ce(out[:nf], targets[dev_idx]) + p.w_align * kl_to_teacher(out[nf:], t_retain, p.temperature)
            if p.w_residual:
                loss = loss + p.w_residual * torch.stack([r.pow(2).mean() / retain.energy[n] for n, r in res.items()]).mean()
            if p.w_retain_ce:
                loss = loss + p.w_retain_ce * F.cross_entropy(out[nf:], yr)
            opt.lr = _scheduled_lr(p, step, max_steps)
            opt.zero_grad(set_to_none=True)
            scaled.backward_and_step(loss, opt)
            ctx.report("rfa", step, max_steps)
            if p.stop == "criterion" and step % check_every == 0:
                zg, tg = retain.guard()
                with torch.no_grad():
                    of = net.batched(zf_eval, 512)
                    og = net.batched(zg, 512) if len(zg) else tg
                if kind == "other_classes":
                    reached = float((of.argmax(1) == yf_eval).float().mean()) <= p.class_stop_acc
                else:
                    reached = float(of.softmax(1).gather(1, yf_eval[:, None]).mean()) <= heldout_conf + p.sample_conf_tolerance
                agree = float((og.argmax(1) == tg.argmax(1)).float().mean()) if len(tg) else 1.0
                if reached and agree >= p.retain_agreement:
                    stop_reason = "criterion"
                    break
                if reached and patience:
                    if agree > best_agree:
                        best_agree, best_state, since_best = agree, _snapshot(params), 0
                    else:
                        since_best += 1
                    if since_best >= patience:
                        _restore(params, best_state)
                        stop_reason = "plateau"
                        info["retain_agreement"] = best_agree
                        break
    info.update({"epochs_run": math.ceil(step / steps_per_epoch), "passes": round(step / steps_per_epoch, 2), "steps": step,
                 "stop_reason": stop_reason})
    return MethodOutput(model=lora.merged_copy(model, teacher), adapter_model=model, info=info)


def preflight(ctx: UnlearnContext, p: RFAParams) -> None:
    """target_layers name adaptable layers of this model (apply would refuse them only after loading everything)."""
    if p.target_layers != "auto":
        lora.select_layers(ctx.original, p.target_layers)


register_method(
    "rfa",
    RFAParams,
    run,
    summary="RFA-LoRA: LoRA residuals zero on retained data, shifted on the forget set (main method).",
    supports_adapter=True,
    reference="Qin et al. 2024, arXiv 2411.08443 (design: docs/rfa.md)",
    tasks=("classification", "regression"), scenarios=("class", "sample", "range"),
    loss_scaling=True, anchor_tasks=("classification",), preflight=preflight,
)
