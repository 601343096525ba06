"""Provenance shared by every output: timestamps (SOURCE_DATE_EPOCH-aware) and library versions.

Reproducible outputs: with the reproducible-builds variable SOURCE_DATE_EPOCH set
(seconds since 1970), timestamps are that time and run-dependent figures (wall
times, the device string) stay out of written files, so the same request, seed
and inputs give byte-identical checkpoints on the same CPU and library versions.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Optional

from . import __version__
from .errors import UnlearnError

ENV = "SOURCE_DATE_EPOCH"
# Fields of file metadata that differ from run to run; left out when SOURCE_DATE_EPOCH is set.
VOLATILE = ("wall_time_s", "total_time_s", "device")


def source_date_epoch() -> Optional[int]:
    raw = os.environ.get(ENV)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise UnlearnError(f"{ENV}={raw[:30]!r} is not a whole number of seconds since 1970; unset it or give e.g. {ENV}=$(git log -1 --format=%ct)") from None
    if not 0 <= value < 2**40:
        raise UnlearnError(f"{ENV}={value} is out of range; give seconds since 1970")
    return value


def reproducible() -> bool:
    return source_date_epoch() is not None


def created_utc() -> str:
    """Now, or SOURCE_DATE_EPOCH when set, as an ISO-8601 UTC timestamp."""
    epoch = source_date_epoch()
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch if epoch is not None else None))


def file_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The provenance fields to write into a file: run-dependent ones dropped when outputs must be reproducible."""
    if not reproducible():
        return dict(fields)
    return {k: v for k, v in fields.items() if k not in VOLATILE}


def versions() -> dict[str, Optional[str]]:
    """The versions that decide the numbers: this tool, Python and the numeric libraries."""
    from importlib import metadata as im

    def ver(name: str) -> Optional[str]:
        try:
            return im.version(name)
        except im.PackageNotFoundError:
            return None

    return {"tool": __version__, "torch": ver("torch"), "torchvision": ver("torchvision"), "peft": ver("peft"),
            "scikit-learn": ver("scikit-learn"), "numpy": ver("numpy"), "python": platform.python_version()}
