"""Load an exact artifact as one nn.Module: each surviving shard serves its longest surviving prefix; the
module outputs the mean of their logits (or a vote, or a mean weighted by the samples of each served prefix), so
the audit and every evaluation work unchanged."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..checkpoint import load_into
from ..errors import CheckpointError, UnlearnError
from .manifest import read_part
from .params import parse_exact_params
from .train import EnsembleModule, s3t_layers, serving_model

if TYPE_CHECKING:
    from torch import nn

    from ..artifacts import EnsembleArtifact, LoadContext
    from .manifest import Manifest


class ExhaustedError(UnlearnError):
    """Every component of an exact artifact was deactivated: it cannot serve, retraining is needed (exit 2)."""


def retrain_hint(m: "Manifest", exhausted: bool = False) -> str:
    """exhausted: `m` itself serves nothing, so --retrain-affected on it has no deletion to replay (run it on the parent)."""
    where = "the deletion that exhausted it on the artifact before it" if exhausted else "the deletion"
    return (f"retraining is needed: unlearn train --exact {m.method} without the deleted samples, or rerun {where} with "
            f"unlearn apply --retrain-affected")


def check_arch(artifact: "EnsembleArtifact", arch: str) -> None:
    if artifact.manifest.model.arch != arch:
        raise CheckpointError(f"exact artifact {artifact.path} was trained with model.arch {artifact.manifest.model.arch}, the request names {arch}; "
                              "set model.arch/kwargs to the architecture it was trained with")


def load_base(artifact: "EnsembleArtifact", make_model: Any, arch: str) -> "nn.Module":
    m = artifact.manifest
    return load_into(make_model(), read_part(artifact.path, m.base.file), arch, artifact.path / m.base.file).eval()


def stage_groups(m: "Manifest", base: "nn.Module", where: str) -> tuple[Any, Any]:
    """S3T's head and LoRA layer groups, checked against what the manifest recorded."""
    if m.method != "s3t":
        return None, None
    head, groups = s3t_layers(base, len(m.shards[0].slice_sizes))
    if head != m.model.head or groups != m.model.stage_layers:
        raise CheckpointError(f"exact artifact {where}: the architecture's layers ({head}; {groups[:2]}...) differ from the manifest's "
                              f"({m.model.head}; {m.model.stage_layers[:2]}...); set model.arch/kwargs to the architecture it was trained with")
    return head, groups


def load_ensemble(artifact: "EnsembleArtifact", ctx: "LoadContext") -> EnsembleModule:
    check_arch(artifact, ctx.arch)
    return build_ensemble(artifact.manifest, artifact.path, ctx)


def build_ensemble(m: "Manifest", folder: Any, ctx: "LoadContext") -> EnsembleModule:
    """The served model of manifest `m`, reading the base and the served components from `folder` (checked files)."""
    from pathlib import Path

    folder = Path(folder)
    served = m.served()
    if not served:
        raise ExhaustedError(f"exact artifact {folder}: every component was deactivated by deletions, no shard can serve; {retrain_hint(m, exhausted=True)}")
    base = load_into(ctx.make_model(), read_part(folder, m.base.file), ctx.arch, folder / m.base.file).eval()
    head, groups = stage_groups(m, base, str(folder))
    params = parse_exact_params(m.method, m.params, prefix="manifest params")
    members, weights = [], []
    for k, (b, p) in sorted(served.items()):
        seq = m.shards[k].sequences[b]
        comps = [read_part(folder, st.file or "") for st in seq.stages[:p]]
        weights.append(seq.stages[p - 1].samples)  # the fine-tuning samples the served prefix was trained on
        members.append(serving_model(m.method, params, base, ctx.make_model, comps, ctx.device, head, groups,
                                     where=f"exact artifact {folder} shard {k} sequence {b}"))
    ensemble = EnsembleModule(members, m.aggregation, shards=sorted(served),
                              weights=weights if m.aggregation == "weighted" else None).to(ctx.device).eval()
    for p in ensemble.parameters():  # an ordinary module to its users (an audit may fine-tune a copy: relearn time)
        p.requires_grad_(True)
    return ensemble
