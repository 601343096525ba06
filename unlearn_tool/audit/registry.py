"""The one list of metrics: name, label, unit, direction, tasks, scenarios, and where each is used.

Report tables, gate names, bench columns, JSON keys and the docs' metric list all derive
from `METRICS`; adding a metric is one `Metric(...)` row here plus the code that computes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Optional

Unit = Literal["fraction", "points", "seconds", "ratio", "distance", "target"]  # target: in the regression targets' own units
Kind = Literal["model", "distance", "drop", "rise", "gap", "run", "lineage"]
TASKS = ("classification", "regression")
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
    gap: Literal["abs", "rel"] = "abs"  # gap to the baseline: |a - b| (in the metric's unit), or |a - b| / |b| (a fraction)

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
           "losses (SCRUB; regression: the squared error); 0.5 is indistinguishable", "fraction", "reference", tasks=TASKS,
           scenarios=("class", "sample", "range")),
    Metric("mia_loss_auc", "loss MIA AUC (0.5 = chance)", "ROC AUC of the same loss attack; 0.5 is indistinguishable", "ratio", "reference",
           bench_column="loss AUC", tasks=TASKS, scenarios=("class", "sample", "range")),
    Metric("zrf", "ZRF (1 = like a random model)", "1 - mean JS divergence to a randomly initialised model on the forget set (Bad Teacher); "
           "1 answers like a random model", "fraction", "reference"),
]

REG = ("regression",)
REG_SCENARIOS = ("sample", "range")

# Regression (Deep Regression Unlearning's adapted metrics): errors in the targets' units; gaps to the baseline relative.
_REGRESSION = [
    Metric("retain_mae", "retain MAE", "mean absolute error on the retained training data (utility on what was kept; lower is better)",
           "target", "lower", tasks=REG, scenarios=REG_SCENARIOS, in_avg_gap=True, bench_column="retain MAE", digits=3, gap="rel"),
    Metric("forget_mae", "forget MAE", "mean absolute error on the forget set; a retrained model errs there like on unseen data "
           "(compare with the retrained model's)", "target", "reference", tasks=REG, scenarios=REG_SCENARIOS, in_avg_gap=True,
           bench_column="forget MAE", digits=3, gap="rel"),
    Metric("test_mae", "test MAE", "mean absolute error on held-out test data (for range unlearning it includes the forgotten range)",
           "target", "lower", tasks=REG, scenarios=REG_SCENARIOS, in_avg_gap=True, bench_column="test MAE", digits=3, gap="rel"),
    Metric("test_remaining_mae", "test MAE outside the range", "range unlearning: MAE on test samples whose targets lie outside the "
           "forgotten range (utility)", "target", "lower", tasks=REG, scenarios=("range",), bench_column="test MAE kept", digits=3, gap="rel"),
    Metric("test_forgotten_mae", "test MAE inside the range", "range unlearning: MAE on test samples whose targets lie in the forgotten "
           "range; a retrained model errs more there (compare with its value)", "target", "reference", tasks=REG, scenarios=("range",),
           bench_column="test MAE in range", digits=3, gap="rel"),
    Metric("retain_rmse", "retain RMSE", "root mean squared error on the retained training data", "target", "lower", tasks=REG,
           scenarios=REG_SCENARIOS, gap="rel"),
    Metric("forget_rmse", "forget RMSE", "root mean squared error on the forget set (compare with the retrained model's)", "target",
           "reference", tasks=REG, scenarios=REG_SCENARIOS, gap="rel"),
    Metric("test_rmse", "test RMSE", "root mean squared error on held-out test data", "target", "lower", tasks=REG, scenarios=REG_SCENARIOS,
           gap="rel"),
    Metric("retain_r2", "retain R²", "coefficient of determination on the retained training data (1 is perfect, 0 predicts the mean)",
           "ratio", "higher", tasks=REG, scenarios=REG_SCENARIOS),
    Metric("forget_r2", "forget R²", "coefficient of determination on the forget set (compare with the retrained model's; small or narrow "
           "forget sets make it very negative)", "ratio", "reference", tasks=REG, scenarios=REG_SCENARIOS),
    Metric("test_r2", "test R²", "coefficient of determination on held-out test data", "ratio", "higher", tasks=REG,
           scenarios=REG_SCENARIOS, bench_column="test R²"),
    Metric("mia_error_efficacy", "MIA-Efficacy (SVC on log |error|; share non-member)", "share of the forget set an SVC on the log "
           "absolute error calls non-member (SalUn's protocol on DRU's error feature); compare with the retrained model's value",
           "fraction", "reference", tasks=REG, scenarios=REG_SCENARIOS, in_avg_gap=True, bench_column="MIA-Efficacy %"),
]

_DISTANCES = [
    Metric(f"{kind}_{part}", f"{label} {part}", f"{text} on the {part} set, against the baseline model", "distance", "lower",
           kind="distance", tasks=tasks, scenarios=("class", "sample", "range"))
    for kind, label, text, tasks in (("activation_distance", "act. dist.", "mean L2 distance between the models' outputs (classification: "
                                      "softmax probabilities; regression: the raw outputs, in target units)", TASKS),
                                     ("js_divergence", "JS", "mean Jensen-Shannon divergence between softmax outputs", ("classification",)))
    for part in SETS
]

_DROPS = [
    Metric(f"{m}_drop", f"{m} drop", f"original {m} minus unlearned {m} (fraction; positive is a loss)", "fraction", "lower",
           kind="drop", scenarios=("class",) if m == "test_remaining_acc" else ("class", "sample"))
    for m in ("test_acc", "retain_acc", "test_remaining_acc")
] + [
    Metric(f"{m}_rise", f"{m} rise", f"(unlearned {m} - original {m}) / original {m}: the error's relative rise (fraction; positive is a loss)",
           "fraction", "lower", kind="rise", tasks=REG, scenarios=("range",) if m == "test_remaining_mae" else REG_SCENARIOS)
    for m in ("test_mae", "retain_mae", "test_remaining_mae")
]

_RUN = [
    Metric("avg_gap", "Avg Gap", "SalUn's Avg Gap: mean |gap| to the baseline over UA, MIA-Efficacy, RA and TA, in points "
           "(regression: over the relative gaps of retain, forget and test MAE and the gap of MIA-Efficacy)",
           "points", "lower", kind="gap", bench_column="Avg Gap", tasks=TASKS, scenarios=("class", "sample", "range")),
    Metric("wall_time_s", "wall s", "the method's own wall time (run_method), seconds", "seconds", "lower", kind="run",
           bench_column="wall s", tasks=TASKS, scenarios=("class", "sample", "range")),
    Metric("time_fraction", "time / retrain", "the method's wall time as a fraction of retraining's", "fraction", "lower",
           kind="run", bench_column="time / retrain %", digits=1, tasks=TASKS, scenarios=("class", "sample", "range")),
    Metric("train_time_s", "train s", "exact rows (s3t, sisa): the one-off training of the artifact, seconds; their wall time "
           "is the deletion latency", "seconds", "lower", kind="run", bench_column="train s"),
]

_LINEAGE = [
    Metric("relapse_max", "relapse", "largest rise of an earlier deletion's forget accuracy since it was made (lineage; "
           "above 0.05 it relapsed)", "fraction", "lower", kind="lineage"),
]

_FIRST_SHARED = next(i for i, m in enumerate(_MODEL) if "regression" in m.tasks)  # the regression figures go before the shared attacks
METRICS: dict[str, Metric] = {m.name: m for m in _MODEL[:_FIRST_SHARED] + _REGRESSION + _MODEL[_FIRST_SHARED:]
                              + _DISTANCES + _DROPS + _RUN + _LINEAGE}


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


def gate_names(task: Optional[str] = "classification") -> tuple[str, ...]:
    """Every name a gate may compare: model metrics, distances, drops (rises) from the original, gaps and avg_gap.
    task=None: the names of every task."""
    if task is None:
        return tuple(dict.fromkeys(n for t in TASKS for n in gate_names(t)))
    names = [m.name for m in METRICS.values() if m.kind in ("model", "distance", "drop", "rise", "lineage") and m.applies(task)]
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


def metric_gap(name: str, value: Any, baseline: Any) -> Optional[float]:
    """The gap of one metric to the baseline, as the registry defines it: |a - b|, or |a - b| / |b| for a relative gap."""
    a, b = finite(value), finite(baseline)
    if a is None or b is None:
        return None
    metric = METRICS.get(name)
    if metric is not None and metric.gap == "rel":
        return abs(a - b) / abs(b) if b != 0 else None
    return abs(a - b)


def format_gap(name: str, value: Any) -> str:
    """A gap for a table: a relative gap as a percentage, otherwise in the metric's unit."""
    metric = METRICS.get(name)
    return format_value(value, "fraction" if metric is not None and metric.gap == "rel" else (metric.unit if metric else "ratio"))


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
    if unit == "target":
        return f"{f:.4g}" if digits is None else f"{f:.{digits}f}"
    return f"{f:.{2 if digits is None else digits}f}"


def format_metric(name: str, value: Any) -> str:
    metric = gate_metric(name)
    return format_value(value, metric.unit if metric else "ratio")


def describe(names: Iterable[str]) -> list[tuple[str, str]]:
    """(name, description) pairs, for explaining metrics where they appear."""
    return [(n, METRICS[n].description) for n in names if n in METRICS]
