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
After each pass over Df the model as it then is gets read: training stops once the forget-set MAE is within
FORGET_TOLERANCE (relative, either side) of the target's while the outputs on held-back retained samples (never
trained on) drift from the teacher's by at most RETAIN_DRIFT times the teacher's own MAE on them (an argmax
agreement has no regression analogue; a drift in target sd allowed a CNN accurate to 0.08 sd to double its
error). The loop runs on classification RFA's machinery (fused adapters, cached teacher outputs, retain pool,
its Adam with beta1 0.5); `solver: gauss-newton` replaces the loop by one damped Gauss-Newton step in the adapters' B
weights (_rfa_gauss_newton.py, docs/rfa.md R9). Parameters are RFAParams'; classification-only ones (RFAParams.task_only:
temperature, retain_target, class_stop_acc, ...) are refused for a regression request, never silently dropped.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch

from .. import lora
from ..errors import MethodError
from ..evaluate import predict_logits
from ..precision import ScaledSteps, full_precision
from .base import MethodOutput, UnlearnContext

if TYPE_CHECKING:
    from .rfa import RFAParams

NEIGHBOURS = 10  # retained neighbours per forgotten input (range targets); 3 and 30 measured in docs/rfa.md
RETAIN_DRIFT = 0.75  # stop only while held-back retained outputs' mean |student - teacher| is at most this share of the teacher's MAE on
# them; a retrained model itself moves them by 0.2-0.5 (diabetes MLP) to 0.7-1.0 (rotated-digits CNN) times it; 0.5 kept the CNN's range
# runs going all 30 passes (docs/rfa.md R5)
HELDOUT_DRIFT = 0.25  # ... or, when larger, this share of the teacher's held-out MAE: a memorising model's error on its own training data
# is near zero, and a bound in its units alone could not be met by the retrained model itself (a BatchNorm ResNet trained 30 epochs: retained
# error 0.005, a retrained model moves those outputs by 1.7-2.0 times it, 0.20-0.27 times the held-out error; docs/rfa.md R5)
FORGET_TOLERANCE = 0.05  # ... and the forget-set MAE is within 5% (relative, either side) of the target's
MAX_BACKOFFS = 2  # a check overshooting its target by more than the target itself: back to the best check at a tenth of the lr, at most twice
DEFAULT_W_FORGET = {"heldout": 5.0, "neighbours": 5.0, "shift": 10.0}  # sample 10: 8.7 passes against 12 at 5, same gap (docs/rfa.md R4)


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


def _targets(ctx: UnlearnContext, teacher, kind: str, t_forget: torch.Tensor, t_held: torch.Tensor, y_held: torch.Tensor) -> torch.Tensor:
    """The fixed per-sample forget targets of `kind` (see the module docstring), from the frozen teacher (`t_held`: its
    outputs on the held-out split, whose targets are `y_held`)."""
    device, forget, retain = ctx.device, ctx.forget, ctx.retain
    y_forget = _matrix(forget.targets)
    if kind == "neighbours":
        return neighbour_targets(teacher, lora.lora_capable_layers(teacher)[-1], forget, retain, device, ctx.batch_size)
    if kind == "heldout":
        return heldout_targets(t_forget, y_forget, t_held, y_held)
    t_ret, y_ret = predict_logits(teacher, retain, device, ctx.batch_size)
    return shifted_targets(t_forget, y_forget, _mae(t_held, y_held) - _mae(t_ret, y_ret))


def _forget_mae(net, z_forget: torch.Tensor, y_forget: torch.Tensor) -> float:
    """The forget-set MAE of the model as it now is."""
    with torch.no_grad(), full_precision(z_forget.device):
        return float((_matrix(net.batched(z_forget)) - y_forget).abs().mean())


def _mae(outputs: torch.Tensor, y: torch.Tensor) -> float:
    return float((outputs.reshape(_matrix(y).shape) - _matrix(y)).abs().mean()) if len(y) else 0.0


def _drift(net, retain) -> float:
    """The held-back retained samples' mean |student - teacher| output (samples never trained on)."""
    zg, tg = retain.guard()
    if not len(zg):
        return 0.0
    with torch.no_grad(), full_precision(zg.device):
        return float((_matrix(net.batched(zg)) - _matrix(tg)).abs().mean())


def overshot(forget_mae: float, target_mae: float, teacher_miss: float) -> bool:
    """A check further from the target than the teacher was and more than the target itself away from it: the steps
    are too large for this model (Adam's first steps are lr-sized whatever the gradient; on a BatchNorm ResNet
    regressor one pass at lr 0.01 took the forget MAE from 0.005 to 3.9 against a target of 0.04)."""
    miss = check_score(forget_mae, target_mae, None, 1.0)
    return miss > max(teacher_miss, 1 / FORGET_TOLERANCE)


def check_score(forget_mae: float, target_mae: float, drift: Optional[float], drift_bound: float) -> float:
    """How far a check is from the stopping rule, in units of its own bounds: the larger of the forget-set MAE's miss
    (in FORGET_TOLERANCE shares of the target) and the retained drift (in shares of its bound). At most 1: the rule
    holds. With `drift` None (not read) the score is the forget miss alone, a lower bound of the full score."""
    miss = abs(forget_mae - target_mae) / (FORGET_TOLERANCE * target_mae) if target_mae > 0 else (0.0 if forget_mae == target_mae else math.inf)
    if drift is None:
        return miss
    return max(miss, drift / drift_bound if drift_bound > 0 else (0.0 if drift == 0 else math.inf))


def run_regression(ctx: UnlearnContext, p: "RFAParams") -> MethodOutput:
    """The loop runs on classification RFA's machinery (fused adapters, the forget set's cached teacher outputs,
    the retain pool with its teacher outputs and feature energies, its Adam): the same losses at a lower per-step
    cost and one code path with classification (docs/rfa.md, R8)."""
    from ._rfa_loop import GUARD_SAMPLES, RESIDUAL_ROWS, _adam, _ForgetSet, _Net, _restore, _RetainPool, _scheduled_lr, _snapshot

    device, teacher = ctx.device, ctx.original.eval()
    if p.forget_target == "other_classes":
        raise MethodError("rfa: forget_target other_classes is for classification; a regression model uses auto (sample: its own "
                          "error plus the generalisation gap; range: retained neighbours), or heldout (quantile-matched held-out errors)")
    kind = "heldout" if p.forget_target == "heldout" else ("neighbours" if ctx.scenario == "range" else "shift")
    # auto (classification's frozen-prefix cut) reads as all layers here: the regression figures were measured so
    layers = lora.select_layers(teacher, "all" if p.target_layers == "auto" else p.target_layers)
    epochs = p.epochs or REGRESSION_EPOCHS
    y_retain = _matrix(ctx.retain.targets)
    var = float(y_retain.var()) if len(y_retain) > 1 and float(y_retain.var()) > 0 else 1.0
    y_forget = _matrix(ctx.forget.targets).to(device)
    # targets from the plain teacher, before any adapter exists
    t_forget, _ = predict_logits(teacher, ctx.forget, device, ctx.batch_size)
    t_held, y_held = predict_logits(teacher, ctx.splits.test, device, ctx.batch_size)
    targets = _targets(ctx, teacher, kind, t_forget, t_held, y_held).to(device)
    target_mae = float((targets - y_forget).abs().mean())

    model = lora.inject(teacher, layers, p.rank, p.alpha).to(device)
    model.eval()  # BatchNorm statistics and dropout stay the teacher's: only adapters change
    w_forget = p.w_forget if p.w_forget is not None else DEFAULT_W_FORGET[kind]
    gen = ctx.generator(1)
    adapted = lora.lora_layers(model)
    params = lora.adapter_parameters(model)
    opt = _adam(params, p.lr)  # unlearn_tool/optim.py's Adam, beta1 0.5 (classification RFA's)
    scaled = ScaledSteps(device)  # fp16 loss scaling on a GPU without bf16; plain steps otherwise
    n_f = len(ctx.forget)
    steps_per_epoch = math.ceil(n_f / p.batch_size)
    info = {"adapted_layers": len(layers), "trainable_params": sum(q.numel() for q in params), "forget_target": kind,
            "w_forget": w_forget, "target_forget_mae": round(target_mae, 6)}
    stop_reason, epoch = "epochs", 0
    probe = ctx.retain.take(torch.arange(min(2, len(ctx.retain))))[0].to(device)
    with lora.fused_adapters(model, adapted) as fused:
        net = _Net(ctx, model, layers, fused, probe)
        forget = _ForgetSet(net, ctx.forget, t_forget)  # the teacher's outputs on Df are known: not run again
        guard = min(GUARD_SAMPLES, len(ctx.retain) // 4)  # held back: the drift is read on samples never trained on
        retain = _RetainPool(net, ctx.retain, [], guard, False, gen)
        z_forget_all = forget.take(torch.arange(n_f))
        _, tg = retain.guard()
        guard_mae = float((_matrix(tg) - _matrix(ctx.retain.take(retain.guard_idx)[1]).to(device)).abs().mean()) if guard else 0.0
        bound = max(RETAIN_DRIFT * guard_mae, HELDOUT_DRIFT * _mae(t_held, y_held))
        if p.solver == "gauss-newton":  # one damped Gauss-Newton step in the adapters' B (docs/rfa.md R9)
            from . import _rfa_gauss_newton

            def read() -> float:
                return check_score(_forget_mae(net, z_forget_all, y_forget), target_mae, _drift(net, retain), bound)

            info.update(_rfa_gauss_newton.solve(net, retain, z_forget_all, _matrix(t_forget).to(device), targets, var, w_forget,
                                                p.w_align, read))
            return MethodOutput(model=lora.merged_copy(model, teacher), adapter_model=model, info=info)
        # the teacher itself (adapters at zero: pass 0) is the first candidate: a run that only drifts away returns it
        best = (check_score(float((_matrix(t_forget).to(device) - y_forget).abs().mean()), target_mae, 0.0, bound), 0,
                _snapshot(params))
        # the teacher may already meet the rule (its forget error at the target: nothing it learned from Df shows, as on a
        # short recipe): no pass is run. Training from zero adapters would only move it (Adam's first steps are lr-sized
        # whatever the gradient: on a ResNet-18 the forget MAE jumped 17-fold in one pass)
        already = p.stop == "criterion" and best[0] <= 1
        if already:
            stop_reason = "criterion"
        teacher_miss, lr_scale, backoffs, since_backoff, warmup = best[0], 1.0, 0, 0, max(3, steps_per_epoch)
        best_drift, best_lr = 0.0, p.lr  # the teacher's drift; the lr of the pass that reached the best check
        for epoch in range(1, 0 if already else epochs + 1):
            order = torch.randperm(n_f, generator=gen)
            for step in range(steps_per_epoch):
                idx = order[step * p.batch_size:(step + 1) * p.batch_size]
                zf = forget.take(idx)
                zr, yr, t_retain = retain.batch(p.retain_batch_size)
                yr, t_retain = _matrix(yr), _matrix(t_retain)
                nf, dev_idx = len(idx), idx.to(device)
                fused.rows = slice(nf, nf + min(RESIDUAL_ROWS, len(yr))) if p.w_residual else None
                out = net.forward(torch.cat([zf, zr]))
                res, fused.rows = fused.residuals, None
                out_f, out_r = out[:nf].reshape(nf, -1), out[nf:].reshape(yr.shape)
                loss = w_forget * (out_f - targets[dev_idx]).pow(2).mean() / var + p.w_align * (out_r - t_retain).pow(2).mean() / var
                if p.w_residual:
                    loss = loss + p.w_residual * torch.stack([r.pow(2).mean() / retain.energy[n] for n, r in res.items()]).mean()
                if p.w_retain_ce:  # regression: the retained targets' own (normalised) squared error
                    loss = loss + p.w_retain_ce * (out_r - yr).pow(2).mean() / var
                since_backoff += 1  # after a backoff the lr ramps up again over `warmup` steps (Adam's first steps are lr-sized)
                ramp = min(1.0, since_backoff / warmup) if backoffs else 1.0
                opt.lr = ramp * lr_scale * _scheduled_lr(p, (epoch - 1) * steps_per_epoch + step + 1, epochs * steps_per_epoch)
                opt.zero_grad(set_to_none=True)
                scaled.backward_and_step(loss, opt)
            ctx.report("rfa", epoch, epochs)
            if p.stop == "criterion":  # read the model as it now is: all of Df, and the held-back retained samples
                forget_mae = _forget_mae(net, z_forget_all, y_forget)
                if backoffs < MAX_BACKOFFS and overshot(forget_mae, target_mae, teacher_miss):
                    # too large a step for this model: back to the best check so far, fresh Adam moments, a tenth of the lr
                    _restore(params, best[2])
                    opt, lr_scale, backoffs, since_backoff = _adam(params, p.lr), lr_scale / 10, backoffs + 1, 0
                    info["last_backoff_pass"] = epoch  # on the last pass, no pass ran at the lower lr (the CLI says so)
                    continue
                score = check_score(forget_mae, target_mae, None, bound)
                if score <= 1 or score < best[0]:  # the rule may hold, or the check may beat the best: read its drift
                    drift = _drift(net, retain)
                    score = check_score(forget_mae, target_mae, drift, bound)
                    if score <= 1:
                        stop_reason = "criterion"
                        break
                    if score < best[0]:
                        best, best_drift, best_lr = (score, epoch, _snapshot(params)), drift, p.lr * lr_scale
        if stop_reason == "epochs" and p.stop == "criterion" and best[1] != epoch:
            # the cap, with the rule never met: keep the check nearest to it, not wherever Adam's last step landed (on
            # one rotated-digits range seed the last passes diverged: test MAE x18; docs/rfa.md R5)
            _restore(params, best[2])
        if stop_reason == "epochs" and p.stop == "criterion":
            # the kept check's retained drift in shares of its bound: above 1, its retained outputs moved more than the rule
            # allows, and a tenth of the lr its pass ran at (after any backoff) may hold them (the CLI says so; docs/rfa.md R10)
            info.update({"kept_check": best[1], "kept_check_score": round(best[0], 3),
                         "kept_check_drift": round(best_drift / bound, 3) if bound > 0 else None, "kept_check_lr": best_lr})
        info["lr_backoffs"] = backoffs
    info.update({"epochs_run": epoch, "steps": epoch * steps_per_epoch, "stop_reason": stop_reason, "max_epochs": epochs})
    return MethodOutput(model=lora.merged_copy(model, teacher), adapter_model=model, info=info)
