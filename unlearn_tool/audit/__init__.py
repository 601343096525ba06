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
from typing import TYPE_CHECKING, Any, Optional, Sequence

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
from .gates import Gate, known_names, parse_gate, parse_gates  # noqa: F401
from .report import AUDIT_FILES, default_report_dir, report_dir_for, write_reports  # noqa: F401

if TYPE_CHECKING:
    from torch import nn

    from ..job import Job
    from ..models import CodePolicy
    from ..request import Request

SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


def load_schema() -> dict[str, Any]:
    """The JSON Schema report.json follows."""
    import json

    return json.loads(SCHEMA_PATH.read_text())


def audit_files(
    job: "Job",
    unlearned: str | Path,
    reference: Optional[str | Path] = None,
    gates: Sequence[str | Gate] = (),
    report_dir: Optional[str | Path] = None,
    tier: str = "standard",
    shadows: int = 16,
    progress: Optional[Any] = None,
    ledger: Optional[Path] = None,
) -> tuple[dict[str, Any], Path]:
    """Load the unlearned output (and reference), audit, write the reports; the verdict is not yet enforced."""
    parsed = [g if isinstance(g, Gate) else parse_gate(g) for g in gates]
    model, info = load_unlearned(unlearned, job)
    ref_model, ref_info = load_checkpoint(reference, job) if reference is not None else (None, None)
    if ledger is None and Path(unlearned).is_file():
        from ..ledger import default_ledger

        ledger = default_ledger(Path(unlearned))
    report = run_audit(job, job.original, model, ref_model, parsed, unlearned_info=info, reference_info=ref_info,
                       tier=tier, shadows=shadows, progress=progress, ledger=ledger)
    folder = write_reports(report, report_dir_for(unlearned, report_dir))
    return report, folder


def audit_request(
    request: "str | Path | Request",
    original: str | Path,
    unlearned: str | Path,
    reference: Optional[str | Path] = None,
    gates: Optional[Sequence[str]] = None,
    report_dir: Optional[str | Path] = None,
    device: str = "auto",
    seed: Optional[int] = None,
    code: Optional["CodePolicy"] = None,
    tier: str = "standard",
    shadows: int = 16,
    progress: Optional[Any] = None,
    ledger: Optional[str | Path] = None,
    num_workers: int = 0,
) -> tuple[dict[str, Any], Path]:
    """`unlearn audit`: gates (parsed once), reference and report folder are checked before any model is loaded.

    An unlearned checkpoint with a lineage has its earlier deletions left out of the data (from its ledger:
    `ledger`, else `<unlearned stem>.ledger.jsonl`) and each of them re-checked for a relapse.

    gates: replaces the request's audit.gates when given; reference: default the request's audit.reference.
    """
    from ..job import check_seed, prepare
    from ..models import CodePolicy
    from ..reporting import check_report_dir
    from ..request import load_request

    req = load_request(request)
    exprs = list(gates) if gates else list(req.audit.gates)
    ref = Path(reference) if reference is not None else req.audit_reference()
    parsed = parse_gates(exprs, req.forget.scenario, ref is not None, req.task)
    check_report_dir(report_dir_for(unlearned, report_dir), AUDIT_FILES)
    from ..checkpoint import refuse_inside_inputs

    refuse_inside_inputs(report_dir_for(unlearned, report_dir), req, "report dir", "--report-dir")
    if seed is not None:
        check_seed(seed)
    if tier not in ("standard", "strong"):
        from ..errors import AuditError

        raise AuditError(f"--tier {tier}: give standard or strong")
    if tier == "strong" and req.task != "classification":
        from ..errors import AuditError

        raise AuditError("--tier strong (U-LiRA on class confidences) is for classification models; audit a regression model "
                         "with the standard tier and a retrained --reference")
    if not 2 <= shadows <= 1024:
        from ..errors import AuditError

        raise AuditError(f"--shadows {shadows}: give 2..1024 (each shadow is a full training run; 16 is the default)")
    ledger_path = Path(ledger) if ledger is not None else None
    resolve = _earlier_deletions(unlearned, ledger_path, req.sha256)
    job = prepare(req, original, device=device, seed=seed, code=code or CodePolicy(), excluded_for=resolve, needs_labels=False,
                  num_workers=num_workers)
    return audit_files(job, unlearned, ref, parsed, report_dir, tier=tier, shadows=shadows, progress=progress, ledger=ledger_path)


def _earlier_deletions(unlearned: str | Path, ledger: Optional[Path], request_sha256: str) -> Any:
    """For a checkpoint with a lineage audited with its last request: a function giving the train positions its earlier steps
    forgot (None: nothing to leave out; another request, e.g. all deletions combined, is audited on the full data)."""
    from ..artifacts import open_artifact
    from ..ledger import Lineage, default_ledger, read_ledger, resolve_excluded

    path = Path(unlearned)
    if not path.exists():
        return None
    lineage = Lineage.from_metadata(open_artifact(path).fields)
    if lineage is None or len(lineage.steps) < 2 or lineage.steps[-1].get("request_sha256") != request_sha256:
        return None
    ledger = ledger or default_ledger(path)
    if not ledger.is_file():
        return None  # the audit says so (relapse check) and audits on the full data
    earlier = Lineage(lineage.original_sha256, lineage.data_sha256, lineage.steps[:-1])
    entries = read_ledger(ledger)
    return lambda train, sha: resolve_excluded(earlier, entries, ledger, train.ids, sha)


def audit_fresh_model(job: "Job", model: "nn.Module", info: dict[str, Any], report_dir: Optional[str | Path] = None,
                      gates: Optional[Sequence[str]] = None,
                      reference: Optional[tuple["nn.Module", dict[str, Any]]] = None,
                      ledger: Optional[Path] = None) -> tuple[dict[str, Any], Path]:
    """`unlearn apply --audit`: audit the model just written (info: its path, kind, sha256, metadata) with the plan's
    gates and the reference loaded before unlearning (default: the request's audit section); `ledger`, once written,
    lets the audit re-check the lineage's earlier deletions for a relapse."""
    spec = job.request.audit
    exprs = list(spec.gates) if gates is None else list(gates)
    if reference is None and spec.reference:
        reference = load_checkpoint(job.request.resolve(spec.reference), job)
    parsed = parse_gates(exprs, job.splits.scenario, reference is not None, job.task.name)
    ref_model, ref_info = reference if reference is not None else (None, None)
    report = run_audit(job, job.original, model, ref_model, parsed, unlearned_info=info, reference_info=ref_info, ledger=ledger)
    folder = write_reports(report, report_dir_for(info["path"], report_dir))
    return report, folder
