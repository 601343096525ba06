"""Exact rows of a bench (`--methods rfa,s3t,sisa`): an S3T or SISA artifact trained from the request, then the
request's deletion applied to it by deactivation, audited like any other row.

    is_exact / exact_row_params   names and parameters, checked before anything runs
    run_exact                     one seed: train the artifact (the one-off cost), delete (no gradient step), load

What the row's figures mean (docs/exact.md, "In a bench"):
- wall_time_s (the table's time and the Pareto plot's x) is the deletion latency: planning the deletion, copying the
  surviving components and publishing the new artifact folder, as `unlearn apply` reports it;
- train_time_s is the one-off training of the artifact (all shards, sequences and stages), a separate column;
- the metrics are those of the served ensemble after the deletion (each shard's longest surviving prefix).

Bases: S3T trains LoRA adapters on a frozen base, by default the benched checkpoint (`--init`); that checkpoint
was trained on the forget set, so the base is outside the guarantee and the row says so (give `--param
s3t.init=PRETRAINED.safetensors`, a base that never saw deletable data, for a guaranteed row). SISA trains whole
models from the seed's random initialisation, like the retrain baseline (or from `--param sisa.init=...`).

The artifact is trained once per seed: the seed is part of it (assignment, initialisation, batch order), so
nothing is shared across seeds.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..errors import MethodError
from ..exact import EXACT_METHODS

if TYPE_CHECKING:
    from torch import nn

    from ..exact.params import ExactParams
    from ..job import Job, Progress
    from ..request import Request

BASE_IS_CHECKPOINT = ("s3t base: the benched checkpoint, which was trained on the forget set, so the base is outside the exact "
                      "guarantee (the deletion only removes the adapters that saw it); give --param s3t.init=BASE.safetensors, "
                      "a base pre-trained on other data, for a guaranteed row")


def is_exact(name: str) -> bool:
    return name in EXACT_METHODS


@dataclass(frozen=True)
class ExactRowParams:
    """An exact row's parameters: the method's own (`unlearn train --exact NAME --param`) and the base it starts from."""

    method: str
    params: "ExactParams"
    init: Optional[Path] = None  # None: s3t -> the benched checkpoint, sisa -> the seed's random initialisation

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        base = str(self.init) if self.init is not None else ("checkpoint" if self.method == "s3t" else "random")
        return {**self.params.model_dump(mode=mode), "init": base}


def exact_row_params(name: str, overrides: dict[str, Any], request: Optional["Request"] = None) -> ExactRowParams:
    """The request's method.params when it names this method, then --param NAME.k=v; `init` picks the base."""
    from ..exact.params import parse_exact_params
    from ..request import method_params_for

    values = dict(method_params_for(request, name, overrides) if request is not None else overrides)
    init = values.pop("init", None)
    init_path = None
    if init is not None and str(init).strip().lower() not in ("checkpoint", "random", ""):
        init_path = Path(str(init)).expanduser()
        if request is not None and "init" not in overrides and not init_path.is_absolute():  # the request's: its folder
            init_path = request.base_dir / init_path
        if not init_path.is_file():
            raise MethodError(f"--param {name}.init={init}: not found; give a .safetensors base checkpoint of the request's architecture")
    elif init is not None and str(init).strip().lower() == "random" and name == "s3t":
        raise MethodError(f"--param {name}.init=random: S3T trains only LoRA adapters and a head, so it needs a trained base; "
                          "drop it (the benched checkpoint) or give a base checkpoint")
    elif init is not None and str(init).strip().lower() == "checkpoint" and name == "sisa":
        raise MethodError(f"--param {name}.init=checkpoint: SISA starting from the model that saw the forget set is not exact; "
                          "drop it (random initialisation) or give a base pre-trained on other data")
    try:
        params = parse_exact_params(name, values, prefix=f"--param {name}.")
    except MethodError as e:
        text = str(e).replace(f"--param {name}. ", f"--param {name}.")
        raise MethodError(text + (", init (the base checkpoint)" if "it takes:" in text else "")) from None
    return ExactRowParams(name, params, init_path)


@dataclass
class ExactRun:
    """What run_one needs from an exact row: the served model after the deletion, and the figures for the record."""

    model: "nn.Module"
    info: dict[str, Any] = field(default_factory=dict)


def run_exact(job: "Job", p: ExactRowParams, progress: Optional["Progress"] = None, log: Optional[list[str]] = None,
              workdir: Optional[Path] = None) -> tuple[ExactRun, float]:
    """Train the artifact at the job's seed, apply the job's request to it, and return the served ensemble and the
    deletion latency. Artifacts go to a temporary folder (removed) unless `workdir` is given (kept there)."""
    from ..artifacts import EnsembleArtifact
    from ..exact.manifest import lineage_violations
    from ..exact.run import NO_INIT_WARNING, apply_exact_request, train_artifact

    folder = Path(tempfile.mkdtemp(prefix=f"bench-{p.method}-")) if workdir is None else Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    notes = log if log is not None else []
    try:
        init = p.init if p.init is not None else (job.checkpoint_path if p.method == "s3t" else None)
        if p.method == "s3t" and p.init is None and init is not None:
            notes.append(BASE_IS_CHECKPOINT)
        trained = folder / f"{p.method}-seed{job.seed}"
        started = time.perf_counter()
        summary = train_artifact(job, p.method, p.params, trained, init, progress=progress)
        train_total = time.perf_counter() - started
        notes.extend(w for w in summary.get("warnings", []) if w != NO_INIT_WARNING or init is None)
        outcome = apply_exact_request(job.request, trained, output=folder / f"{p.method}-seed{job.seed}.deleted",
                                      device=str(job.device), code=job.code)
        result = outcome.result
        notes.extend(result.warnings)
        after = EnsembleArtifact(result.output)
        m = after.manifest
        violations = lineage_violations(m, *after.assignment)
        if violations:  # opening the artifact already refuses this; a bench row must never report such a model
            raise MethodError(f"{p.method}: {violations[0]}")
        info = {
            "exact": True,
            "base": str(init) if init is not None else "random initialisation",
            "train_time_s": summary["wall_time_s"],
            "train_total_s": train_total,
            "train_sample_epochs": summary["sample_epochs"],
            "train_steps": summary["steps"],
            "normal_run_sample_epochs": summary["normal_run_sample_epochs"],
            "components": summary["components"],
            "test_acc_before_deletion": summary.get("test_acc"),
            "deletion_latency_s": result.wall_time_s,
            "apply_total_s": result.total_time_s,
            "deleted_samples": result.info["deleted_samples"],
            "deactivated": result.info["deactivated_count"],
            "active_components_after": result.info["active_components_after"],
            "shards_serving_after": result.info["shards_serving_after"],
            "deletions_left": result.info["budget_after"]["deletions_left"],
            "gradient_steps": result.info["gradient_steps"],
            "lineage_violations": len(violations),
            "guarantee": after.guarantee(),
            "artifact": str(result.output) if workdir is not None else None,
        }
        return ExactRun(result.model, info), result.wall_time_s
    finally:
        if workdir is None:
            shutil.rmtree(folder, ignore_errors=True)
