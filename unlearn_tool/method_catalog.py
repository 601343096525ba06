"""The method catalog without torch: `unlearn methods` answers from a cache of the registry's descriptions.

The cache key is the tool version plus the contents of every file in unlearn_tool/methods/, so adding or editing
a method file refreshes it by itself; a miss imports the registry once (torch) and rewrites the
cache. Folder: $UNLEARN_CACHE_DIR/methods, else ~/.cache/unlearn/methods. Importing this module imports
no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

from . import __version__
from .errors import MethodError, UnknownMethodError

PACKAGE = Path(__file__).resolve().parent / "methods"


def _key() -> str:
    h = hashlib.sha256(f"unlearn {__version__}\n".encode())
    for path in sorted(PACKAGE.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:32]


def cache_dir() -> Path:
    root = os.environ.get("UNLEARN_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "unlearn") / "methods"


def _build() -> list[dict[str, Any]]:
    from .methods import describe_method, method_names  # imports torch and every method

    return [describe_method(n) for n in method_names()]


def catalog() -> list[dict[str, Any]]:
    """Every registered method's description (name, summary, reference, tasks, scenarios, parameters)."""
    path = cache_dir() / f"catalog-{_key()}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    entries = json.loads(json.dumps(_build(), default=str))
    try:
        from .checkpoint import replace_atomically

        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(entries)))
    except Exception:  # noqa: BLE001 - a cache that cannot be written only costs speed
        pass
    return entries


EXACT_SUMMARIES = {
    "s3t": "exact: sequence-aware sharded sliced training (LoRA stages on a pre-trained base); deletion deactivates what saw "
           "the data, no gradient step (unlearn train --exact s3t; a row in unlearn bench)",
    "sisa": "exact: sharded, isolated, sliced, aggregated training; deletion deactivates (or --retrain-affected retrains) "
            "the stages that saw the data (unlearn train --exact sisa; a row in unlearn bench)",
}


def exact_entries() -> list[dict[str, Any]]:
    """The exact methods (docs/exact.md), described like registered ones; they train an artifact, so `apply --method`
    does not take them: `train --exact NAME`, `apply ART`, and `bench --methods ...,s3t,sisa`."""
    from .exact.params import PARAMS
    from .params import describe_params

    return [{"name": n, "summary": EXACT_SUMMARIES[n], "reference": "docs/exact.md", "adapter": False, "tasks": ["classification"],
             "scenarios": ["sample", "class"], "label_free": False, "data_parallel": False, "kind": "exact",
             "params": describe_params(cls)} for n, cls in PARAMS.items()]


def describe(name: Optional[str] = None) -> Any:
    """The list of methods (name=None) or one method's description; an unknown name lists the known ones.
    Exact methods (s3t, sisa) come last, marked kind=exact."""
    entries = catalog() + exact_entries()
    if name is None:
        keys = ("name", "summary", "adapter", "tasks", "label_free", "data_parallel", "kind")
        return [{k: e.get(k, "approximate") for k in keys} for e in entries]
    for e in entries:
        if e["name"] == name:
            return e
    raise UnknownMethodError(f"unknown method '{name}'; known methods: {', '.join(e['name'] for e in entries)}")


def check_exact_method(name: str, flag: str = "--exact") -> str:
    """`s3t` or `sisa`; any other name (an approximate method, a typo) is an input error."""
    from .exact import EXACT_METHODS  # torch-free

    key = str(name).strip().lower()
    if key not in EXACT_METHODS:
        if key in {e["name"] for e in catalog()}:
            raise MethodError(f"{flag} {name}: {name} is an approximate unlearning method, not an exact one; "
                              f"give {flag} s3t or {flag} sisa (or drop {flag} and use unlearn apply --method {name})")
        raise MethodError(f"{flag} {name}: not an exact-unlearning method; give {flag} s3t or {flag} sisa")
    return key
