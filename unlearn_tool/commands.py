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


def _set_precision(options: dict[str, Any], task: str = "classification") -> None:
    """Check and set `--precision` (popped from the options) for the device and the task the run will use."""
    from .job import resolve_device
    from .precision import configure

    configure(options.pop("precision", "auto"), resolve_device(options.get("device", "auto")), task=task)


def apply(request: "str | Path | Sequence[str | Path]", checkpoint: str | Path, **options: Any) -> "ApplyOutcome":
    """`unlearn apply` (options: see pipeline.apply_request); several requests are applied in order."""
    reqs = [load_request(r) for r in (request if isinstance(request, (list, tuple)) else [request])]
    from .exact import is_exact_folder

    if is_exact_folder(checkpoint):  # an exact artifact is unlearned by deactivating what saw the data
        _set_precision(options, reqs[0].task)
        from .exact.run import apply_exact_request

        if len(reqs) > 1:
            from .errors import MethodError

            raise MethodError(f"{checkpoint} is an exact artifact: apply one request at a time (each deletion is a step of its log)")
        if options.pop("anchor", None) is not None:
            from .errors import MethodError

            raise MethodError(f"--anchor: {checkpoint} is an exact artifact, whose deletions retrain nothing to align; drop --anchor")
        for option in ("summary_samples", "num_workers", "no_anchor"):  # its summary evaluates every sample; its data are read in process; nothing to anchor
            options.pop(option, None)
        return apply_exact_request(reqs[0], checkpoint, **options)  # type: ignore[return-value]
    if options.pop("retrain_affected", False):
        from .errors import MethodError

        raise MethodError(f"--retrain-affected: {checkpoint} is not an exact artifact; only `unlearn train --exact` folders have stages to retrain")
    import time

    t = time.perf_counter()
    from .distributed import device_for, setup
    from .pipeline import apply_request  # torch and the methods (peft only to write or read an adapter-only output)

    imports_s = time.perf_counter() - t
    setup(options.get("device", "auto"))
    options["device"] = device_for(options.get("device", "auto"))
    _set_precision(options, reqs[0].task)
    outcome = apply_request(reqs if len(reqs) > 1 else reqs[0], checkpoint, **options)
    outcome.timings = {"imports_s": imports_s, **outcome.timings}
    return outcome


def validate(request: str | Path, checkpoint: Optional[str | Path] = None, code: Optional["CodePolicy"] = None,
             allow_missing: bool = False) -> dict[str, Any]:
    """`unlearn validate`: every check a run makes, without training (allow_missing: as apply's, unknown IDs reported)."""
    req = load_request(request)
    from .exact import is_exact_folder
    from .models import CodePolicy

    if checkpoint is not None and is_exact_folder(checkpoint):
        from .exact.run import validate_exact_request

        return validate_exact_request(req, checkpoint, code=code or CodePolicy(), allow_missing=allow_missing)
    from .pipeline import validate_request

    return validate_request(req, checkpoint, code=code or CodePolicy(), allow_missing=allow_missing)


def train(request: str | Path, output: str | Path, exact: Optional[str] = None, **options: Any) -> dict[str, Any]:
    """`unlearn train` (options: see pipeline.train_request); with `exact` (s3t, sisa) an exact-unlearning artifact folder:
    the training options and `regularizer_params` (--param) become that method's parameters."""
    if exact is not None:
        from .method_catalog import check_exact_method

        check_exact_method(exact)
    req = load_request(request)
    if exact is not None:
        from .exact.run import exact_train_params, train_exact_request

        params = exact_train_params(options.pop("options", None) or {})
        options.pop("num_workers", None)  # its data are read in process
        _set_precision(options, req.task)
        return train_exact_request(req, output, exact, params=params, **options)
    from .distributed import device_for, setup
    from .pipeline import train_request

    setup(options.get("device", "auto"))
    options["device"] = device_for(options.get("device", "auto"))
    _set_precision(options, req.task)
    return train_request(req, output, **options)


def audit(request: str | Path, original: str | Path, unlearned: str | Path, **options: Any) -> tuple[dict[str, Any], Path]:
    """`unlearn audit` (options: see audit.audit_request)."""
    req = load_request(request)
    from .audit import audit_request

    _set_precision(options, req.task)  # the strong tier trains shadow models
    return audit_request(req, original, unlearned, **options)


def bench(request: str | Path, checkpoint: str | Path, methods: str | Sequence[str], **options: Any) -> tuple[dict[str, Any], Path]:
    """`unlearn bench` (options: see bench.bench_request)."""
    req = load_request(request)
    from .exact import is_exact_folder

    if is_exact_folder(checkpoint):
        from .errors import MethodError

        raise MethodError(f"{checkpoint} is an exact artifact; bench takes the trained checkpoint and trains exact rows itself: "
                          "give the .safetensors checkpoint with --methods rfa,s3t,sisa (delete from the artifact with unlearn apply)")
    from .bench import bench_request

    _set_precision(options, req.task)
    return bench_request(req, checkpoint, methods, **options)


def merge(adapter: str | Path, base: str | Path, output: str | Path, **options: Any) -> dict[str, Any]:
    """`unlearn merge`: an adapter folder folded into its base checkpoint (options: force, code)."""
    from .pipeline import merge_adapter

    return merge_adapter(adapter, base, output, **options)


def ledger_show(checkpoint: Path, ledger: Optional[Path] = None) -> dict[str, Any]:
    """`unlearn ledger CKPT`: the checkpoint's lineage (from its metadata)."""
    from .errors import UnlearnError
    from .ledger import Lineage, lineage_artifact

    lineage = Lineage.from_metadata(lineage_artifact(checkpoint).fields)
    if lineage is None:
        raise UnlearnError(f"{checkpoint} carries no lineage; it was not written by `unlearn apply`")
    return lineage.to_json()


def ledger_verify(checkpoint: Path, original: Path, ledger: Optional[Path] = None) -> dict[str, Any]:
    """`unlearn ledger verify`: every hash link, and that the checkpoint is the chain's last output."""
    from .ledger import verify

    return verify(checkpoint, original, ledger)
