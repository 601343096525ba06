"""Population membership-inference attacks, each exactly as its family defines it (docs/audit.md).

Inputs are per-sample scalar features (numpy arrays) already computed from model
outputs; every random choice comes from the seed, so the same inputs give the
same figures. Attack training sets are bounded by a seeded sample where the
definition allows it (MAX_PER_SIDE per side).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

MAX_PER_SIDE = 5000
LOSS_SPLITS = 5
LOSS_TEST_SIZE = 0.2
MIN_LOSS_SAMPLES = 5  # per side: fewer and a 5-split stratified CV is meaningless


def bounded(values: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """At most k values, a seeded sample without replacement (order kept)."""
    values = np.asarray(values)
    if len(values) <= k:
        return values
    idx = np.sort(rng.choice(len(values), size=k, replace=False))
    return values[idx]


def mia_efficacy(conf_retain: np.ndarray, conf_test: np.ndarray, conf_forget: np.ndarray,
                 seed: int = 0, max_per_side: int = MAX_PER_SIDE) -> float:
    """SalUn / Unlearn-Sparse MIA-Efficacy: share of the forget set an SVC on p_y calls non-member.

    Shadow training set: the first |test| retain samples (members, 1) against the
    test set (non-members, 0); SVC(C=3, gamma='auto', kernel='rbf') on the scalar
    true-class confidence. A test set larger than max_per_side is sampled (seeded).
    """
    from sklearn.svm import SVC

    rng = np.random.default_rng(seed)
    test = bounded(conf_test, max_per_side, rng)
    members = np.asarray(conf_retain)[: len(test)]
    x = np.concatenate([members, test]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(members)), np.zeros(len(test))])
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(x, y)
    pred = clf.predict(np.asarray(conf_forget).reshape(-1, 1))
    return float((pred == 0).mean())


def mia_entropy(ent_retain: np.ndarray, ent_test: np.ndarray, ent_forget: np.ndarray,
                seed: int = 0, max_per_side: int = MAX_PER_SIDE) -> float:
    """SSD / Bad Teacher entropy attack: share of the forget set predicted member.

    LogisticRegression(class_weight='balanced') on prediction entropy, retain (1)
    against test (0); each side sampled to at most max_per_side (seeded).
    Lower means more forgetting; compare with the reference's value.
    """
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed + 1)
    r = bounded(ent_retain, max_per_side, rng)
    t = bounded(ent_test, max_per_side, rng)
    x = np.concatenate([r, t]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(r)), np.zeros(len(t))])
    clf = LogisticRegression(class_weight="balanced")
    clf.fit(x, y)
    return float(clf.predict(np.asarray(ent_forget).reshape(-1, 1)).mean())


def mia_loss(loss_forget: np.ndarray, loss_test: np.ndarray, seed: int = 0,
             max_per_side: int = MAX_PER_SIDE, n_splits: int = LOSS_SPLITS) -> tuple[Optional[float], Optional[float]]:
    """SCRUB loss attack: can a classifier tell forget losses from held-out losses?

    Both sides are sampled (seeded) to n = min(|forget|, |test|, max_per_side);
    LogisticRegression on the per-sample CE loss (standardised on each training
    fold, which changes no ranking but keeps the solver fast on large raw losses),
    forget = 1, test = 0, scored by StratifiedShuffleSplit(n_splits, test_size=0.2)
    cross-validation.
    Returns (mean accuracy, mean ROC AUC); 0.5 each means indistinguishable.
    (None, None) when a side has fewer than MIN_LOSS_SAMPLES samples.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedShuffleSplit
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed + 2)
    n = min(len(loss_forget), len(loss_test), max_per_side)
    if n < MIN_LOSS_SAMPLES:
        return None, None
    f = bounded(loss_forget, n, rng)
    t = bounded(loss_test, n, rng)
    x = np.concatenate([f, t]).reshape(-1, 1)
    y = np.concatenate([np.ones(n), np.zeros(n)])
    cv = StratifiedShuffleSplit(n_splits=n_splits, test_size=LOSS_TEST_SIZE, random_state=seed % (2**32))
    accs, aucs = [], []
    for train_idx, test_idx in cv.split(x, y):
        clf = make_pipeline(StandardScaler(), LogisticRegression())
        clf.fit(x[train_idx], y[train_idx])
        accs.append(float((clf.predict(x[test_idx]) == y[test_idx]).mean()))
        aucs.append(float(roc_auc_score(y[test_idx], clf.predict_proba(x[test_idx])[:, 1])))
    return float(np.mean(accs)), float(np.mean(aucs))
