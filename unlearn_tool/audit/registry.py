"""The one list of metrics: name, label, unit, direction, tasks, scenarios, and where each is used.

Report tables, gate names, bench columns, JSON keys and the docs' metric list all derive
from `METRICS`; adding a metric is one `Metric(...)` row here plus the code that computes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Optional

Unit = Literal["fraction", "points", "seconds", "ratio", "distance"]
Kind = Literal["model", "distance", "drop", "gap", "run", "lineage"]
SETS = ("forget", "retain", "test")


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # short, for table headers and plots
    description: str  # one sentence: what it measures and how to read it
    unit: Unit
    better: Literal["higher", "lower", "reference"]  # "reference": closest to the retrained model is best
    kind: Kind = "model"
    tasks: tuple[str, ...] = ("classification",)
    scenarios: tuple[str, ...] = ("class", "sample")
    in_avg_gap: bool = False
    bench_column: Optional[str] = None  # header in bench tables (None: not a bench column)
    digits: Optional[int] = None  # decimals in tables (default by unit)

    def applies(self, task: str, scenario: Optional[str] = None) -> bool:
        return task in self.tasks and (scenario is None or scenario in self.scenarios)


_MODEL = [
    Metric("retain_acc", "RA: retain accuracy", "accuracy on the retained training data (utility on what was kept)", "fraction", "higher",
           in_avg_gap=True, bench_column="RA %"),
    Metric("forget_acc", "forget accuracy", "accuracy on the forget set: 0 for a forgotten class; for samples, a retrained "
           "model scores about its test accuracy", "fraction", "reference"),
    Metric("ua", "UA = 1 - forget accuracy", "unlearning accuracy, 1 - forget accuracy (SalUn)", "fraction", "reference", in_avg_gap=True,
           bench_column="UA %"),
    Metric("test_acc", "TA: test accuracy", "accuracy on held-out test data (for class unlearning it includes the forgotten classes)",
           "fraction", "higher", in_avg_gap=True, bench_column="TA %"),
    Metric("test_remaining_acc", "test accuracy, remaining classes", "test accuracy on the classes that were not forgotten (utility)",
           "fraction", "higher", scenarios=("class",), bench_column="TA remaining %"),
    Metric("test_forgotten_acc", "test accuracy, forgotten classes", "test accuracy on the forgotten classes: a model that never saw them scores 0",
           "fraction", "lower", scenarios=("class",), bench_column="TA forgotten %"),
    Metric("mia_efficacy", "MIA-Efficacy (SVC on p_y; share non-member)", "share of the forget set an SVC on true-class confidence calls non-member "
           "(SalUn); compare with the retrained model's value", "fraction", "reference", in_avg_gap=True,
           bench_column="MIA-Efficacy %"),
    Metric("mia_entropy", "entropy MIA (share member)", "share of the forget set a logistic regression on prediction entropy calls "
           "member (SSD / Bad Teacher); lower means more forgetting", "fraction", "reference"),
    Metric("mia_loss_acc", "loss MIA accuracy (0.5 = chance)", "cross-validated accuracy of a logistic regression telling forget from test "
           "losses (SCRUB); 0.5 is indistinguishable", "fraction", "reference"),
    Metric("mia_loss_auc", "loss MIA AUC (0.5 = chance)", "ROC AUC of the same loss attack; 0.5 is indistinguishable", "ratio", "reference",
           bench_column="loss AUC"),
    Metric("zrf", "ZRF (1 = like a random model)", "1 - mean JS divergence to a randomly initialised model on the forget set (Bad Teacher); "
           "1 answers like a random model", "fraction", "reference"),
]

_DISTANCES = [
    Metric(f"{kind}_{part}", f"{label} {part}", f"{text} on the {part} set, against the baseline model", "distance", "lower",
           kind="distance")
    for kind, label, text in (("activation_distance", "act. dist.", "mean L2 distance between softmax outputs"),
                              ("js_divergence", "JS", "mean Jensen-Shannon divergence between softmax outputs"))
    for part in SETS
]

_DROPS = [
    Metric(f"{m}_drop", f"{m} drop", f"original {m} minus unlearned {m} (fraction; positive is a loss)", "fraction", "lower",
           kind="drop", scenarios=("class",) if m == "test_remaining_acc" else ("class", "sample"))
    for m in ("test_acc", "retain_acc", "test_remaining_acc")
]

_RUN = [
    Metric("avg_gap", "Avg Gap", "SalUn's Avg Gap: mean |gap| to the baseline over UA, MIA-Efficacy, RA and TA, in points",
           "points", "lower", kind="gap", bench_column="Avg Gap"),
    Metric("wall_time_s", "wall s", "the method's own wall time (run_method), seconds", "seconds", "lower", kind="run",
           bench_column="wall s"),
    Metric("time_fraction", "time / retrain", "the method's wall time as a fraction of retraining's", "fraction", "lower",
           kind="run", bench_column="time / retrain %", digits=1),
    Metric("train_time_s", "train s", "exact rows (s3t, sisa): the one-off training of the artifact, seconds; their wall time "
           "is the deletion latency", "seconds", "lower", kind="run", bench_column="train s"),
]

_LINEAGE = [
    Metric("relapse_max", "relapse", "largest rise of an earlier deletion's forget accuracy since it was made (lineage; "
           "above 0.05 it relapsed)", "fraction", "lower", kind="lineage"),
]

METRICS: dict[str, Metric] = {m.name: m for m in _MODEL + _DISTANCES + _DROPS + _RUN + _LINEAGE}


# ---------------------------------------------------------------- derived lists

def model_metrics(task: str = "classification", scenario: Optional[str] = None) -> list[Metric]:
    """Per-model scalar metrics (report.json models.* keys), in table order."""
    return [m for m in METRICS.values() if m.kind == "model" and m.applies(task, scenario)]


def model_metric_names(task: str = "classification", scenario: Optional[str] = None) -> tuple[str, ...]:
    return tuple(m.name for m in model_metrics(task, scenario))


def avg_gap_names(task: str = "classification") -> tuple[str, ...]:
    return tuple(m.name for m in model_metrics(task) if m.in_avg_gap)


def gap_name(metric: str) -> str:
    return f"{metric}_gap"


def gate_names(task: str = "classification") -> tuple[str, ...]:
    """Every name a gate may compare: model metrics, distances, drops from the original, gaps and avg_gap."""
    names = [m.name for m in METRICS.values() if m.kind in ("model", "distance", "drop", "lineage") and m.applies(task)]
    names += [gap_name(m.name) for m in model_metrics(task)]
    return tuple(names) + ("avg_gap",)


def gate_metric(name: str) -> Optional[Metric]:
    """The registry entry behind a gate name (a `_gap` name maps to its model metric)."""
    if name in METRICS:
        return METRICS[name]
    if name.endswith("_gap") and name[: -len("_gap")] in METRICS:
        return METRICS[name[: -len("_gap")]]
    return None


def bench_columns(task: str = "classification", scenario: Optional[str] = None) -> list[Metric]:
    return [m for m in METRICS.values() if m.bench_column and m.applies(task, scenario)]


def summary_keys(task: str = "classification") -> tuple[str, ...]:
    """The figures kept per bench run: every model metric, then avg_gap, wall time and time fraction."""
    return model_metric_names(task) + tuple(m.name for m in _RUN)


# ---------------------------------------------------------------- numbers

def finite(value: Any) -> Optional[float]:
    """A finite float, or None for a missing, non-numeric, NaN or infinite value (JSON stays valid)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def format_value(value: Any, unit: Unit = "fraction", digits: Optional[int] = None) -> str:
    """One number for a table: fractions as percentages, others plain; undefined as '-'."""
    f = finite(value)
    if f is None:
        return "-"
    if unit == "fraction":
        return f"{100 * f:.{2 if digits is None else digits}f}%"
    if unit in ("ratio", "distance"):
        return f"{f:.{3 if digits is None else digits}f}"
    return f"{f:.{2 if digits is None else digits}f}"


def format_metric(name: str, value: Any) -> str:
    metric = gate_metric(name)
    return format_value(value, metric.unit if metric else "ratio")


def describe(names: Iterable[str]) -> list[tuple[str, str]]:
    """(name, description) pairs, for explaining metrics where they appear."""
    return [(n, METRICS[n].description) for n in names if n in METRICS]
