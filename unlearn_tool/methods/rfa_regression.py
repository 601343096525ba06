"""RFA-LoRA for regression models (our design, docs/rfa.md "Regression"); `rfa` dispatches here for a regression job.

The frame is classification RFA's: only LoRA adapters train; on retained data the residual features
are held at zero and the outputs at the frozen original's (the teacher's); on the forget set the
outputs are moved to a fixed per-sample target. What differs is the target, since a regressor has no
class probabilities to redistribute:

* sample unlearning (forget_target auto): each forget sample's own absolute error (the teacher's) plus the
  teacher's generalisation gap (held-out MAE minus retained MAE), in the direction of its residual: a model
  that never trained on the sample errs on it as the teacher does, plus what training on it saved. This keeps
  each sample's own difficulty; forget_target heldout instead gives the k-th best-fitted sample the k-th
  quantile of the teacher's held-out error (never less than its own), which describes the average unseen
  sample and misses a request whose samples are harder than average (docs/rfa.md measures both).
* range unlearning (auto = neighbours): what the retained data say about each forgotten input. The
  target is the mean target of its NEIGHBOURS nearest retained samples in the teacher's feature space
  (the input of the last layer). A model retrained without the range predicts such inputs from similar
  retained ones; held-out quantiles cannot say how much worse that is, since the teacher fits unseen
  samples of the range well too (benchmarks/rfa_regression_ablation.py; docs/rfa.md).

Losses are normalised by the retained targets' variance, so the weights mean the same at any target scale.
Training stops once the epoch's forget-set MAE (from the epoch's own outputs) reaches the target's within
FORGET_TOLERANCE (relative) while the retained outputs' mean drift from the teacher is at most RETAIN_DRIFT target
standard deviations (an argmax agreement has no regression analogue: measured drifts are 0.1-0.25 sd while test
MAE moves by 1%). Parameters are RFAParams'; classification-only ones (temperature, retain_target,
class_stop_acc, sample_conf_tolerance, retain_agreement) are not read.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch

from .. import lora
from ..errors import MethodError
from ..evaluate import predict_logits
from ..optim import Adam
from ..precision import ScaledSteps
from .base import MethodOutput, UnlearnContext

if TYPE_CHECKING:
    from .rfa import RFAParams

NEIGHBOURS = 10  # retained neighbours per forgotten input (range targets); 3 and 30 measured in docs/rfa.md
RETAIN_DRIFT = 0.2  # stop only while retained outputs stay within this mean |student - teacher|, in target standard deviations
FORGET_TOLERANCE = 0.05  # ... and the forget-set MAE is within 5% (relative) of the target's
DEFAULT_W_FORGET = {"heldout": 5.0, "neighbours": 5.0, "shift": 5.0}


def _matrix(y: torch.Tensor) -> torch.Tensor:
    return y.float().reshape(len(y), -1)


def heldout_targets(teacher_forget: torch.Tensor, y_forget: torch.Tensor, teacher_heldout: torch.Tensor,
                    y_heldout: torch.Tensor) -> torch.Tensor:
    """Quantile-matched outputs: the forget sample of rank k by the teacher's absolute error gets the k-th quantile of
    the teacher's held-out absolute error as its error (never less than its own), in the direction of its residual."""
    yf, yh = _matrix(y_forget), _matrix(y_heldout)
    resid = teacher_forget.reshape(yf.shape) - yf
    size = resid.abs().mean(1)
    held = (teacher_heldout.reshape(yh.shape) - yh).abs().mean(1).sort().values
    ranks = size.argsort().argsort().float()
    n_f, n_h = len(size), len(held)
    q = ((ranks + 0.5) / n_f * n_h).long().clamp(0, n_h - 1)
    target_size = torch.maximum(held[q], size)
    direction = torch.where(size[:, None] > 0, resid / size.clamp_min(1e-12)[:, None], torch.ones_like(resid))
    return yf + direction * target_size[:, None]


def shifted_targets(teacher_forget: torch.Tensor, y_forget: torch.Tensor, gap: float) -> torch.Tensor:
    """Each forget sample's own absolute error plus the teacher's generalisation gap (held-out MAE minus retained MAE,
    at least 0), in the direction of its residual: a retrained model errs on a sample as the teacher does, plus what
    having trained on it saved."""
    yf = _matrix(y_forget)
    resid = teacher_forget.reshape(yf.shape) - yf
    size = resid.abs().mean(1)
    direction = torch.where(size[:, None] > 0, resid / size.clamp_min(1e-12)[:, None], torch.ones_like(resid))
    return yf + direction * (size + max(gap, 0.0))[:, None]


def neighbour_targets(teacher, layer: str, forget, retain, device: torch.device, batch_size: int, k: Optional[int] = None) -> torch.Tensor:
    """The mean target of each forget sample's k (default NEIGHBOURS) nearest retained samples in the teacher's features
    at `layer`'s input."""
    k = NEIGHBOURS if k is None else k
    module = dict(teacher.named_modules())[layer]

    def features(data) -> torch.Tensor:
        store: list[torch.Tensor] = []
        handle = module.register_forward_hook(lambda _m, inp, _o: store.append(inp[0].detach().flatten(1).float().cpu()))
        try:
            with torch.no_grad():
                for x, _ in data.batches(batch_size):
                    teacher(x.to(device))
        finally:
            handle.remove()
        return torch.cat(store)

    f_forget, f_retain = features(forget), features(retain)
    y_retain = _matrix(retain.targets)
    k = min(k, len(y_retain))
    out = []
    for start in range(0, len(f_forget), 1024):  # bounded memory: 1024 x |Dr| distances at a time
        near = torch.cdist(f_forget[start:start + 1024], f_retain).topk(k, largest=False).indices
        out.append(y_retain[near].mean(1))
    return torch.cat(out)


REGRESSION_EPOCHS = 30  # passes over Df when `epochs` is not given (the regression measurements in docs/rfa.md)


def feature_scales(ctx: UnlearnContext, teacher, layers: list[str], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Mean squared teacher feature per adapted layer on retained data: the residual penalty is relative energy."""
    x, _ = ctx.retain.sample(min(len(ctx.retain), 256), gen)
    with torch.no_grad(), lora.capture_outputs(teacher, layers) as feats:
        teacher(x.to(ctx.device))
    return {n: feats[n].pow(2).mean().clamp_min(1e-8) for n in layers}


def run_regression(ctx: UnlearnContext, p: "RFAParams") -> MethodOutput:
    device, teacher = ctx.device, ctx.original.eval()
    forget, retain = ctx.forget, ctx.retain
    if p.forget_target == "other_classes":
        raise MethodError("rfa: forget_target other_classes is for classification; a regression model uses auto (sample: its own "
                          "error plus the generalisation gap; range: retained neighbours), or heldout (quantile-matched held-out errors)")
    kind = "heldout" if p.forget_target == "heldout" else ("neighbours" if ctx.scenario == "range" else "shift")
    # auto (classification's frozen-prefix cut) reads as all layers here: the regression figures were measured so
    layers = lora.select_layers(teacher, "all" if p.target_layers == "auto" else p.target_layers)
    epochs = p.epochs or REGRESSION_EPOCHS

    y_forget = _matrix(forget.targets)
    if kind == "heldout":
        t_forget, _ = predict_logits(teacher, forget, device, ctx.batch_size)
        t_held, y_held = predict_logits(teacher, ctx.splits.test, device, ctx.batch_size)
        targets = heldout_targets(t_forget, y_forget, t_held, y_held)
    elif kind == "shift":
        t_forget, _ = predict_logits(teacher, forget, device, ctx.batch_size)
        t_held, y_held = predict_logits(teacher, ctx.splits.test, device, ctx.batch_size)
        t_ret, y_ret = predict_logits(teacher, retain, device, ctx.batch_size)
        gap = float((t_held.reshape(_matrix(y_held).shape) - _matrix(y_held)).abs().mean()
                    - (t_ret.reshape(_matrix(y_ret).shape) - _matrix(y_ret)).abs().mean())
        targets = shifted_targets(t_forget, y_forget, gap)
    else:
        targets = neighbour_targets(teacher, lora.lora_capable_layers(teacher)[-1], forget, retain, device, ctx.batch_size)
    y_all = _matrix(retain.targets)
    var = float(y_all.var()) if len(y_all) > 1 and float(y_all.var()) > 0 else 1.0
    sd = math.sqrt(var)
    target_mae = float((targets - y_forget).abs().mean())
    targets, y_forget_dev = targets.to(device), y_forget.to(device)

    model = lora.inject(teacher, layers, p.rank, p.alpha).to(device)
    model.eval()  # BatchNorm statistics and dropout stay the teacher's: only adapters change
    w_forget = p.w_forget if p.w_forget is not None else DEFAULT_W_FORGET[kind]
    gen = ctx.generator(1)
    scale = feature_scales(ctx, teacher, layers, gen)
    adapted = lora.lora_layers(model)
    params = lora.adapter_parameters(model)
    opt = Adam(params, lr=p.lr)  # unlearn_tool/optim.py: torch.optim's first use imports torch._dynamo
    scaled = ScaledSteps(device)
    n_f = len(forget)
    steps_per_epoch = math.ceil(n_f / p.batch_size)
    info = {"adapted_layers": len(layers), "trainable_params": sum(q.numel() for q in params), "forget_target": kind,
            "w_forget": w_forget, "target_forget_mae": round(target_mae, 6)}
    stop_reason, epoch = "epochs", 0
    for epoch in range(1, epochs + 1):
        forget_err = retain_drift = retain_seen = 0.0
        order = torch.randperm(n_f, generator=gen)
        for step in range(steps_per_epoch):
            idx = order[step * p.batch_size:(step + 1) * p.batch_size]
            xf = forget.take(idx)[0].to(device)
            xr, yr = retain.sample(p.retain_batch_size, gen)
            xr, yr = xr.to(device), _matrix(yr).to(device)
            with torch.no_grad():
                t_retain = teacher(xr).reshape(yr.shape)
            with lora.capture_residuals(model, adapted) as res:
                out = model(torch.cat([xf, xr]))
            nf, dev_idx = len(idx), idx.to(device)
            out_f, out_r = out[:nf].reshape(nf, -1), out[nf:].reshape(yr.shape)
            loss_forget = (out_f - targets[dev_idx]).pow(2).mean() / var
            loss_align = (out_r - t_retain).pow(2).mean() / var
            loss_res = torch.stack([r[nf:].pow(2).mean() / scale[n] for n, r in res.items()]).mean()
            loss = w_forget * loss_forget + p.w_align * loss_align + p.w_residual * loss_res
            if p.w_retain_ce:  # regression: the retained targets' own (normalised) squared error
                loss = loss + p.w_retain_ce * (out_r - yr).pow(2).mean() / var
            opt.zero_grad(set_to_none=True)
            scaled.backward_and_step(loss, opt)
            with torch.no_grad():
                forget_err += float((out_f - y_forget_dev[dev_idx]).abs().mean(1).sum())
                retain_drift += float((out_r - t_retain).abs().mean(1).sum()) / sd
                retain_seen += len(xr)
        ctx.report("rfa", epoch, epochs)
        if p.stop == "criterion" and retain_drift / retain_seen <= RETAIN_DRIFT and forget_err / n_f >= target_mae * (1 - FORGET_TOLERANCE):
            stop_reason = "criterion"
            break
    info.update({"epochs_run": epoch, "steps": epoch * steps_per_epoch, "stop_reason": stop_reason})
    return MethodOutput(model=lora.merged_copy(model, teacher), adapter_model=model, info=info)
