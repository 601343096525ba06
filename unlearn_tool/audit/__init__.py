"""The audit: did the model forget, and does the deletion look like a retrained model's? (docs/audit.md)

Public API:
    run_audit(job, original_model, unlearned_model, reference_model=None, gates=[...]) -> report dict
    load_unlearned(path, job) -> (model, info)      merged .safetensors or PEFT adapter folder
    model_metrics(model, job, seed) -> dict          one model's metrics (report.json models.*)
    gaps(unlearned_metrics, reference_metrics) -> dict   per-metric gaps, avg_gap in points
    write_reports(report, folder), check_verdict(report)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from .core import (  # noqa: F401
    ADAPTER_AUDIT_WARNING,
    SCHEMA,
    check_verdict,
    gaps,
    load_checkpoint,
    load_unlearned,
    model_metrics,
    run_audit,
)
from .gates import known_names, parse_gate, parse_gates  # noqa: F401
from .report import default_report_dir, report_dir_for, write_reports  # noqa: F401

SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


def load_schema() -> dict[str, Any]:
    """The JSON Schema report.json follows."""
    import json

    return json.loads(SCHEMA_PATH.read_text())


def audit_files(
    job: Any,
    unlearned: str | Path,
    reference: Optional[str | Path] = None,
    gates: Sequence[str] = (),
    report_dir: Optional[str | Path] = None,
) -> tuple[dict[str, Any], Path]:
    """`unlearn audit`: load the unlearned output (and reference), audit, write the reports; verdict not yet enforced."""
    from .gates import parse_gates as _check

    _check(list(gates), job.splits.scenario, reference is not None)  # fail fast, before loading models
    model, info = load_unlearned(unlearned, job)
    ref_model, ref_info = load_checkpoint(reference, job) if reference is not None else (None, None)
    report = run_audit(job, job.original, model, ref_model, gates, unlearned_info=info, reference_info=ref_info)
    folder = write_reports(report, report_dir_for(unlearned, report_dir))
    return report, folder


def audit_apply_result(job: Any, result: Any, report_dir: Optional[str | Path] = None, gates: Optional[Sequence[str]] = None,
                       reference: Optional[tuple[Any, dict[str, Any]]] = None) -> tuple[dict[str, Any], Path]:
    """`unlearn apply --audit`: audit the fresh result with the plan's gates and the reference it loaded before unlearning
    (default: the request's audit section)."""
    spec = job.request.audit
    gates = list(spec.gates) if gates is None else list(gates)
    if reference is None and spec.reference:
        reference = load_checkpoint(job.request.resolve(spec.reference), job)
    parse_gates(gates, job.splits.scenario, reference is not None)
    out = Path(result.output)
    info = {"path": str(out.resolve()), "kind": result.mode, "sha256": result.output_sha256, "metadata": result.metadata}
    ref_model, ref_info = reference if reference is not None else (None, None)
    report = run_audit(job, job.original, result.model, ref_model, gates, unlearned_info=info, reference_info=ref_info)
    folder = write_reports(report, report_dir_for(out, report_dir))
    return report, folder
