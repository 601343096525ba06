"""IAU: Influence Approximation Unlearning (reference notes §4; arXiv 2507.23257, Lolo1222/IAU).

Deleting a sample z is approximated as *adding* a sample whose gradient is -grad l(z) (incremental
learning), plus a gradient correction on the retained data, without any Hessian:

    g = grad mean CE(Dr) - grad mean CE(Df)          (at the original weights)
    theta <- one step of a fresh Adam on g, lr = effective step size

Both means are accumulated over mini-batches (sum of per-batch summed losses / set size, one
backward per batch), so the result equals the full-batch gradient without ever holding the whole
data set in one tensor; the model is in eval mode so BatchNorm uses its running statistics and the
accumulation is exact. A fresh Adam's first step moves every coordinate by about lr * sign(g).

The approximation rests on the original having been trained with Gradient Restriction
(`unlearn train --regularizer gradient-restriction`, `unlearn_tool.regularizers`). The method reads
the checkpoint metadata from the optional context attribute `checkpoint_metadata` (raw safetensors
strings); when it does not show that regularizer, the run goes ahead and appends one warning to
`ctx.log`. Defaults and measured figures: docs/methods.md.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from ..data import LabelledData
from ..errors import MethodError
from ..regularizers import GRADIENT_RESTRICTION, checkpoint_regularizer
from .base import MethodOutput, MethodParams, UnlearnContext, register_method


class IAUParams(MethodParams):
    lr: Optional[float] = Field(
        None, gt=0,
        description="Learning rate; with adam the effective step size per coordinate. Default (auto): 1e-3 for sample unlearning "
                    "(IAU_unlearn.py, 5% random samples); 1e-2 for class unlearning (ours: IAU has no class setting, and on the digits MLP "
                    "1e-3 leaves ~97% of the class recognised while 1e-2 forgets it). With optimizer=sgd set it explicitly (digits: ~1).",
    )
    steps: int = Field(
        1, ge=1,
        description="Adam steps, each on a freshly accumulated g (IAU: 1). More steps cost one pass over D each.",
    )
    retain_weight: float = Field(1.0, ge=0, description="Weight of the retain-gradient correction in g (IAU: 1; 0 = pure incremental ascent on Df).")
    forget_weight: float = Field(1.0, gt=0, description="Weight of the forget gradient in g (IAU: 1).")
    optimizer: Literal["adam", "sgd"] = Field(
        "adam", description="adam: a fresh Adam (IAU_unlearn.py), each step about lr * sign(g); sgd: theta -= lr * g, the paper's "
                            "incremental update theta* + eta * sum grad l(z) (steps proportional to the gradient).",
    )
    batch_size: int = Field(
        256, ge=1,
        description="Mini-batch size for accumulating the two gradients; it changes memory use, not the result "
                    "(IAU's loaders use the whole set as one batch, which does not fit ResNet-18 data).",
    )


def accumulate_mean_grad(model: torch.nn.Module, data: LabelledData, batch_size: int, device: torch.device,
                         scale: float) -> None:
    """Add scale * grad mean CE(data) into the parameters' .grad, one batch at a time (no full-batch tensor)."""
    n = len(data)
    for x, y in data.batches(batch_size):
        loss = F.cross_entropy(model(x.to(device)), y.to(device), reduction="sum") * (scale / n)
        loss.backward()


def training_warning(ctx: UnlearnContext) -> Optional[str]:
    """One warning line when the checkpoint was not (visibly) trained with gradient restriction, else None."""
    meta = getattr(ctx, "checkpoint_metadata", None) or {}
    reg = checkpoint_regularizer(meta)
    fix = f"train the original with `unlearn train --regularizer {GRADIENT_RESTRICTION}` (docs/methods.md, iau)"
    if reg is None:
        return (f"iau: the checkpoint does not record its training regularizer; IAU's approximation assumes an original trained with "
                f"{GRADIENT_RESTRICTION} (it still ran); {fix}")
    if reg.get("regularizer") != GRADIENT_RESTRICTION:
        return (f"iau: the original was trained without {GRADIENT_RESTRICTION} (regularizer: {reg.get('regularizer') or 'none'}); "
                f"IAU's approximation assumes it (it still ran); {fix}")
    return None


def default_lr(ctx: UnlearnContext, p: IAUParams) -> float:
    if p.lr is not None:
        return p.lr
    if p.optimizer == "sgd":
        raise MethodError("method.params.lr: optimizer=sgd has no default step size (it scales with the gradient); set lr, e.g. lr=1 on digits")
    return 1e-2 if ctx.scenario == "class" else 1e-3


def run(ctx: UnlearnContext, p: IAUParams) -> MethodOutput:
    lr = default_lr(ctx, p)
    warning = training_warning(ctx)
    if warning:
        ctx.log.append(warning)
    model = ctx.student().eval()
    params = [q for q in model.parameters() if q.requires_grad]
    # fresh optimizer: Adam's first step is about lr * sign(g); plain SGD (no momentum) is theta - lr * g
    opt = torch.optim.Adam(params, lr=lr) if p.optimizer == "adam" else torch.optim.SGD(params, lr=lr)
    norms = []
    for step in range(p.steps):
        opt.zero_grad(set_to_none=False)
        for q in params:
            if q.grad is None:
                q.grad = torch.zeros_like(q)
        if p.retain_weight > 0:
            accumulate_mean_grad(model, ctx.retain, p.batch_size, ctx.device, p.retain_weight)
        accumulate_mean_grad(model, ctx.forget, p.batch_size, ctx.device, -p.forget_weight)
        norms.append(float(torch.sqrt(sum((q.grad.float() ** 2).sum() for q in params))))
        opt.step()
        ctx.report("iau", step + 1, p.steps)
    opt.zero_grad(set_to_none=True)
    trained = checkpoint_regularizer(getattr(ctx, "checkpoint_metadata", None) or {})
    info = {"steps": p.steps, "optimizer": p.optimizer, "lr": lr, "grad_norm": [round(v, 6) for v in norms],
            "original_regularizer": "unknown" if trained is None else (trained["regularizer"] or "none")}
    return MethodOutput(model=model.eval(), info=info)


register_method(
    "iau", IAUParams, run,
    summary="IAU: one incremental (influence-approximating) Adam step on grad CE(Dr) - grad CE(Df); assumes a gradient-restriction-trained original.",
    reference="Influence Approximation Unlearning, arXiv 2507.23257 (Lolo1222/IAU)",
)
