"""Bad Teacher (Chundawat et al. 2023, "Can Bad Teaching Induce Forgetting?"): competent/incompetent teachers.

The student starts as a copy of the original. It is distilled on Df (u = 1)
from an *incompetent* teacher, a randomly initialised model of the same
architecture, and on a random 30% of Dr (u = 0) from the competent original:
loss = KL(u * p_bad + (1 - u) * p_orig || p_student) at temperature T, i.e.
`F.kl_div(log p_student, target, reduction='batchmean')` as in the official
code. Labels are not used. Algorithm, defaults and measured figures: docs/methods.md; Chundawat et al. AAAI 2023 (vikram2000b/bad-teaching-unlearning).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..data import LabelledData
from .base import MethodOutput, MethodParams, UnlearnContext, register_method


class BadTeacherParams(MethodParams):
    retain_fraction: float = Field(0.3, gt=0, le=1, description="Fraction of Dr drawn at random as the competent-teacher set (official code: 30%).")
    epochs: int = Field(
        5, ge=1, description="Passes over Df + the Dr subset. Official: 1 epoch; the tiny digits models need 5 (1 epoch is 2-9 steps there)."
    )
    lr: float = Field(1e-3, gt=0, description="Adam learning rate. Official: 1e-4 (ResNet on CIFAR); 1e-3 for the small models here.")
    batch_size: int = Field(64, ge=1, description="Batch size. Official: 256; 64 gives the small data sets enough steps.")
    temperature: float = Field(1.0, ge=0.01, description="Softmax temperature of teachers and student (official: T = 1). At least 0.01: logits / T overflow below.")


def run(ctx: UnlearnContext, p: BadTeacherParams) -> MethodOutput:
    device, good = ctx.device, ctx.original
    bad = ctx.make_model().to(device).eval()  # incompetent teacher: random weights, same architecture
    student = ctx.student().train()
    gen = ctx.generator(21)

    # Data: Df flagged u = 1, a random retain_fraction of Dr flagged u = 0.
    retain, forget = ctx.retain, ctx.forget
    k = max(1, round(p.retain_fraction * len(retain)))
    r_idx = torch.randperm(len(retain), generator=gen)[:k]
    xr, _ = retain.take(r_idx)
    xf, _ = forget.take(torch.arange(len(forget)))
    x_all = torch.cat([xf, xr])
    u_all = torch.cat([torch.ones(len(xf)), torch.zeros(len(xr))])
    data = LabelledData.from_tensors(x_all, u_all.long())  # "labels" carry the flag u, never a class

    opt = torch.optim.Adam(student.parameters(), lr=p.lr)
    t = p.temperature
    steps, last = 0, 0.0
    for epoch in range(1, p.epochs + 1):
        for x, u in data.batches(p.batch_size, shuffle=True, generator=gen):
            x, u = x.to(device), u.to(device).float()[:, None]
            with torch.no_grad():
                target = u * (bad(x) / t).softmax(1) + (1 - u) * (good(x) / t).softmax(1)
            log_s = (student(x) / t).log_softmax(1)
            loss = F.kl_div(log_s, target, reduction="batchmean")  # 'batchmean', not 'mean' (which divides by C too)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            last = loss.item()
        ctx.report("bad-teacher", epoch, p.epochs)
    info = {"steps": steps, "forget_size": len(xf), "retain_subset_size": k, "last_loss": round(last, 5)}
    return MethodOutput(model=student.eval(), info=info)


register_method("bad-teacher", BadTeacherParams, run,
                summary="Bad Teacher: distil Df from a random (incompetent) teacher and part of Dr from the original.",
                reference="Chundawat et al. AAAI 2023, arXiv 2205.08096 (vikram2000b/bad-teaching-unlearning)")
