"""Relapse: did an earlier deletion in the checkpoint's lineage become visible again?

For each earlier step of the lineage (every step but the request being audited), its forgotten set is read
back from the ledger and the audited model's forget accuracy and MIA-Efficacy on it are measured again. A
step relapsed when its forget accuracy now exceeds its floor by more than RELAPSE_TOLERANCE; `relapse_max`
(the largest rise over the floor) is a metric gates can use. The tolerance grows to the one-sided 95%
sampling noise of an accuracy at the floor when the forgotten set is small (`relapse_tolerance`). The floor is the accuracy recorded right after
that step; for a sample step, at least the audited model's accuracy on unseen (test) samples of the same
classes: a model that never saw those samples classifies them that well, and a sample deletion leaves them
at that level by design. Without that floor, one of 14 forgotten samples flipping back to its label (7.1
points, at test-accuracy level) was called a relapse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..evaluate import stream
from ..job import Job
from . import attacks

RELAPSE_TOLERANCE = 0.05


def relapse_tolerance(floor: float, n: int) -> float:
    """RELAPSE_TOLERANCE, or the one-sided 95% sampling noise of an accuracy at `floor` over `n` samples when larger:
    with 14 forgotten samples at a 95% held-out level, all 14 correct (+5 points) happens about half the time."""
    import math

    noise = 1.645 * math.sqrt(max(floor * (1.0 - floor), 0.0) / n) if n > 0 else 0.0
    return max(RELAPSE_TOLERANCE, noise)


def relapse_check(job: Job, model: nn.Module, fields: dict[str, Any], ledger: Optional[Path], seed: int) -> Optional[dict[str, Any]]:
    """The `lineage` section of a report (None when the model has no earlier deletions)."""
    from safetensors.torch import load_file

    from ..ledger import LedgerError, Lineage, forget_dir, read_ledger

    lineage = Lineage.from_metadata(fields)
    if lineage is None or len(lineage.steps) < 2:
        return None
    earlier = lineage.steps[:-1]
    section: dict[str, Any] = {"steps": [], "relapse_max": None, "relapsed": [], "ledger": str(ledger) if ledger else None,
                               "tolerance": RELAPSE_TOLERANCE, "problem": None}
    if job.task.name != "classification":
        section["problem"] = (f"the relapse re-check measures forget accuracy, so it covers classification only: the {len(earlier)} "
                              "earlier deletion(s) of this regression model were not re-checked")
        return section
    if ledger is None:  # apply --audit --no-keep-on-fail records the ledger after the verdict
        section["problem"] = (f"no ledger yet: the {len(earlier)} earlier deletion(s) were not re-checked; "
                              "unlearn audit of the output re-checks them from its ledger")
        return section
    if not ledger.is_file():
        section["problem"] = f"the ledger {ledger} is missing: the {len(earlier)} earlier deletion(s) could not be re-checked"
        return section
    try:
        entries = {e.get("step"): e for e in read_ledger(ledger)}
    except LedgerError as e:
        section["problem"] = str(e)
        return section
    bs = job.request.data.batch_size
    retain = stream(model, job.splits.retain, job.device, bs, job.task)
    test = stream(model, job.splits.test, job.device, bs, job.task)
    rises = []
    for step in earlier:
        e = entries.get(step["step"])
        row: dict[str, Any] = {"step": step["step"], "request_id": step.get("request_id"), "forget_count": step.get("forget_count"),
                               "forget_acc_then": step.get("after_forget_acc"), "forget_acc_now": None, "mia_efficacy_now": None,
                               "relapsed": None}
        try:
            positions = load_file(str(forget_dir(ledger) / str(e.get("forget_file")))) ["positions"] if e else None
        except Exception:  # noqa: BLE001
            positions = None
        if positions is None or lineage.data_sha256 != job.data_sha256:
            row["problem"] = "forgotten set not found in the ledger, or the train data changed"
            section["steps"].append(row)
            continue
        full = job.full_train if job.full_train is not None else job.splits.train
        data = full.subset(positions.to(torch.long)) if len(full) > int(positions.max()) else None
        if data is None:
            row["problem"] = "the stored positions do not fit this train split"
            section["steps"].append(row)
            continue
        out = stream(model, data, job.device, bs, job.task)
        acc = float((out.pred == out.targets).mean())
        row["forget_acc_now"] = acc
        if "conf" in out.stats:
            row["mia_efficacy_now"] = attacks.mia_efficacy(retain.conf, test.conf, out.conf, seed)
        then = step.get("after_forget_acc")
        if then is not None:
            floor = then
            same = np.isin(test.targets, np.unique(out.targets))
            if step.get("scenario") == "sample" and same.any():
                row["heldout_acc_now"] = float((test.pred[same] == test.targets[same]).mean())
                floor = max(then, row["heldout_acc_now"])
            rises.append(acc - floor)
            row["tolerance"] = relapse_tolerance(floor, len(out.targets))
            row["relapsed"] = acc - floor > row["tolerance"]
            if row["relapsed"]:
                section["relapsed"].append(step["step"])
        section["steps"].append(row)
    section["relapse_max"] = max(rises) if rises else None
    return section
