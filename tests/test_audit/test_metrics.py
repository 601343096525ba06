"""Audit metric functions on hand-computed arrays, the attacks on toy features, gates, and attacks on real models."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unlearn_tool.audit import attacks, gates as G, metrics as M
from unlearn_tool.audit.core import audit_warnings
from unlearn_tool.errors import AuditError, UnlearnError

LN2 = math.log(2)


# ---------------------------------------------------------------- pure metrics

def test_softmax_entropy_and_loss_by_hand():
    p = M.softmax(np.array([[0.0, 0.0], [1000.0, 0.0]]))
    assert np.allclose(p, [[0.5, 0.5], [1.0, 0.0]])
    assert np.allclose(M.entropy(p), [LN2, 0.0])
    assert np.allclose(M.cross_entropy(np.array([[0.0, 0.0], [1000.0, 0.0]]), np.array([0, 1])), [LN2, 1000.0])
    assert np.allclose(M.true_class_confidence(p, np.array([1, 0])), [0.5, 1.0])


def test_accuracy_and_per_class():
    pred, y = np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2])
    assert M.accuracy(pred, y) == 0.75
    assert M.per_class_accuracy(pred, y, 4) == [1.0, 1.0, 0.5, None]
    assert math.isnan(M.accuracy(np.array([]), np.array([])))


def test_activation_distance_by_hand():
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    q = np.array([[0.0, 1.0], [0.5, 0.5]])
    assert M.activation_distance(p, q) == pytest.approx(math.sqrt(2) / 2)
    assert M.activation_distance(p, p) == 0.0


def test_js_divergence_is_textbook():
    one, other, half = [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]
    assert M.js_divergence(np.array([one]), np.array([other])) == pytest.approx(LN2)
    assert M.js_divergence(np.array([one]), np.array([one])) == pytest.approx(0.0)
    # m = (0.75, 0.25): KL(p||m) = ln(4/3), KL(q||m) = 0.5 ln(4/3)  ->  JS = 0.75 ln(4/3)
    assert M.js_divergence(np.array([one]), np.array([half])) == pytest.approx(0.75 * math.log(4 / 3))
    # symmetric, and the mean over samples
    assert M.js_divergence(np.array([one, one]), np.array([other, one])) == pytest.approx(LN2 / 2)


def test_zrf_by_hand():
    p = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert M.zrf(p, p) == pytest.approx(1.0)
    assert M.zrf(p, p[::-1]) == pytest.approx(1 - LN2)  # opposite one-hot answers: the textbook minimum


def test_gaps_and_avg_gap_in_points():
    unl = {"ua": 1.0, "mia_efficacy": 0.9, "retain_acc": 0.95, "test_acc": 0.90, "forget_acc": 0.0, "zrf": None}
    ref = {"ua": 1.0, "mia_efficacy": 1.0, "retain_acc": 0.97, "test_acc": 0.92, "forget_acc": 0.0, "zrf": 0.5}
    g = M.gaps(unl, ref)
    assert g["avg_gap"] == pytest.approx(3.5)  # mean(0, 0.10, 0.02, 0.02) * 100
    assert g["mia_efficacy"] == pytest.approx(0.1)
    assert g["zrf"] is None
    assert M.avg_gap({"ua": 1.0}, ref) is None


def test_loss_histogram_clips_into_end_bins():
    counts = M.loss_histogram(np.array([0.0, 1e-3, 1e9]), M.LOSS_EDGES)
    assert sum(counts) == 3 and counts[0] == 1 and counts[-1] == 1


# ---------------------------------------------------------------- attacks on toy features

def test_entropy_attack_separable_features():
    rng = np.random.default_rng(0)
    retain, test = rng.uniform(0.0, 0.05, 200), rng.uniform(1.9, 2.1, 200)
    assert attacks.mia_entropy(retain, test, rng.uniform(0.0, 0.05, 50)) == 1.0  # looks like training data
    assert attacks.mia_entropy(retain, test, rng.uniform(1.9, 2.1, 50)) == 0.0  # looks held out


def test_mia_efficacy_separable_features():
    rng = np.random.default_rng(1)
    retain, test = rng.uniform(0.95, 1.0, 300), rng.uniform(0.2, 0.4, 100)
    assert attacks.mia_efficacy(retain, test, rng.uniform(0.95, 1.0, 40)) == 0.0  # all called members
    assert attacks.mia_efficacy(retain, test, rng.uniform(0.2, 0.4, 40)) == 1.0  # all called non-members


def test_loss_attack_separable_and_inseparable():
    rng = np.random.default_rng(2)
    acc, auc = attacks.mia_loss(rng.uniform(0.0, 0.01, 100), rng.uniform(1.0, 3.0, 300))
    assert acc == 1.0 and auc == 1.0
    acc, auc = attacks.mia_loss(rng.exponential(1.0, 500), rng.exponential(1.0, 500))
    assert abs(acc - 0.5) < 0.1 and abs(auc - 0.5) < 0.1
    assert attacks.mia_loss(np.ones(3), np.ones(100)) == (None, None)  # too few to cross-validate


def test_attacks_are_seeded():
    rng = np.random.default_rng(3)
    f, t = rng.exponential(1.0, 300), rng.exponential(1.2, 300)
    assert attacks.mia_loss(f, t, seed=5) == attacks.mia_loss(f, t, seed=5)


def test_bounded_sample_is_at_most_k():
    v = np.arange(10_000)
    out = attacks.bounded(v, 5000, np.random.default_rng(0))
    assert len(out) == 5000 and len(set(out.tolist())) == 5000


# ---------------------------------------------------------------- attacks on real models

def _fit(x, y, epochs: int, seed: int):
    import torch

    from unlearn_tool.models import MLP

    torch.manual_seed(seed)
    model = MLP(in_features=64, hidden=(256,), num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _features(model, x, y):
    import torch

    with torch.no_grad():
        logits = model(x).double().numpy()
    p = M.softmax(logits)
    yy = y.numpy()
    return M.true_class_confidence(p, yy), M.entropy(p), M.cross_entropy(logits, yy)


def test_attacks_detect_memorised_random_labels_and_not_unseen_data():
    """A model that memorised random labels gives its training points away; one that never saw them does not."""
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:500] / 16.0, dtype=torch.float32)
    y = torch.from_numpy(np.random.default_rng(0).integers(0, 10, 500))  # random labels: only memorisation fits them
    retain, forget, test = slice(0, 150), slice(150, 300), slice(300, 500)

    def rates(model):
        c, e, l = _features(model, x, y)
        eff = attacks.mia_efficacy(c[retain], c[test], c[forget])
        ent = attacks.mia_entropy(e[retain], e[test], e[forget])
        _, auc = attacks.mia_loss(l[forget], l[test])
        return eff, ent, auc

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny full-batch model: one thread is faster than two on a busy machine
    try:
        memorised = _fit(x[:300], y[:300], epochs=150, seed=0)  # saw retain and forget
        never = _fit(x[retain], y[retain], epochs=150, seed=0)  # forget set unseen, like the test set
    finally:
        torch.set_num_threads(threads)
    assert (memorised(x[:300]).argmax(1) == y[:300]).float().mean() > 0.95
    eff, ent, auc = rates(memorised)
    assert eff < 0.2 and ent > 0.8 and auc > 0.9

    eff, ent, auc = rates(never)
    assert eff > 0.8 and ent < 0.4 and auc < 0.65  # entropy attack: near its false-positive rate on test data


# ---------------------------------------------------------------- gates

def test_gate_parser_accepts_the_documented_forms():
    g = G.parse_gate("forget_acc <= 0.02")
    assert (g.metric, g.op, g.threshold) == ("forget_acc", "<=", 0.02)
    assert G.parse_gate("  avg_gap<1e0 ").threshold == 1.0
    assert G.parse_gate("mia_efficacy_gap >= .05").op == ">="
    assert G.parse_gate("zrf == 1").passes(1.0)


@pytest.mark.parametrize("expr", ["forget_acc <= __import__('os')", "forget_acc", "forget_acc => 0.1", "forget_acc <= 0.1 and 1", ""])
def test_gate_parser_rejects_anything_else(expr):
    with pytest.raises(AuditError, match="expected '<metric> <op> <number>'"):
        G.parse_gate(expr)


def test_unknown_gate_lists_known_metrics():
    with pytest.raises(UnlearnError) as e:
        G.parse_gate("forget_accuracy <= 0.1")
    assert "unknown metric 'forget_accuracy'" in str(e.value) and "forget_acc" in str(e.value) and "avg_gap" in str(e.value)
    assert e.value.exit_code == 2


def test_gates_that_cannot_be_measured_are_input_errors():
    with pytest.raises(AuditError, match="reference"):
        G.parse_gates(["avg_gap <= 1"], "class", has_reference=False)
    with pytest.raises(AuditError, match="class unlearning only"):
        G.parse_gates(["test_forgotten_acc <= 0.1"], "sample", has_reference=True)


def test_gate_values_and_verdict():
    unl = {"forget_acc": 0.01, "test_acc": 0.90, "retain_acc": 0.97, "activation_distance": {"forget": 0.2}}
    orig = {"forget_acc": 0.99, "test_acc": 0.95, "retain_acc": 0.99}
    gaps = {"avg_gap": 0.8, "mia_efficacy": 0.03}
    gates = G.parse_gates(["forget_acc <= 0.02", "test_acc_drop <= 0.01", "avg_gap <= 1.0", "mia_efficacy_gap < 0.05",
                           "activation_distance_forget <= 0.3"], "class", True)
    rows, verdict = G.evaluate_gates(gates, unl, orig, gaps)
    assert [r["passed"] for r in rows] == [True, False, True, True, True]
    assert rows[1]["value"] == pytest.approx(0.05)
    assert verdict == "fail"
    assert G.evaluate_gates([], unl, orig, gaps)[1] == "no gates"
    assert not G.parse_gate("zrf >= 0").passes(None)  # an unmeasurable gate never passes


# ---------------------------------------------------------------- two-sided warnings

def _m(**kw):
    base = {"forget_acc": 0.0, "test_acc": 0.9, "retain_acc": 0.99, "mia_efficacy": 1.0, "mia_loss_auc": 0.9,
            "test_remaining_acc": 0.95, "mean_loss": {"forget": 5.0, "test": 0.3, "retain": 0.01}}
    base.update(kw)
    return base


def test_warnings_are_two_sided_against_the_reference():
    ref = _m(forget_acc=0.80, mia_efficacy=0.30, mia_loss_auc=0.55, mean_loss={"forget": 0.5, "test": 0.5, "retain": 0.0})
    under = audit_warnings(_m(forget_acc=0.97, mia_efficacy=0.05, mia_loss_auc=0.55), _m(), ref, "sample")
    assert any(w.startswith("under-unlearning: forget accuracy") for w in under)
    assert any(w.startswith("under-unlearning: MIA-Efficacy") for w in under)
    over = audit_warnings(_m(forget_acc=0.40, mia_efficacy=0.70, mia_loss_auc=0.9), _m(), ref, "sample")
    assert any(w.startswith("over-unlearning: forget accuracy") and "Streisand" in w for w in over)
    assert any(w.startswith("over-unlearning: MIA-Efficacy") for w in over)
    assert any(w.startswith("over-unlearning: the loss attack") for w in over)
    assert audit_warnings(_m(forget_acc=0.82, mia_efficacy=0.33, mia_loss_auc=0.56), _m(), ref, "sample") == []


def test_warnings_without_reference_use_test_data_as_never_seen():
    assert any("over-unlearning" in w for w in audit_warnings(_m(forget_acc=0.5, mia_loss_auc=None), _m(), None, "sample"))
    assert any("under-unlearning" in w for w in audit_warnings(_m(forget_acc=0.99, mia_loss_auc=None), _m(), None, "sample"))
    assert any("under-unlearning" in w for w in audit_warnings(_m(forget_acc=0.5), _m(), None, "class"))
    assert any(w.startswith("utility") for w in audit_warnings(_m(test_remaining_acc=0.7), _m(), None, "class"))


# ---------------------------------------------------------------- reusable API (for bench)

def test_model_metrics_and_gaps_api(digits_sample_job):
    from unlearn_tool.audit import gaps, model_metrics

    m = model_metrics(digits_sample_job.original, digits_sample_job, 0)
    for key in ("retain_acc", "forget_acc", "test_acc", "ua", "mia_efficacy", "mia_entropy", "mia_loss_auc", "mia_loss_acc", "zrf", "per_class_acc"):
        assert key in m
    assert 0.9 < m["test_acc"] <= 1.0 and len(m["per_class_acc"]) == 10
    assert m["test_forgotten_acc"] is None  # sample unlearning
    assert gaps(m, m)["avg_gap"] == 0.0
    assert model_metrics(digits_sample_job.original, digits_sample_job, 0)["mia_efficacy"] == m["mia_efficacy"]  # seeded


def test_the_docs_metric_list_follows_the_registry():
    """Every metric the registry defines is named in docs/audit.md (report tables, gates and bench columns derive from it)."""
    from pathlib import Path

    from unlearn_tool.audit.registry import METRICS, gate_names

    docs = (Path(__file__).resolve().parents[2] / "docs" / "audit.md").read_text()
    missing = [n for n in METRICS if f"`{n}`" not in docs and n not in docs]
    assert not missing, f"docs/audit.md does not mention {missing}"
    assert all(G.parse_gate(f"{n} <= 1").metric == n for n in gate_names())
