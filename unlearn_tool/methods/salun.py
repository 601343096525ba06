"""SalUn (Fan et al. 2024, "Saliency Unlearning"): random-label unlearning restricted to salient weights.

1. Saliency mask: one pass over Df in eval mode accumulating the gradient of the forget loss;
   the `mask_ratio` share of all parameter entries with the largest |gradient| (global top-k) is salient.
2. RL (see `random_label.py`) with the gradient multiplied by the mask.
3. Masked-out entries stay exactly the original's: their gradient (weight decay included, which
   is applied here through the masked gradient, never by the optimizer) is zero, and after every
   optimizer step they are reset to the original values and their optimizer state (momentum,
   Adam moments) zeroed. This is the fix of SalUn issues #32/#33, where weight decay and momentum
   leaked into masked-out weights.
BatchNorm running statistics are buffers, not parameters: in train mode they update as in SalUn.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..data import LabelledData
from ..errors import MethodError
from .base import MethodOutput, UnlearnContext, register_method
from .random_label import RandomLabelParams, train_relabelled


class SalUnParams(RandomLabelParams):
    mask_ratio: float = Field(
        0.5, gt=0, le=1,
        description="Share of parameter entries (global top-k by forget-gradient magnitude) that may change "
                    "(SalUn's example mask: with_0.5.pt).",
    )


def salient_count(ratio: float, entries: int) -> int:
    """How many of `entries` parameter entries the mask frees; none is refused (the output would be the original)."""
    k = int(round(ratio * entries))
    if k == 0:
        raise MethodError(f"method.params.mask_ratio: {ratio:g} of the model's {entries} parameter entries selects none; "
                          f"give at least {1 / max(entries, 1):.2g} (SalUn's default: 0.5)")
    return k


def preflight(ctx: UnlearnContext, p: SalUnParams) -> None:
    salient_count(p.mask_ratio, sum(q.numel() for q in ctx.original.parameters()))


def saliency_mask(model: nn.Module, forget: LabelledData, device: torch.device, batch_size: int, ratio: float) -> dict[str, torch.Tensor]:
    """Boolean mask per parameter name: True for the `ratio` share of entries with the largest |grad of the forget loss|.

    The gradient is accumulated over one pass of Df in eval mode (sum of per-batch mean-loss gradients), on the
    model's current weights; ties are broken by position, so the mask is deterministic.
    """
    was_training = model.training
    model.eval()
    named = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
    grads = [torch.zeros_like(q) for _, q in named]
    for x, y in forget.batches(batch_size):
        loss = -F.cross_entropy(model(x.to(device)), y.to(device))
        for g, gq in zip(grads, torch.autograd.grad(loss, [q for _, q in named], allow_unused=True)):
            if gq is not None:
                g += gq
    model.train(was_training)
    scores = torch.cat([g.abs().flatten() for g in grads])
    k = salient_count(ratio, scores.numel())
    flat = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    flat[torch.argsort(scores, descending=True, stable=True)[:k]] = True
    return {n: m.view_as(q) for (n, q), m in zip(named, flat.split([q.numel() for _, q in named]))}


def run(ctx: UnlearnContext, p: SalUnParams) -> MethodOutput:
    model = ctx.student()
    mask = saliency_mask(model, ctx.forget, ctx.device, ctx.batch_size, p.mask_ratio)
    params = [q for n, q in model.named_parameters() if n in mask]
    masks = [mask[n] for n, q in model.named_parameters() if n in mask]
    originals = [q.detach().clone() for q in params]

    def before_step() -> None:  # weight decay and gradient, both masked
        with torch.no_grad():
            for q, m in zip(params, masks):
                if q.grad is not None:
                    q.grad.add_(q, alpha=p.weight_decay).mul_(m)

    def after_step(opt: torch.optim.Optimizer) -> None:  # masked-out entries: original value, no optimizer state
        with torch.no_grad():
            for q, m, q0 in zip(params, masks, originals):
                q.copy_(torch.where(m, q, q0))
                for key, buf in opt.state.get(q, {}).items():  # momentum_buffer, exp_avg, exp_avg_sq...
                    if key != "step" and torch.is_tensor(buf) and buf.shape == q.shape:
                        buf.mul_(m)

    info = train_relabelled(ctx, model, p, "salun", params=params, before_step=before_step,
                            after_step=after_step, weight_decay=0.0)
    total = sum(m.numel() for m in masks)
    info.update({"mask_ratio": p.mask_ratio, "salient_entries": int(sum(int(m.sum()) for m in masks)), "entries": total})
    return MethodOutput(model=model, info=info)


register_method(
    "salun", SalUnParams, run,
    summary="SalUn: random-label unlearning on the most forget-salient weights only (others stay bit-identical).",
    reference="Fan et al. 2024, ICLR (OPTML-Group/Unlearn-Saliency)",
    preflight=preflight,
)
