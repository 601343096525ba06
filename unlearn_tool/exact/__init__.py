"""Exact unlearning: SISA and S3T. The model is trained in isolated parts, and a deletion deactivates (or
retrains) only the parts whose training data held a forgotten sample (docs/exact.md).

    params.py     the methods' parameters (torch-free)
    assign.py     samples -> (shard, slice) by a seeded rule; slice orders per sequence (cyclic, BMS)
    manifest.py   the artifact's manifest: schema, integrity checks, lineage, budget, deletion planning (torch-free)
    train.py      stage training (S3T: stacked peft LoRA + per-stage head; SISA: whole model per stage)
    ensemble.py   the served model: each shard's longest surviving prefix, logits averaged (or voted)
    describe.py   the guarantee in words and `unlearn inspect`'s fields (read by the artifact layer)
    run.py        `unlearn train --exact`, `unlearn apply` / `validate` on an exact artifact

Nothing here imports torch at module level, so the CLI can recognise an exact artifact instantly.
"""

from __future__ import annotations

import os
from pathlib import Path

EXACT_METHODS = ("s3t", "sisa")
MANIFEST = "manifest.json"
FORMAT = "unlearn-exact/v1"


def is_exact_folder(path: str | Path) -> bool:
    """A folder holding an exact artifact's manifest (checked properly when the artifact is opened)."""
    p = Path(path)
    try:
        return p.is_dir() and os.path.lexists(p / MANIFEST)  # not only a file: one that is not is refused as this artifact's
    except OSError:
        return False
