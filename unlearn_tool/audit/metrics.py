"""Pure metric functions on numpy arrays (no torch, no models): the definitions docs/audit.md states.

Probabilities are rows of a (N, C) array that sum to 1; logs are natural logs.
Every function that averages returns NaN for an empty input, never raises.
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from .registry import avg_gap_names, finite, metric_gap, model_metric_names

EPS = 1e-12

# The four figures SalUn averages into Avg Gap: UA, MIA-Efficacy, RA, TA (registry: in_avg_gap).
AVG_GAP_METRICS = avg_gap_names()

# Metrics whose absolute gap to the baseline is reported (fractions): every per-model metric.
GAP_METRICS = model_metric_names()


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum so large logits do not overflow."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-sample CE loss  logsumexp(z) - z_y  (exact even where softmax underflows)."""
    z = np.asarray(logits, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    return lse - z[np.arange(len(y)), np.asarray(y, dtype=np.int64)]


def true_class_confidence(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """p_y(x): the probability the model gives each sample's own label (SalUn's 'confidence' feature)."""
    return np.asarray(probs)[np.arange(len(y)), np.asarray(y, dtype=np.int64)]


def entropy(probs: np.ndarray) -> np.ndarray:
    """Prediction entropy H(p) = -sum_j p_j log p_j per row (0 log 0 = 0)."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=1)


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Share of correct predictions; NaN for an empty set."""
    pred, y = np.asarray(pred), np.asarray(y)
    return float((pred == y).mean()) if len(y) else float("nan")


def per_class_accuracy(pred: np.ndarray, y: np.ndarray, num_classes: int) -> list[Optional[float]]:
    """Accuracy per true class; None for a class with no sample."""
    pred, y = np.asarray(pred), np.asarray(y)
    out: list[Optional[float]] = []
    for c in range(num_classes):
        mask = y == c
        out.append(float((pred[mask] == c).mean()) if mask.any() else None)
    return out


def mae(abs_err: np.ndarray) -> float:
    """Mean absolute error from per-sample absolute errors (each the mean over a sample's outputs); NaN when empty."""
    e = np.asarray(abs_err, dtype=np.float64)
    return float(e.mean()) if len(e) else float("nan")


def rmse(sq_err: np.ndarray) -> float:
    """Root mean squared error from per-sample squared errors (each the mean over a sample's outputs); NaN when empty."""
    e = np.asarray(sq_err, dtype=np.float64)
    return float(np.sqrt(e.mean())) if len(e) else float("nan")


def r2(sq_err: np.ndarray, targets: np.ndarray) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot, pooled over the k target columns (for k = 1 the usual R^2):
    SS_res = sum of squared errors, SS_tot = sum over columns of squared deviations from the column mean.
    NaN with fewer than 2 samples or constant targets."""
    y = np.asarray(targets, dtype=np.float64)
    y = y.reshape(len(y), -1)
    if len(y) < 2:
        return float("nan")
    ss_tot = float(((y - y.mean(0)) ** 2).sum())
    if ss_tot <= 0:
        return float("nan")
    ss_res = float(np.asarray(sq_err, dtype=np.float64).sum()) * y.shape[1]
    return 1.0 - ss_res / ss_tot


def relative_gap(a: object, b: object) -> Optional[float]:
    """|a - b| / |b|: a regression error's gap to the baseline's, as a fraction of the baseline's; None when undefined."""
    x, y = finite(a), finite(b)
    if x is None or y is None or y == 0:
        return None
    return abs(x - y) / abs(y)


def activation_distance(p: np.ndarray, q: np.ndarray) -> float:
    """mean_x ||p(x) - q(x)||_2 between two models' output rows on the same samples (classification: softmax
    probabilities; regression: the raw outputs, in target units)."""
    if len(p) == 0:
        return float("nan")
    return float(np.linalg.norm(np.asarray(p, np.float64) - np.asarray(q, np.float64), axis=1).mean())


def js_per_sample(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Textbook Jensen-Shannon divergence per row, natural log: 0.5 KL(p||m) + 0.5 KL(q||m), m = (p+q)/2.

    Bounded by log 2; 0 log 0 = 0, so one-hot rows are exact.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(a > 0, a * (np.log(np.where(a > 0, a, 1.0)) - np.log(np.where(m > 0, m, 1.0))), 0.0)
        return t.sum(axis=1)

    return np.clip(0.5 * kl(p) + 0.5 * kl(q), 0.0, np.log(2.0))


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Mean over samples of the per-sample JS divergence."""
    return float(js_per_sample(p, q).mean()) if len(p) else float("nan")


def zrf(p_unlearned: np.ndarray, p_random: np.ndarray) -> float:
    """Zero Retrain Forgetting: 1 - mean JS(unlearned, randomly initialised model) on the forget set.

    1 means the unlearned model answers like an incompetent (random) model. Textbook JS,
    not the element-averaged 'mean'-reduction KL of the published code.
    """
    return 1.0 - js_divergence(p_unlearned, p_random)


def abs_gap(a: object, b: object) -> Optional[float]:
    """|a - b| for two fractions; None when either is undefined."""
    x, y = finite(a), finite(b)
    return None if x is None or y is None else abs(x - y)


def avg_gap(unlearned: Mapping[str, object], reference: Mapping[str, object], names: Optional[tuple[str, ...]] = None,
            task: str = "classification") -> Optional[float]:
    """SalUn's Avg Gap in points: mean |gap| over UA, MIA-Efficacy, RA and TA, times 100. Regression: the mean of the
    relative gaps of retain, forget and test MAE and the gap of MIA-Efficacy (log-error SVC), times 100."""
    gaps = [metric_gap(k, unlearned.get(k), reference.get(k)) for k in (names if names is not None else avg_gap_names(task))]
    if any(g is None for g in gaps):
        return None
    return 100.0 * float(np.mean(gaps))


def gaps(unlearned: Mapping[str, object], reference: Mapping[str, object], task: str = "classification") -> dict[str, Optional[float]]:
    """Gap per metric (absolute, or relative where the registry says so; fractions), plus avg_gap (points); None where a
    side is undefined."""
    out: dict[str, Optional[float]] = {k: metric_gap(k, unlearned.get(k), reference.get(k)) for k in model_metric_names(task)}
    out["avg_gap"] = avg_gap(unlearned, reference, task=task)
    return out


def loss_histogram(losses: np.ndarray, edges: np.ndarray) -> list[int]:
    """Counts of losses in fixed log10-spaced bins (values outside are clipped into the end bins)."""
    if len(losses) == 0:
        return [0] * (len(edges) - 1)
    v = np.clip(np.asarray(losses, dtype=np.float64), edges[0], edges[-1])
    counts, _ = np.histogram(v, bins=edges)
    return [int(c) for c in counts]


LOSS_EDGES = np.logspace(-6, 2, 33)  # 1e-6 .. 100, 4 bins per decade


def target_scale(targets: np.ndarray) -> float:
    """The spread of regression targets (pooled standard deviation over columns; 1 when constant): the plots' scale."""
    y = np.asarray(targets, dtype=np.float64)
    sd = float(y.std()) if y.size > 1 else 0.0
    return sd if sd > 0 and np.isfinite(sd) else 1.0


def residual_edges(scale: float) -> np.ndarray:
    """Bins of signed residuals (prediction - target): 40 equal bins over +-3 target standard deviations (ends clipped in)."""
    return np.linspace(-3.0 * scale, 3.0 * scale, 41)


def error_edges(scale: float) -> np.ndarray:
    """Bins of absolute errors: log-spaced from 1e-4 to 10 target standard deviations, 4 bins per decade (ends clipped in)."""
    return scale * np.logspace(-4, 1, 21)
