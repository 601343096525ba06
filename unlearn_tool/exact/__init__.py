"""Exact unlearning: SISA and S3T. The model is trained in isolated parts, and a deletion deactivates (or
retrains) only the parts whose training data held a forgotten sample (docs/exact.md).

    params.py     the methods' parameters (torch-free)
    assign.py     samples -> (shard, slice) by a seeded rule; slice orders per sequence (cyclic, BMS)
    manifest.py   the artifact's manifest: schema, integrity checks, lineage, budget, deletion planning (torch-free)
    train.py      stage training (S3T: stacked peft LoRA + per-stage head; SISA: whole model per stage)
    ensemble.py   the served model: each shard's longest surviving prefix, logits averaged (or voted)
    run.py        `unlearn train --exact`, `unlearn apply` / `validate` on an exact artifact

Nothing here imports torch at module level, so the CLI can recognise an exact artifact instantly.
"""

from __future__ import annotations

from pathlib import Path

EXACT_METHODS = ("s3t", "sisa")
MANIFEST = "manifest.json"
FORMAT = "unlearn-exact/v1"


def check_exact_method(name: str, flag: str = "--exact") -> str:
    """`s3t` or `sisa`; any other name (an approximate method, a typo) is an input error."""
    from ..errors import MethodError

    key = str(name).strip().lower()
    if key not in EXACT_METHODS:
        from ..method_catalog import catalog

        if key in {e["name"] for e in catalog()}:
            raise MethodError(f"{flag} {name}: {name} is an approximate unlearning method, not an exact one; "
                              f"give {flag} s3t or {flag} sisa (or drop {flag} and use unlearn apply --method {name})")
        raise MethodError(f"{flag} {name}: not an exact-unlearning method; give {flag} s3t or {flag} sisa")
    return key


def is_exact_folder(path: str | Path) -> bool:
    """A folder holding an exact artifact's manifest (checked properly when the artifact is opened)."""
    p = Path(path)
    try:
        return p.is_dir() and (p / MANIFEST).is_file()
    except OSError:
        return False
