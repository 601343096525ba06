"""One library function per CLI command. Each reads and validates the request first, without torch, so a
malformed request fails instantly; only then does it import the modules that do the work.

The CLI (cli/) parses options, calls one of these, and prints what it returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .request import load_request

if TYPE_CHECKING:
    from .models import CodePolicy
    from .pipeline import ApplyOutcome


def apply(request: str | Path, checkpoint: str | Path, **options: Any) -> "ApplyOutcome":
    """`unlearn apply` (options: see pipeline.apply_request)."""
    req = load_request(request)
    from .exact import is_exact_folder

    if is_exact_folder(checkpoint):  # an exact artifact is unlearned by deactivating what saw the data
        from .exact.run import apply_exact_request

        return apply_exact_request(req, checkpoint, **options)  # type: ignore[return-value]
    if options.pop("retrain_affected", False):
        from .errors import MethodError

        raise MethodError(f"--retrain-affected: {checkpoint} is not an exact artifact; only `unlearn train --exact` folders have stages to retrain")
    from .pipeline import apply_request

    return apply_request(req, checkpoint, **options)


def validate(request: str | Path, checkpoint: Optional[str | Path] = None, code: Optional["CodePolicy"] = None) -> dict[str, Any]:
    """`unlearn validate`: every check a run makes, without training."""
    req = load_request(request)
    from .exact import is_exact_folder
    from .models import CodePolicy

    if checkpoint is not None and is_exact_folder(checkpoint):
        from .exact.run import validate_exact_request

        return validate_exact_request(req, checkpoint, code=code or CodePolicy())
    from .pipeline import validate_request

    return validate_request(req, checkpoint, code=code or CodePolicy())


def train(request: str | Path, output: str | Path, exact: Optional[str] = None, **options: Any) -> dict[str, Any]:
    """`unlearn train` (options: see pipeline.train_request); with `exact` (s3t, sisa) an exact-unlearning artifact folder:
    the training options and `regularizer_params` (--param) become that method's parameters."""
    if exact is not None:
        from .exact import check_exact_method

        check_exact_method(exact)
    req = load_request(request)
    if exact is not None:
        from .exact.run import exact_train_params, train_exact_request

        params = exact_train_params(options.pop("options", None) or {})
        return train_exact_request(req, output, exact, params=params, **options)
    from .pipeline import train_request

    return train_request(req, output, **options)


def audit(request: str | Path, original: str | Path, unlearned: str | Path, **options: Any) -> tuple[dict[str, Any], Path]:
    """`unlearn audit` (options: see audit.audit_request)."""
    req = load_request(request)
    from .audit import audit_request

    return audit_request(req, original, unlearned, **options)


def bench(request: str | Path, checkpoint: str | Path, methods: str | Sequence[str], **options: Any) -> tuple[dict[str, Any], Path]:
    """`unlearn bench` (options: see bench.bench_request)."""
    req = load_request(request)
    from .exact import is_exact_folder

    if is_exact_folder(checkpoint):
        from .errors import MethodError

        raise MethodError(f"{checkpoint} is an exact artifact; bench runs approximate methods on a checkpoint. Delete from it with "
                          "unlearn apply, audit it with unlearn audit, compare with benchmarks/exact_digits.py")
    from .bench import bench_request

    return bench_request(req, checkpoint, methods, **options)
