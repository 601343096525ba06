"""The exact methods' parameters (`unlearn train --exact NAME --param k=v`); torch-free."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, ValidationError, model_validator

from ..errors import MethodError
from ..params import IS_PATH, SaneParams, format_error

MAX_PARTS = 4096  # shards x sequences x slices components: anything larger is a typo


class ExactParams(SaneParams):
    shards: int = Field(5, ge=1, le=1024, description="Disjoint shards of the training data; one model (S3T: one set of sequences) per shard.")
    slices: int = Field(4, ge=1, le=1024, description="Slices per shard; stage r of a sequence trains on its first r slices.")
    lr: float = Field(1e-3, gt=0, description="Learning rate.")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="adam, or sgd with momentum 0.9 (a fresh optimizer per stage).")
    batch_size: int = Field(64, ge=1, description="Training batch size.")
    aggregation: Literal["mean", "vote", "weighted"] = Field("mean", description="mean of the shards' logits, a majority vote (ties broken by mean probability), or weighted: each shard's logits weighted by the training samples of its served prefix (a shard cut back to one slice counts less).")
    min_steps: int = Field(0, ge=0, description="At least this many optimizer steps per stage (more epochs for a small stage's data), so short prefixes are trained too.")

    def components(self) -> int:
        return self.shards * self.slices * getattr(self, "sequences", 1)

    @model_validator(mode="after")
    def _not_too_many(self) -> "ExactParams":
        if self.components() > MAX_PARTS:
            raise ValueError(f"shards: {self.components()} components (shards x sequences x slices) is more than {MAX_PARTS}; use fewer shards or slices")
        return self


class SISAParams(ExactParams):
    """SISA (Bourtoule et al. 2021): per shard one model, trained slice by slice with a checkpoint after each."""

    epochs: int = Field(40, ge=1, description="Budget in passes over the shard; stage r gets e_r = floor(r*a) - floor((r-1)*a) epochs, a = 2*epochs/(slices+1) (SISA's schedule).")
    deletion_weights: Optional[str] = Field(None, json_schema_extra=IS_PATH, description="A text file with one deletion probability in [0, 1] per train sample (# comments allowed): the likeliest deleted samples go to the last slices of each shard (assignment by_weight), so their deletion truncates only the tail of the shard's training sequence.")
    assignment: Optional[Literal["uniform", "by_weight"]] = Field(None, description="Samples -> slices within a shard: uniform (seeded), or by_weight (increasing deletion probability, so the likeliest deleted samples share the last slices). Default: by_weight with deletion_weights, else uniform.")

    @model_validator(mode="after")
    def _assignment(self) -> "SISAParams":
        return resolve_assignment(self)


class S3TParams(ExactParams):
    """S3T (sequence-aware sharded sliced training): per shard B slice orders; stage i trains the LoRA of its layer
    group (top layers first) and the classifier head on the first i+1 slices of its order."""

    sequences: int = Field(3, ge=1, le=1024, description="Slice orders per shard (B); at most `slices`. Each is trained separately; a shard serves its longest surviving prefix.")
    order: Literal["cyclic", "bms"] = Field("cyclic", description="cyclic rotations of the slices, or BMS: per position a bipartite matching of sequences to slices, least likely deleted first (needs or uses deletion_weights).")
    deletion_weights: Optional[str] = Field(None, json_schema_extra=IS_PATH, description="With order=bms: a text file with one deletion probability in [0, 1] per train sample (# comments allowed); default uniform.")
    assignment: Optional[Literal["uniform", "by_weight"]] = Field(None, description="Samples -> slices within a shard: uniform (seeded), or by_weight (increasing deletion probability, so the likeliest deleted samples share the last slices, which BMS puts last). Default: by_weight with deletion_weights, else uniform.")
    epochs: int = Field(10, ge=1, description="Epochs per stage over the stage's data (the first i+1 slices).")
    lr: float = Field(5e-3, gt=0, description="Learning rate of the stage's LoRA and head.")
    batch_size: int = Field(32, ge=1, description="Training batch size.")
    rank: int = Field(8, ge=1, le=4096, description="LoRA rank of each stage's adapters.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha (scaling alpha / rank).")

    @model_validator(mode="after")
    def _sequences(self) -> "S3TParams":
        if self.sequences > self.slices:
            raise ValueError(f"sequences: {self.sequences} orders of {self.slices} slices would repeat a first slice; give sequences <= slices")
        if self.deletion_weights is not None and self.order != "bms":
            raise ValueError("deletion_weights: only BMS uses deletion probabilities; add --param order=bms")
        return resolve_assignment(self, " (and order=bms)")


def resolve_assignment(p: Any, hint: str = "") -> Any:
    """by_weight needs deletion weights; no rule given: by_weight with weights, else uniform (resolved here, so the
    manifest records the rule that was used)."""
    if p.assignment == "by_weight" and p.deletion_weights is None:
        raise ValueError(f"assignment: by_weight sorts samples by their deletion probability; add --param deletion_weights=FILE{hint}")
    if p.assignment is None:
        p.assignment = "by_weight" if p.deletion_weights is not None else "uniform"
    return p


PARAMS: dict[str, type[ExactParams]] = {"s3t": S3TParams, "sisa": SISAParams}


def parse_exact_params(method: str, values: dict[str, Any], prefix: str = "--param") -> ExactParams:
    """Validate the parameters of `method` (s3t or sisa); one line naming the parameter on error."""
    cls = PARAMS[method]
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        first = e.errors()[0]
        if first["type"] == "extra_forbidden":
            loc = ".".join(str(p) for p in first["loc"])
            raise MethodError(f"{prefix} {loc}: unknown parameter of {method}; it takes: {', '.join(cls.model_fields)}") from None
        raise MethodError(format_error(first, f"{method} parameter").replace(f"{method} parameter.", f"{prefix} ")) from None


def stage_epochs(params: ExactParams, stages: int) -> list[int]:
    """Epochs of each stage: S3T a fixed number per stage; SISA its schedule (total about `epochs` passes over a shard)."""
    if isinstance(params, SISAParams):
        avg = 2 * params.epochs / (stages + 1)
        out = [int(r * avg) - int((r - 1) * avg) for r in range(1, stages + 1)]
        return [max(1, e) for e in out]
    return [params.epochs] * stages


def effective_epochs(p: ExactParams, epochs: int, samples: int) -> int:
    """A stage's epochs: its scheduled `epochs`, raised so that it takes at least `min_steps` optimizer steps."""
    if p.min_steps <= 0 or samples <= 0:
        return epochs
    per_epoch = -(-samples // p.batch_size)
    return max(epochs, -(-p.min_steps // per_epoch))
