"""What an exact artifact is and what it guarantees, in words and as `unlearn inspect`'s fields.

Read by the artifact layer (artifacts.EnsembleArtifact), so it imports nothing above the manifest: no job, no
training, no audit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..artifacts import EnsembleArtifact
    from .manifest import Manifest


def guarantee_text(m: Manifest) -> str:
    active = len(m.active_stages())
    base = f"the base ({m.base.sha256[:12]}..., {m.base.source}) is outside the guarantee and must hold no deletable data"
    if not m.deletions:
        return (f"exact unlearning ({m.method}): no deletion recorded yet; each of the {active} active components was trained only on the "
                f"slices its manifest entry lists (assignment digest {m.assignment.digest[:12]}...); {base}")
    return (f"exact unlearning ({m.method}): none of the {active} active components was trained on any of the {len(m.deleted())} samples in "
            f"the deletion log ({len(m.deletions)} deletion(s)); basis: the manifest's lineage (each component's shard, slices and excluded "
            f"samples against the recorded assignment, digest {m.assignment.digest[:12]}...), checked with every component's sha256 when "
            f"the artifact was opened; {base}")


def exact_not_covered(method: str, missing: list[int], total: int) -> str:
    """The audit's note when the request's forget set is not (all) in the artifact's deletion log."""
    shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
    return (f"exact unlearning ({method}): {len(missing)} of this request's {total} forget samples (train positions {shown}) are "
            "not in the artifact's deletion log, so active components may have been trained on them and its guarantee does "
            "not cover this request; apply the request to the artifact (unlearn apply ART -r REQUEST -o OUT) and audit OUT")


def layout_of(m: Manifest) -> dict[str, Any]:
    """How samples were placed and slices ordered: the assignment rule (uniform / by_weight, read from the recorded
    rule text, so artifacts written before the parameter existed are named too), the order rule (cyclic / bms;
    SISA: single) and the deletion weights' sha256 (None: none given)."""
    from .assign import WEIGHTED_ASSIGNMENT_RULE

    return {"assignment": "by_weight" if m.assignment.rule == WEIGHTED_ASSIGNMENT_RULE else "uniform", "order": m.assignment.order,
            "deletion_weights": m.assignment.deletion_weights_sha256 is not None,
            "deletion_weights_sha256": m.assignment.deletion_weights_sha256}


def describe_exact(artifact: EnsembleArtifact) -> dict[str, Any]:
    """`unlearn inspect ART`: layout (assignment and order rules, deletion weights), shards, sequences, stages, budget, deletions."""
    m = artifact.manifest
    served = m.served()
    shards = []
    for sh in m.shards:
        seqs = [{"sequence": s.sequence, "order": s.order, "prefix": s.prefix,
                 "stages": [{"stage": st.stage, "slices": st.slices, "samples": st.samples, "epochs": st.epochs, "status": st.status,
                             "generation": st.generation, "file": st.file, "sha256": st.sha256, "layers": st.layers,
                             "excluded": len(st.excluded), "deactivated_by": st.deactivated_by} for st in s.stages]}
                for s in sh.sequences]
        serving = served.get(sh.shard)
        shards.append({"shard": sh.shard, "size": sh.size, "slice_sizes": sh.slice_sizes,
                       "serving": {"sequence": serving[0], "prefix": serving[1]} if serving else None, "sequences": seqs})
    fields = artifact.fields
    from ..checkpoint import metadata_for

    return {"path": str(artifact.path), "kind": "exact", "sha256": artifact.sha256, "method": m.method, "params": m.params,
            "seed": m.seed, "model": m.model.model_dump(mode="json"), "base": m.base.model_dump(mode="json"),
            "assignment": m.assignment.model_dump(mode="json"), "data": m.data.model_dump(mode="json"), "aggregation": m.aggregation,
            "training": m.training, "layout": layout_of(m), "budget": m.budget(), "shards": shards,
            "deletions": [d.model_dump(mode="json") | {"indices": len(d.indices)} for d in m.deletions],
            "guarantee": artifact.guarantee(), "metadata": fields, "raw_metadata": metadata_for(fields),
            "tensors": [], "parameters": 0}
