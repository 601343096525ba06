"""The audit: stream each model's outputs once, compute its metrics, compare with a baseline, apply gates."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from torch import nn

from ..artifacts import CheckpointArtifact
from ..errors import CheckpointError, GateFailure, NonFiniteOutputs, UnmeasurableResult
from ..evaluate import FINITE_OUTPUTS_FIX, non_finite_where, stream
from ..job import Job
from ..provenance import created_utc, versions
from ..tasks import SetOutputs
from . import attacks
from . import metrics as M
from .gates import Gate, evaluate_gates, parse_gates
from .registry import finite
from .verdict import decide, distinguishability

SCHEMA = "unlearn.audit/v1"
SETS = ("retain", "forget", "test")
MAX_DISTANCE_SAMPLES = 5000  # per set: softmax rows kept for distances / JS / ZRF

# Two-sided warning thresholds (fractions); docs/audit.md explains each.
ACC_TOLERANCE = 0.05
MIA_TOLERANCE = 0.10
LOSS_AUC_TOLERANCE = 0.10
UTILITY_DROP = 0.05
MAE_TOLERANCE = 0.10  # regression: forget MAE within 10% (relative) of the reference's, or of the held-out MAE
UTILITY_RISE = 0.05  # regression: test MAE may rise 5% (relative) from the original's

ADAPTER_AUDIT_WARNING = (
    "adapter-only output: the forgotten data is still in the base weights; this audit holds only for base + adapter, "
    "so merge the adapter before deleting the original checkpoint"
)


# ---------------------------------------------------------------- model outputs

ModelOutputs = dict[str, SetOutputs]  # per set: retain, forget, test


def kept_positions(n: int, seed: int, offset: int, k: int = MAX_DISTANCE_SAMPLES) -> np.ndarray:
    """The seeded subset of positions whose output rows are kept (all when n <= k): the same for every model."""
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed * 7919 + offset).choice(n, size=k, replace=False))


def model_outputs(model: nn.Module, job: Job, seed: int) -> ModelOutputs:
    """A model's per-sample figures on retain, forget and test data (one streamed pass over each)."""
    bs = job.request.data.batch_size
    model = model.to(job.device)
    return {name: stream(model, getattr(job.splits, name), job.device, bs, job.task, kept_positions(len(getattr(job.splits, name)), seed, i))
            for i, name in enumerate(SETS)}


def random_forget_rows(job: Job, seed: int) -> np.ndarray:
    """Outputs of a randomly initialised model of the same architecture (ZRF's 'incompetent teacher') on the kept forget rows."""
    rand = job.for_seed(seed).make_model().to(job.device)
    forget = job.splits.forget
    return stream(rand, forget, job.device, job.request.data.batch_size, job.task, kept_positions(len(forget), seed, 1)).rows


# ---------------------------------------------------------------- per-model metrics

def metrics_from_outputs(out: ModelOutputs, job: Job, seed: int, random_rows: Optional[np.ndarray] = None) -> dict[str, Any]:
    """The per-model metric dict of report.json's models.* entries."""
    r, f, t = out["retain"], out["forget"], out["test"]
    task = job.task
    res: dict[str, Any] = task.utility(out, job.forget_info)
    feature = task.attack_features
    for name in ("mia_efficacy", "mia_error_efficacy"):  # SalUn's SVC: retain members against test non-members, scored on D_f
        if name in feature:
            res[name] = attacks.mia_efficacy(r.stats[feature[name]], t.stats[feature[name]], f.stats[feature[name]], seed)
    if "mia_entropy" in feature:
        res["mia_entropy"] = attacks.mia_entropy(r.stats[feature["mia_entropy"]], t.stats[feature["mia_entropy"]], f.stats[feature["mia_entropy"]], seed)
    if "mia_loss" in feature:
        held = task.heldout(job.forget_info, t)  # classification: the test split; range unlearning: its samples in the range
        res["mia_loss_acc"], res["mia_loss_auc"] = attacks.mia_loss(f.stats[feature["mia_loss"]], held.stats[feature["mia_loss"]], seed)
    if task.probabilistic:
        if random_rows is None:
            random_rows = random_forget_rows(job, seed)
        res["zrf"] = M.zrf(f.rows, random_rows)
    res["mean_loss"] = {k: float(v.loss.mean()) for k, v in out.items()}
    if "conf" in r.stats:
        res["mean_confidence"] = {k: float(v.conf.mean()) for k, v in out.items()}
    if "resid" in r.stats:  # regression: residual and absolute-error distributions, on a scale set by the targets
        scale = M.target_scale(r.targets)
        res["residual_hist"] = {"scale": scale, "edges": [float(e) for e in M.residual_edges(scale)],
                                **{k: M.loss_histogram(v.resid, M.residual_edges(scale)) for k, v in out.items()}}
        res["error_hist"] = {"scale": scale, "edges": [float(e) for e in M.error_edges(scale)],
                             **{k: M.loss_histogram(v.abs_err, M.error_edges(scale)) for k, v in out.items()},
                             "heldout": M.loss_histogram(task.heldout(job.forget_info, t).abs_err, M.error_edges(scale))}
    else:
        res["loss_hist"] = {"edges": [float(e) for e in M.LOSS_EDGES], **{k: M.loss_histogram(v.loss, M.LOSS_EDGES) for k, v in out.items()}}
    return _clean(res)


def finite_outputs(model: nn.Module, job: Job, seed: int, refuse: Callable[[str], Exception]) -> ModelOutputs:
    """model_outputs, refused with refuse(where) when some hold NaN/Inf: no attack, MAE or distance exists for them
    (scikit-learn's attacks would fail deep inside). The check counts rows in the pass the audit makes anyway."""
    out = model_outputs(model, job, seed)
    where = non_finite_where(out)
    if where:
        raise refuse(where)
    return out


def model_metrics(model: nn.Module, job: Job, seed: Optional[int] = None) -> dict[str, Any]:
    """Every per-model metric of the audit for one model (the dict under report.json's models.*), for reuse by bench.
    A model whose outputs hold NaN/Inf raises NonFiniteOutputs (a DivergedError saying where)."""
    seed = job.seed if seed is None else seed
    return metrics_from_outputs(finite_outputs(model, job, seed, NonFiniteOutputs), job, seed)


def non_finite_model(what: str, fix: str, error: type[CheckpointError] = CheckpointError) -> Callable[[str], CheckpointError]:
    """The one-line refusal of a model given to the audit whose outputs hold NaN/Inf (exit 2, no report written)."""
    return lambda where: error(f"{what} gives NaN/Inf outputs on {where}, so the audit cannot measure it "
                               f"(no report was written); {fix}")


def gaps(unlearned_metrics: dict[str, Any], reference_metrics: dict[str, Any], task: str = "classification") -> dict[str, Optional[float]]:
    """Per-metric gaps (absolute, or relative where the registry says so; fractions) and the task's avg_gap (points)."""
    return M.gaps(unlearned_metrics, reference_metrics, task)


def distances(a: ModelOutputs, b: ModelOutputs, probabilistic: bool = True) -> dict[str, dict[str, Optional[float]]]:
    """Activation distance (and, for probability outputs, JS divergence) between two models' output rows, per set."""
    out = {"activation_distance": {k: M.activation_distance(a[k].rows, b[k].rows) for k in SETS}}
    if probabilistic:
        out["js_divergence"] = {k: M.js_divergence(a[k].rows, b[k].rows) for k in SETS}
    return _clean(out)


def heldout_statistics(out: ModelOutputs, job: Job, seed: int) -> dict[str, Any]:
    """Is the forget set distinguishable from never-seen data (the test split; range unlearning: its samples in the range)?"""
    held = job.task.heldout(job.forget_info, out["test"])
    stats = distinguishability(out["forget"], held, seed)
    stats["heldout"] = "test" if len(held) == len(out["test"]) else "range"
    return stats


# ---------------------------------------------------------------- warnings

def _mae_gap_warning(forget_mae: float, base: float, base_text: str, under: str, over: str) -> list[str]:
    """The forget MAE's relative gap to `base` (the reference's, or the held-out MAE) beyond MAE_TOLERANCE, as a finding."""
    d = (forget_mae - base) / base
    if d < -MAE_TOLERANCE:
        return [f"under-unlearning: forget MAE {forget_mae:.4g} is {100 * -d:.0f}% below {base_text}; {under}"]
    if d > MAE_TOLERANCE:
        return [f"over-unlearning: forget MAE {forget_mae:.4g} is {100 * d:.0f}% above {base_text}; {over}"]
    return []


def regression_warnings(unl: dict[str, Any], orig: dict[str, Any], ref: Optional[dict[str, Any]], scenario: str) -> list[str]:
    """Regression's two-sided findings: relative MAE tolerances instead of accuracy points (docs/audit.md)."""
    w: list[str] = []
    fm = finite(unl.get("forget_mae"))
    if ref is not None:
        rm = finite(ref.get("forget_mae"))
        if fm is not None and rm:
            w += _mae_gap_warning(fm, rm, f"the reference's {rm:.4g}", "the forget set is still fitted",
                                  "the deletion itself is detectable (Streisand effect)")
        u, r = finite(unl.get("mia_error_efficacy")), finite(ref.get("mia_error_efficacy"))
        if u is not None and r is not None:
            if u - r < -MIA_TOLERANCE:
                w.append(f"under-unlearning: MIA-Efficacy {100 * u:.1f}% is {100 * (r - u):.1f} points below the reference's {100 * r:.1f}%; the attack still calls the forget set members")
            elif u - r > MIA_TOLERANCE:
                w.append(f"over-unlearning: MIA-Efficacy {100 * u:.1f}% is {100 * (u - r):.1f} points above the reference's {100 * r:.1f}%; the forget set looks less like training data than a retrained model's (Streisand effect)")
        losses = (unl.get("mean_loss") or {}).get("forget"), (ref.get("mean_loss") or {}).get("forget")
        if unl.get("mia_loss_auc") is not None and ref.get("mia_loss_auc") is not None and None not in losses:
            if unl["mia_loss_auc"] - ref["mia_loss_auc"] > LOSS_AUC_TOLERANCE:
                side = "under" if losses[0] < losses[1] else "over"
                w.append(f"{side}-unlearning: the loss attack separates forget from held-out data better than on the reference (AUC {unl['mia_loss_auc']:.3f} vs {ref['mia_loss_auc']:.3f})")
    else:
        held_key = "test_forgotten_mae" if scenario == "range" and finite(unl.get("test_forgotten_mae")) is not None else "test_mae"
        hm = finite(unl.get(held_key))
        where = "unseen test samples of the range" if held_key == "test_forgotten_mae" else "test data"
        if fm is not None and hm:
            w += _mae_gap_warning(fm, hm, f"the MAE on {where} ({hm:.4g})",
                                  "forgotten samples are still fitted better than unseen ones (no reference given)",
                                  "forgotten samples look worse than unseen ones, a detectable deletion (no reference given)")
        if unl.get("mia_loss_auc") is not None and unl["mia_loss_auc"] > 0.5 + LOSS_AUC_TOLERANCE and fm is not None and hm is not None:
            side = "under" if fm < hm else "over"
            w.append(f"{side}-unlearning: the loss attack tells forget from held-out data apart (AUC {unl['mia_loss_auc']:.3f}; 0.5 is indistinguishable)")
    key = "test_remaining_mae" if scenario == "range" else "test_mae"
    a, b = finite(orig.get(key)), finite(unl.get(key))
    if a and b is not None and (b - a) / a > UTILITY_RISE:
        w.append(f"utility: {key} rose {100 * (b - a) / a:.1f}% from the original ({a:.4g} -> {b:.4g})")
    return w


def audit_warnings(unl: dict[str, Any], orig: dict[str, Any], ref: Optional[dict[str, Any]], scenario: str,
                   task: str = "classification") -> list[str]:
    """Two-sided findings: under-unlearning (still recognised) and over-unlearning (a detectable deletion)."""
    if task == "regression":
        return regression_warnings(unl, orig, ref, scenario)
    w: list[str] = []

    def pts(x: float) -> str:
        return f"{100 * x:.1f} points"

    def pct(x: float) -> str:  # shares in percent, as the terminal and the report show them, next to their gap in points
        return f"{100 * x:.1f}%"

    fa, ta = unl.get("forget_acc"), unl.get("test_acc")
    if ref is not None:
        d = fa - ref["forget_acc"]
        if d > ACC_TOLERANCE:
            w.append(f"under-unlearning: forget accuracy {pct(fa)} is {pts(d)} above the reference's {pct(ref['forget_acc'])}; the forget set is still recognised")
        elif d < -ACC_TOLERANCE:
            w.append(f"over-unlearning: forget accuracy {pct(fa)} is {pts(-d)} below the reference's {pct(ref['forget_acc'])}; the deletion itself is detectable (Streisand effect)")
        d = unl["mia_efficacy"] - ref["mia_efficacy"]
        if d < -MIA_TOLERANCE:
            w.append(f"under-unlearning: MIA-Efficacy {pct(unl['mia_efficacy'])} is {pts(-d)} below the reference's {pct(ref['mia_efficacy'])}; the attack still calls the forget set members")
        elif d > MIA_TOLERANCE:
            w.append(f"over-unlearning: MIA-Efficacy {pct(unl['mia_efficacy'])} is {pts(d)} above the reference's {pct(ref['mia_efficacy'])}; the forget set looks less like training data than a retrained model's (Streisand effect)")
        losses = (unl.get("mean_loss") or {}).get("forget"), (ref.get("mean_loss") or {}).get("forget")
        if unl.get("mia_loss_auc") is not None and ref.get("mia_loss_auc") is not None and None not in losses:
            d = unl["mia_loss_auc"] - ref["mia_loss_auc"]
            if d > LOSS_AUC_TOLERANCE:
                side = "under" if losses[0] < losses[1] else "over"
                w.append(f"{side}-unlearning: the loss attack separates forget from test data better than on the reference (AUC {unl['mia_loss_auc']:.3f} vs {ref['mia_loss_auc']:.3f})")
    elif scenario == "sample":
        d = fa - ta
        if d > ACC_TOLERANCE:
            w.append(f"under-unlearning: forget accuracy {pct(fa)} is {pts(d)} above test accuracy {pct(ta)}; forgotten samples are still fitted better than unseen data (no reference given)")
        elif d < -ACC_TOLERANCE:
            w.append(f"over-unlearning: forget accuracy {pct(fa)} is {pts(-d)} below test accuracy {pct(ta)}; forgotten samples look worse than unseen data, a detectable deletion (Streisand effect; no reference given)")
        ml = unl.get("mean_loss") or {}
        if unl.get("mia_loss_auc") is not None and unl["mia_loss_auc"] > 0.5 + LOSS_AUC_TOLERANCE and "forget" in ml and "test" in ml:
            side = "under" if ml["forget"] < ml["test"] else "over"
            w.append(f"{side}-unlearning: the loss attack tells forget from test data apart (AUC {unl['mia_loss_auc']:.3f}; 0.5 is indistinguishable)")
    else:
        if fa > ACC_TOLERANCE:
            w.append(f"under-unlearning: forget accuracy {pct(fa)} is above {pct(ACC_TOLERANCE)}; a model that never saw the class scores 0 (no reference given)")
    key = "test_remaining_acc" if scenario == "class" else "test_acc"
    if orig.get(key) is not None and unl.get(key) is not None and orig[key] - unl[key] > UTILITY_DROP:
        w.append(f"utility: {key} fell {pts(orig[key] - unl[key])} from the original ({pct(orig[key])} -> {pct(unl[key])})")
    return w


# ---------------------------------------------------------------- loading

def load_unlearned(path: str | Path, job: Job) -> tuple[nn.Module, dict[str, Any]]:
    """The unlearned model (a merged checkpoint, or the original + a PEFT adapter) and its provenance."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"unlearned model {path} not found; give the output of `unlearn apply` (a .safetensors file or adapter folder)")
    return job.load_artifact(path)


def load_checkpoint(path: str | Path, job: Job) -> tuple[nn.Module, dict[str, Any]]:
    """A checkpoint of the job's architecture (a retrained reference, or a merged unlearned model) and its provenance."""
    from ..exact import is_exact_folder

    if is_exact_folder(path):  # otherwise read as a save_pretrained folder: "a folder without config.json"
        raise CheckpointError(f"reference {path} is an exact artifact; a reference must be a checkpoint: train one with "
                              "unlearn train -r R -o REF.safetensors --exclude-forget")
    artifact = CheckpointArtifact(path)
    model = artifact.load(job.load_context())
    info = artifact.info()
    info.pop("kind", None)
    return model, info


# ---------------------------------------------------------------- the audit

def run_audit(
    job: Job,
    original_model: nn.Module,
    unlearned_model: nn.Module,
    reference_model: Optional[nn.Module] = None,
    gates: Sequence[str | Gate] = (),
    unlearned_info: Optional[dict[str, Any]] = None,
    reference_info: Optional[dict[str, Any]] = None,
    seed: Optional[int] = None,
    tier: str = "standard",
    shadows: int = 16,
    progress: Optional[Any] = None,
    ledger: Optional[Path] = None,
) -> dict[str, Any]:
    """Audit an unlearned model against the original (and a retrained reference): the report.json dict.

    Gates are parsed first, so a bad gate fails before any computation. The verdict is in
    the report; call `check_verdict` (after writing reports) to turn a failure into exit 3.
    """
    started, t0 = created_utc(), time.perf_counter()
    seed = job.seed if seed is None else seed
    scenario = job.splits.scenario
    task = job.task
    parsed = [g for g in gates if isinstance(g, Gate)] + parse_gates([g for g in gates if not isinstance(g, Gate)], scenario,
                                                                     reference_model is not None, task.name)
    unlearned_info = unlearned_info or {"path": None, "kind": "merged", "sha256": None, "metadata": {}}

    rand = random_forget_rows(job, seed) if task.probabilistic else None
    outs = {"original": finite_outputs(original_model, job, seed, non_finite_model(
                f"the original {job.checkpoint_path or ''}".rstrip(), FINITE_OUTPUTS_FIX)),
            "unlearned": finite_outputs(unlearned_model, job, seed, non_finite_model(
                f"the unlearned model {unlearned_info.get('path') or ''}".rstrip(),
                "its unlearning diverged; unlearn again with a lower learning rate (--param lr=...)", UnmeasurableResult))}
    if reference_model is not None:
        outs["reference"] = finite_outputs(reference_model, job, seed, non_finite_model(
            f"the reference {(reference_info or {}).get('path') or ''}".rstrip(),
            "its training diverged; retrain it (unlearn train --exclude-forget) with a lower --lr"))
    models: dict[str, Any] = {k: metrics_from_outputs(v, job, seed, rand) for k, v in outs.items()}
    baseline = "reference" if reference_model is not None else "original"
    for k in outs:
        models[k].update(distances(outs[k], outs[baseline], task.probabilistic) if k != baseline else
                         {"activation_distance": None, **({"js_divergence": None} if task.probabilistic else {})})
    models.setdefault("reference", None)

    from .relapse import relapse_check

    lineage = relapse_check(job, unlearned_model, (unlearned_info or {}).get("metadata") or {}, ledger, seed)
    if lineage is not None:
        models["unlearned"]["relapse_max"] = lineage["relapse_max"]
    gap = {"baseline": baseline, **gaps(models["unlearned"], models[baseline], task.name)}
    gate_rows, _ = evaluate_gates(parsed, models["unlearned"], models["original"], gap)
    stats = {k: heldout_statistics(v, job, seed) for k, v in outs.items()}
    avg_gaps = {"unlearned": gap.get("avg_gap"),
                "original": gaps(models["original"], models["reference"], task.name).get("avg_gap") if models["reference"] is not None else None}
    strong = None
    if tier == "strong":
        from .strong import strong_tier

        strong = strong_tier(job, unlearned_model, reference_model, unlearned_info.get("metadata") or {}, shadows, progress)
    detail = decide(scenario, models, gate_rows, stats["unlearned"], avg_gaps, stats["original"], strong, task.name, stats.get("reference"))
    detail["statistics"] = stats
    if unlearned_info.get("exact_not_deleted"):
        from .verdict import exact_log_check

        exact_log_check(detail, unlearned_info["exact_not_deleted"], len(job.splits.forget_idx))
    warnings = []
    if unlearned_info.get("kind") == "adapter":
        warnings.append(ADAPTER_AUDIT_WARNING)
    warnings += [str(n) for n in unlearned_info.get("notes") or []]  # what the artifact states of itself (an exact guarantee)
    warnings += audit_warnings(models["unlearned"], models["original"], models["reference"], scenario, task.name)
    if not job.splits.train.labelled:
        warnings.append("the train split has no labels: retain/forget figures and the attacks use the original model's "
                        "predictions as labels (agreement, not accuracy); test figures use the test split's own labels")
    if lineage is not None:
        if lineage["problem"]:
            warnings.append(f"lineage: {lineage['problem']}")
        for k in lineage["relapsed"]:
            warnings.append(f"relapse: the deletion of lineage step {k} became visible again (its forget accuracy rose more than "
                            f"{lineage['tolerance']:.2f} since it was made)")
    ref_sha = (reference_info or {}).get("sha256")
    same = [name for name, sha in (("original", job.checkpoint_sha256), ("unlearned", unlearned_info.get("sha256"))) if ref_sha and sha == ref_sha]
    if same:  # every gap is then measured against the wrong model: a retrained reference never saw the forget set
        warnings.append(f"the reference is the {same[0]} model itself (same sha256), not a model retrained without the forget set: "
                        "its gaps mean nothing; give a retrained reference (unlearn train --exclude-forget)")
    meta = unlearned_info.get("metadata") or {}
    parent = meta.get("parent_sha256")
    if parent and job.checkpoint_sha256 and parent != job.checkpoint_sha256:
        warnings.append(f"the unlearned checkpoint names parent sha256 {str(parent)[:12]}..., not the given original's {job.checkpoint_sha256[:12]}...")
    req = job.request
    report = {
        "schema": SCHEMA,
        "tier": tier,
        "strong": strong,
        "lineage": lineage,
        "verdict": detail["verdict"],
        "verdict_detail": detail,
        "gates": gate_rows,
        "warnings": warnings,
        "request": {
            "id": req.id, "path": str(req.path) if req.path else None, "task": job.task.name, "scenario": scenario,
            "forget_classes": list(job.splits.forget_classes), "num_classes": job.num_classes,
            "target_range": list(job.splits.target_range) if job.splits.target_range is not None else None,
            "forget_size": len(job.splits.forget_idx), "retain_size": len(job.splits.retain_idx), "test_size": len(job.splits.test),
        },
        "baseline": baseline,
        "models": models,
        "gaps": gap,
        "unlearning": {
            "method": meta.get("method"),
            "params": meta.get("params"),
            "wall_time_s": _maybe_float(meta.get("wall_time_s")),
            "metadata": meta,
        },
        "provenance": {
            "inputs": {
                "request": str(req.path) if req.path else None,
                "original": str(job.checkpoint_path) if job.checkpoint_path else None,
                "unlearned": unlearned_info.get("path"),
                "unlearned_kind": unlearned_info.get("kind"),
                "reference": (reference_info or {}).get("path"),
            },
            "sha256": {
                "request": req.sha256 or None,
                "original": job.checkpoint_sha256 or None,
                "unlearned": unlearned_info.get("sha256"),
                "reference": (reference_info or {}).get("sha256"),
            },
            "versions": versions(),
            "device": str(job.device),
            "seed": seed,
            "started_utc": started,
            "finished_utc": created_utc(),
            "audit_time_s": round(time.perf_counter() - t0, 4),
        },
        "protocol": {
            "max_attack_samples_per_side": attacks.MAX_PER_SIDE,
            "max_distance_samples_per_set": MAX_DISTANCE_SAMPLES,
            "mia_loss_splits": attacks.LOSS_SPLITS,
            "mia_loss_test_size": attacks.LOSS_TEST_SIZE,
            "thresholds": {"accuracy": ACC_TOLERANCE, "mia": MIA_TOLERANCE, "loss_auc": LOSS_AUC_TOLERANCE, "utility_drop": UTILITY_DROP,
                           **({"mae_relative": MAE_TOLERANCE, "utility_rise": UTILITY_RISE} if task.name == "regression" else {})},
        },
    }
    return _clean(report)


def check_verdict(report: dict[str, Any], where: str = "") -> None:
    """Raise GateFailure (exit 3) when the verdict is fail (gates, or the default policy); call after writing the reports."""
    if report.get("verdict") != "fail":
        return
    detail = report.get("verdict_detail") or {}
    unlogged = next((c for c in detail.get("checks", []) if c["name"] == "request in the exact deletion log" and not c["passed"]), None)
    if unlogged is not None:
        raise GateFailure(f"audit verdict fail: {unlogged['value']} by this exact artifact (not in its deletion log); apply the "
                          f"request to it first; see {where or 'the report'}")
    if report["gates"]:
        failed = [g for g in report["gates"] if not g["passed"]]
        shown = "; ".join(f"{g['expr']} (value {_fmt(g['value'])})" for g in failed[:3])
        more = f"; +{len(failed) - 3} more" if len(failed) > 3 else ""
        raise GateFailure(f"audit gate failed: {shown}{more}; see {where or 'the report'} for the figures")
    failed_checks = [c for c in detail.get("checks", []) if not c["passed"]]
    shown = "; ".join(f"{c['name']}: {c['value']}" for c in failed_checks[:2])
    raise GateFailure(f"audit verdict fail (default policy): {shown}; see {where or 'the report'}, or give --gate to set your own criteria")


def _fmt(v: Any) -> str:
    return "undefined" if v is None else f"{v:.4g}"


def _maybe_float(v: Any) -> Optional[float]:
    return finite(v)


def _clean(obj: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to None, recursively."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if np.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
