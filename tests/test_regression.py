"""Regression unlearning (issue 14) on real data (scikit-learn diabetes, standardised targets): the request, the data,
every regression method against a retrained model, the audit's figures against hand-computed ones, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import DIABETES_RANGE, diabetes_indices, invoke, write_regression_request
from tests.helpers import rejected, tree

REGRESSION_METHODS = ("retrain", "finetune", "neggrad+", "blindspot", "gaussian-amnesiac", "ssd", "rfa")
FAST = {"retrain": {"epochs": 60}, "ssd": {"use_cache": False}}


def _forget_mae(model, job) -> float:
    from unlearn_tool.evaluate import stream

    return float(stream(model, job.splits.forget, job.device, 128, job.task).abs_err.mean())


@pytest.fixture(scope="module")
def references(diabetes_dir, diabetes_sample_job, diabetes_range_job):
    from unlearn_tool.audit.core import load_checkpoint

    return {"sample": load_checkpoint(diabetes_dir / "mlp.retrain_sample.safetensors", diabetes_sample_job)[0],
            "range": load_checkpoint(diabetes_dir / "mlp.retrain_range.safetensors", diabetes_range_job)[0]}


# ---------------------------------------------------------------- methods

@pytest.mark.parametrize("name", REGRESSION_METHODS)
def test_each_method_moves_forget_error_towards_the_retrained_model(name, diabetes_sample_job, references):
    """10% sample unlearning: the forget-set MAE ends closer to the retrained model's than the original's was, and test
    MAE rises by less than a quarter."""
    from unlearn_tool.evaluate import stream
    from unlearn_tool.methods import parse_params, run_method

    job = diabetes_sample_job
    original, target = _forget_mae(job.original, job), _forget_mae(references["sample"], job)
    assert target > original * 1.2  # the retrained model errs much more on the forget set: there is something to unlearn
    out, _ = run_method(name, job.context(), parse_params(name, FAST.get(name, {})))
    after = _forget_mae(out.model, job)
    assert abs(after - target) < abs(original - target), (name, original, after, target)
    test_before = float(stream(job.original, job.splits.test, job.device, 128, job.task).abs_err.mean())
    test_after = float(stream(out.model, job.splits.test, job.device, 128, job.task).abs_err.mean())
    assert test_after < 1.25 * test_before, (name, test_before, test_after)


@pytest.mark.parametrize("name", ("rfa", "blindspot", "gaussian-amnesiac", "finetune"))
def test_range_unlearning_moves_forget_error_towards_the_retrained_model(name, diabetes_range_job, references):
    """Forgetting every target above 1 sd: the forget-set MAE moves at least halfway to the retrained model's."""
    from unlearn_tool.methods import parse_params, run_method

    job = diabetes_range_job
    original, target = _forget_mae(job.original, job), _forget_mae(references["range"], job)
    out, _ = run_method(name, job.context(), parse_params(name, FAST.get(name, {})))
    after = _forget_mae(out.model, job)
    assert abs(after - target) < 0.5 * abs(original - target), (name, original, after, target)


def test_rfa_regression_trains_adapters_only_and_stops_where_the_returned_model_meets_its_target(diabetes_sample_job):
    """RFA's regression form: only LoRA adapters change; when the stopping rule fires, the model it returns (not the
    outputs seen during the pass) has its forget-set MAE within FORGET_TOLERANCE of the target, either side, and
    test MAE within 5% of the original's."""
    from unlearn_tool.evaluate import stream
    from unlearn_tool.methods import parse_params, run_method
    from unlearn_tool.methods.rfa_regression import FORGET_TOLERANCE, heldout_targets

    job = diabetes_sample_job
    out, _ = run_method("rfa", job.context(), parse_params("rfa", {}))
    assert out.info["forget_target"] == "shift" and out.adapter_model is not None
    assert out.info["stop_reason"] == "criterion"
    target = out.info["target_forget_mae"]
    assert abs(_forget_mae(out.model, job) - target) <= FORGET_TOLERANCE * target + 1e-4, (_forget_mae(out.model, job), target)
    test_before = float(stream(job.original, job.splits.test, job.device, 128, job.task).abs_err.mean())
    test_after = float(stream(out.model, job.splits.test, job.device, 128, job.task).abs_err.mean())
    assert test_after <= 1.05 * test_before, (test_before, test_after)
    # the target: the k-th best-fitted forget sample gets the k-th held-out quantile, never less error than it has
    teacher_f = torch.tensor([[0.1], [1.0], [0.0]])
    y_f = torch.tensor([0.0, 0.0, 0.0])
    teacher_h, y_h = torch.tensor([[0.2], [0.5], [0.3]]), torch.zeros(3)
    t = heldout_targets(teacher_f, y_f, teacher_h, y_h)
    assert torch.allclose(t.flatten(), torch.tensor([0.3, 1.0, 0.2]))  # ranks 1, 2, 0 -> quantiles 0.3, 0.5 (< 1.0 kept), 0.2


def test_rfa_range_unlearning_stops_where_the_returned_model_meets_its_neighbour_target(diabetes_range_job):
    """Range unlearning: the stopping rule fires before the pass budget, with the returned model's forget-set MAE within
    FORGET_TOLERANCE of the neighbour target and its outputs on retained data still near the teacher's."""
    from unlearn_tool.evaluate import predict_logits
    from unlearn_tool.methods import parse_params, run_method
    from unlearn_tool.methods.rfa_regression import FORGET_TOLERANCE, REGRESSION_EPOCHS

    job = diabetes_range_job
    out, _ = run_method("rfa", job.context(), parse_params("rfa", {}))
    assert out.info["forget_target"] == "neighbours" and out.info["stop_reason"] == "criterion"
    assert out.info["epochs_run"] < REGRESSION_EPOCHS
    target = out.info["target_forget_mae"]
    assert abs(_forget_mae(out.model, job) - target) <= FORGET_TOLERANCE * target + 1e-4, (_forget_mae(out.model, job), target)
    teacher, y = predict_logits(job.original, job.splits.retain, job.device, 256)
    student, _ = predict_logits(out.model, job.splits.retain, job.device, 256)
    teacher_mae = float((teacher.flatten() - y.float().flatten()).abs().mean())
    assert float((student - teacher).abs().mean()) <= teacher_mae, "retained outputs moved by more than the teacher's own error"


def test_rfa_regression_at_the_cap_keeps_the_check_nearest_the_rule_not_a_diverged_last_step(diabetes_range_job, monkeypatch):
    """A run that never meets the stopping rule returns the check nearest to it (the teacher, pass 0, included), not
    wherever the last step landed: at lr 0.3 Adam diverges, and the last state's retained outputs are hundreds of
    target sd off while the kept check's stay the teacher's. Found on a rotated-digits range seed (docs/rfa.md R5).
    The lr backoff (next test) would rescue this run, so it is switched off here to test the rule alone."""
    from unlearn_tool.evaluate import predict_logits
    from unlearn_tool.methods import parse_params, run_method
    from unlearn_tool.methods import rfa_regression
    from unlearn_tool.methods.rfa_regression import check_score

    monkeypatch.setattr(rfa_regression, "MAX_BACKOFFS", 0)
    job = diabetes_range_job
    teacher, y = predict_logits(job.original, job.splits.retain, job.device, 256)
    teacher_mae = float((teacher.flatten() - y.float().flatten()).abs().mean())
    drift = {}
    for stop in ("criterion", "epochs"):
        out, _ = run_method("rfa", job.context(), parse_params("rfa", {"lr": 0.3, "epochs": 8, "stop": stop}))
        student, _ = predict_logits(out.model, job.splits.retain, job.device, 256)
        drift[stop] = float((student - teacher).abs().mean())
        if stop == "criterion":
            assert out.info["stop_reason"] == "epochs" and out.info["kept_check"] < out.info["epochs_run"]
            assert out.info["kept_check_score"] > 1
    assert drift["epochs"] > 10 * teacher_mae, drift  # the last step diverged
    assert drift["criterion"] <= teacher_mae, drift  # the kept check did not
    # the score: the larger of the forget miss (in tolerance shares) and the drift (in shares of its bound)
    assert check_score(0.105, 0.1, 0.5, 1.0) == pytest.approx(1.0) and check_score(0.1, 0.1, 2.0, 1.0) == pytest.approx(2.0)
    assert check_score(0.12, 0.1, None, 1.0) == pytest.approx(4.0)
    assert check_score(0.01, 0.0, 0.0, 1.0) == float("inf") and check_score(0.0, 0.0, 0.0, 1.0) == 0.0  # a zero target: only exact


def test_rfa_regression_backs_off_a_step_too_large_for_the_model_and_still_reaches_its_target(diabetes_range_job):
    """At lr 0.3 the first pass overshoots the forget target by more than the target itself (docs/rfa.md R5: on a
    BatchNorm ResNet regressor even the default lr 0.01 did, forget MAE 0.005 -> 3.9 against 0.04). RFA goes back to
    the best check with a tenth of the lr and fresh Adam moments, and now meets its stopping rule: forget MAE within
    the band of the target, retained outputs within the teacher's own error."""
    from unlearn_tool.evaluate import predict_logits
    from unlearn_tool.methods import parse_params, run_method
    from unlearn_tool.methods.rfa_regression import FORGET_TOLERANCE, overshot

    job = diabetes_range_job
    out, _ = run_method("rfa", job.context(), parse_params("rfa", {"lr": 0.3, "epochs": 8}))
    assert out.info["lr_backoffs"] >= 1 and out.info["stop_reason"] == "criterion", out.info
    target = out.info["target_forget_mae"]
    assert abs(_forget_mae(out.model, job) - target) <= FORGET_TOLERANCE * target + 1e-4, (_forget_mae(out.model, job), target)
    teacher, y = predict_logits(job.original, job.splits.retain, job.device, 256)
    student, _ = predict_logits(out.model, job.splits.retain, job.device, 256)
    assert float((student - teacher).abs().mean()) <= float((teacher.flatten() - y.float().flatten()).abs().mean())
    # the same overshoot on the only pass: it is undone, and the line says no pass ran at the lower lr
    from unlearn_tool.stop_text import stop_line

    one, _ = run_method("rfa", job.context(), parse_params("rfa", {"lr": 0.3, "epochs": 1}))
    assert one.info["lr_backoffs"] == 1 and one.info["last_backoff_pass"] == 1 and one.info["stop_reason"] == "epochs", one.info
    line = stop_line(one.info, {"epochs": 1, "stop": "criterion"})
    assert "the last pass overshot the forget target and was undone" in line and line.count("more epochs") == 1, line
    # an overshoot: further from the target than the teacher was, and by more than the target itself
    assert overshot(0.25, 0.1, teacher_miss=10.0) and not overshot(0.19, 0.1, teacher_miss=10.0) and not overshot(0.25, 0.1, teacher_miss=40.0)


def test_rfa_regression_stops_at_once_when_the_teacher_already_meets_the_rule(diabetes_dir):
    """A barely trained model has no generalisation gap, so its forget MAE already equals the sample target: the
    teacher's own check (pass 0) meets the rule and RFA runs no pass, returning the original. (A first version of the
    nearest-check rule read the drift only at checks beating the best score, the teacher's 0, and so ran all 30
    passes; the next read the rule only after a pass, and on a ResNet-18 regressor that one pass of lr-sized Adam
    steps from zero adapters moved the forget MAE from 0.16 to 2.8, so it then ran all 30 passes to return the
    original.)"""
    import torch

    from unlearn_tool.methods import parse_params, run_method
    from unlearn_tool.pipeline import prepare
    from unlearn_tool.training import TrainConfig, fit

    job = prepare(diabetes_dir / "sample.yaml", diabetes_dir / "mlp.safetensors", device="cpu")
    torch.manual_seed(0)
    model = job.make_model()
    fit(model, job.splits.train, TrainConfig(epochs=1), job.device, torch.Generator().manual_seed(0), loss_fn=job.task.loss_fn("mse"))
    job.original = model.eval()
    out, _ = run_method("rfa", job.context(), parse_params("rfa", {}))
    assert out.info["stop_reason"] == "criterion" and out.info["epochs_run"] == 0, out.info
    merged = out.model.state_dict()
    assert all(torch.equal(merged[k], v) for k, v in model.state_dict().items())


def test_loss_parameter_l1_trains_with_mean_absolute_error(diabetes_sample_job):
    from unlearn_tool.methods import parse_params, run_method

    job = diabetes_sample_job
    mse, _ = run_method("finetune", job.context(), parse_params("finetune", {"loss": "mse"}))
    l1, _ = run_method("finetune", job.context(), parse_params("finetune", {"loss": "l1"}))
    assert not all(torch.equal(a, b) for a, b in zip(mse.model.state_dict().values(), l1.model.state_dict().values()))


def test_gaussian_targets_follow_the_training_distribution():
    from unlearn_tool.methods.gaussian_amnesiac import gaussian_targets

    y = torch.randn(4000, generator=torch.Generator().manual_seed(0)) * 3 + 5
    idx = torch.arange(0, 4000, 2)
    out = gaussian_targets(y, idx, torch.Generator().manual_seed(1))
    assert torch.equal(out[1::2], y[1::2])  # retained targets untouched
    assert abs(float(out[idx].mean()) - 5) < 0.3 and abs(float(out[idx].std()) - 3) < 0.3
    assert float((out[idx] - y[idx]).abs().mean()) > 1.0  # the forget targets are new draws, not the old ones


# ---------------------------------------------------------------- request and data

def test_target_range_selects_exactly_the_samples_in_range(diabetes_range_job):
    job = diabetes_range_job
    y = job.splits.train.targets
    expected = torch.nonzero((y >= DIABETES_RANGE["min"]) & (y <= DIABETES_RANGE["max"])).flatten()
    assert torch.equal(torch.sort(job.splits.forget_idx).values, expected)
    assert job.splits.scenario == "range" and 0 < len(expected) < len(y)
    assert len(job.splits.retain_idx) + len(expected) == len(y)


def test_target_range_bounds_are_inclusive_on_a_multi_column_target(tmp_path):
    from safetensors.torch import save_file

    from unlearn_tool.pipeline import prepare

    x = torch.rand(8, 3)
    y = torch.tensor([[0.0, 5.0], [1.0, 1.0], [2.0, 2.0], [3.0, 1.5], [4.0, 2.5], [5.0, 0.0], [6.0, 2.0], [7.0, 9.0]])
    save_file({"x": x, "y": y}, str(tmp_path / "d.safetensors"))
    req = write_regression_request(tmp_path, {"target_range": {"min": 1.0, "max": 2.0, "column": 1}}, extra={
        "model": {"arch": "builtin:mlp", "kwargs": {"in_features": 3, "hidden": [4], "num_outputs": 2}},
        "data": {"train": {"source": "tensors", "path": "d.safetensors"}, "test": {"source": "tensors", "path": "d.safetensors"}}})
    job = prepare(req, None, device="cpu")
    assert sorted(job.splits.forget_idx.tolist()) == [1, 2, 3, 6]


def test_diabetes_and_rotated_digits_sources():
    from unlearn_tool.data import load_split
    from unlearn_tool.request import DataSpec

    train = load_split(DataSpec(source="sklearn:diabetes"), "train", ".")
    test = load_split(DataSpec(source="sklearn:diabetes"), "test", ".")
    assert (len(train), len(test)) == (353, 89) and train.targets.dtype == torch.float32
    both = torch.cat([train.targets, test.targets])
    assert abs(float(both.mean())) < 1e-5 and abs(float(both.std(unbiased=False)) - 1) < 1e-4  # standardised
    assert torch.equal(load_split(DataSpec(source="sklearn:diabetes"), "train", ".").targets, train.targets)  # fixed split
    rot = load_split(DataSpec(source="sklearn:digits-rotation"), "train", ".")
    assert rot.x.shape == (1437, 1, 16, 16) and float(rot.targets.abs().max()) <= np.deg2rad(45) + 1e-6


def test_integer_targets_with_regression_are_converted_with_a_note(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.rand(40, 3), "y": torch.arange(40) % 7}, str(tmp_path / "d.safetensors"))
    req = write_regression_request(tmp_path, {"target_range": {"min": 5, "max": 6}}, extra={
        "model": {"arch": "builtin:mlp", "kwargs": {"in_features": 3, "hidden": [4], "num_outputs": 1}},
        "data": {"train": {"source": "tensors", "path": "d.safetensors"}, "test": {"source": "tensors", "path": "d.safetensors"}}})
    result = invoke("validate", "-r", req, "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["task"] == "regression" and info["forget_size"] == 10
    assert any("integer targets read as float" in n for n in info["notes"])


# ---------------------------------------------------------------- bad input

def test_a_classification_method_on_a_regression_request_names_the_methods_that_can(tmp_path):
    req = write_regression_request(tmp_path, {"indices": [0, 1, 2]}, method={"name": "scrub"})
    before = tree(tmp_path)
    line = rejected(invoke("validate", "-r", req), "scrub cannot unlearn a regression model")
    for name in REGRESSION_METHODS:
        assert name in line
    assert tree(tmp_path) == before


def test_classes_in_a_regression_request_say_what_to_use_instead(tmp_path):
    rejected(invoke("validate", "-r", write_regression_request(tmp_path, {"classes": [1]})), "forget.classes", "target_range")


def test_a_target_range_in_a_classification_request_is_refused(tmp_path):
    req = write_regression_request(tmp_path, {"target_range": {"min": 0, "max": 1}}, extra={"task": "classification"})
    rejected(invoke("validate", "-r", req), "target_range", "task: regression")


def test_float_targets_with_classification_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.rand(20, 3), "y": torch.rand(20)}, str(tmp_path / "d.safetensors"))
    req = write_regression_request(tmp_path, {"indices": [0]}, extra={
        "task": "classification",
        "model": {"arch": "builtin:mlp", "kwargs": {"in_features": 3, "hidden": [4], "num_classes": 2}},
        "data": {"train": {"source": "tensors", "path": "d.safetensors"}, "test": {"source": "tensors", "path": "d.safetensors"}}})
    rejected(invoke("validate", "-r", req), "float", "task: regression")


@pytest.mark.parametrize("bounds, fragment", [({"min": 50, "max": 60}, "no train target lies in"), ({"min": 2, "max": 1}, "above max")])
def test_an_empty_or_inverted_range_is_refused(tmp_path, bounds, fragment):
    rejected(invoke("validate", "-r", write_regression_request(tmp_path, {"target_range": bounds})), fragment)


def test_a_regression_loss_for_classification_and_a_classification_gate_in_a_regression_audit_are_refused(tmp_path, diabetes_dir):
    req = write_regression_request(tmp_path, {"indices": [0, 1]}, method={"name": "finetune", "params": {"loss": "l1"}},
                                   extra={"task": "classification", "model": {"arch": "builtin:mlp", "kwargs": {"in_features": 10, "num_classes": 2}}})
    rejected(invoke("validate", "-r", req), "loss", "auto")
    req = write_regression_request(tmp_path, {"indices": [0, 1]}, name="g.yaml")
    rejected(invoke("audit", "-r", req, "--original", diabetes_dir / "mlp.safetensors", "--unlearned", diabetes_dir / "mlp.safetensors",
                    "--gate", "forget_acc <= 0.1", "--report-dir", tmp_path / "rep"), "forget_acc", "regression")


# ---------------------------------------------------------------- audit

def test_regression_audit_figures_match_hand_computed_values(diabetes_sample_job, references):
    from unlearn_tool.audit import metrics as M
    from unlearn_tool.audit.core import distances, model_metrics, model_outputs
    from unlearn_tool.evaluate import predict_logits

    job = diabetes_sample_job
    m = model_metrics(job.original, job, 0)
    for name in ("retain", "forget", "test"):
        pred, y = predict_logits(job.original, getattr(job.splits, name), job.device, 128)
        p, t = pred.double().numpy().ravel(), y.double().numpy().ravel()
        assert m[f"{name}_mae"] == pytest.approx(np.abs(p - t).mean(), rel=1e-6)
        assert m[f"{name}_rmse"] == pytest.approx(np.sqrt(((p - t) ** 2).mean()), rel=1e-6)
        assert m[f"{name}_r2"] == pytest.approx(1 - ((p - t) ** 2).sum() / ((t - t.mean()) ** 2).sum(), rel=1e-6)
    assert 0 <= m["mia_error_efficacy"] <= 1 and 0 <= m["mia_loss_auc"] <= 1 and "zrf" not in m
    # activation distance: mean |output difference| (one output column) against the retrained model
    ref = references["sample"]
    d = distances(model_outputs(job.original, job, 0), model_outputs(ref, job, 0), probabilistic=False)
    a, _ = predict_logits(job.original, job.splits.forget, job.device, 128)
    b, _ = predict_logits(ref, job.splits.forget, job.device, 128)
    assert d["activation_distance"]["forget"] == pytest.approx(float((a - b).abs().mean()), rel=1e-5)
    assert "js_divergence" not in d
    # gaps: relative for errors, absolute for MIA-Efficacy; Avg Gap = 100 x mean of the four (docs/audit.md)
    u = {"retain_mae": 0.5, "forget_mae": 0.9, "test_mae": 0.6, "mia_error_efficacy": 0.7, "test_r2": 0.3}
    r = {"retain_mae": 0.4, "forget_mae": 1.0, "test_mae": 0.6, "mia_error_efficacy": 0.5, "test_r2": 0.2}
    g = M.gaps(u, r, "regression")
    assert g["retain_mae"] == pytest.approx(0.25) and g["forget_mae"] == pytest.approx(0.1) and g["test_r2"] == pytest.approx(0.1)
    assert g["avg_gap"] == pytest.approx(100 * (0.25 + 0.1 + 0.0 + 0.2) / 4)


def test_loss_attack_matches_a_hand_built_logistic_regression():
    """The loss attack on squared errors: perfectly separated errors give AUC 1; identical distributions about 0.5."""
    from unlearn_tool.audit import attacks

    rng = np.random.default_rng(0)
    acc, auc = attacks.mia_loss(rng.uniform(0, 1, 200), rng.uniform(2, 3, 200), 0)
    assert auc == pytest.approx(0.0, abs=1e-9) or auc == pytest.approx(1.0, abs=1e-9)
    assert acc == pytest.approx(1.0)
    acc, auc = attacks.mia_loss(rng.uniform(0, 1, 400), rng.uniform(0, 1, 400), 0)
    assert abs(auc - 0.5) < 0.1 and abs(acc - 0.5) < 0.1


def test_train_apply_and_bench_print_regression_figures_as_errors_not_accuracies(tmp_path, diabetes_dir):
    """What a user sees without --quiet: `train` names the test MAE (it raised KeyError 'test_acc'), `apply`'s
    before/after table prints MAEs in target units (it printed them as percentages), and `bench`'s per-run
    lines name forget and test MAE (KeyError 'forget_acc')."""
    req = write_regression_request(tmp_path, {"indices": diabetes_indices()}, method={"name": "rfa", "params": {"epochs": 3}})
    result = invoke("train", "-r", req, "-o", tmp_path / "m.safetensors", "--epochs", "5")
    assert result.exit_code == 0, result.output
    assert "test MAE 0." in result.stderr and "accuracy" not in result.stderr
    result = invoke("apply", diabetes_dir / "mlp.safetensors", "-r", req, "-o", tmp_path / "u.safetensors")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stderr.splitlines() if "forget_mae" in line)
    assert "%" not in row and "0." in row, row
    result = invoke("bench", "-r", req, diabetes_dir / "mlp.safetensors", "--methods", "gaussian-amnesiac", "--seeds", "1",
                    "--report-dir", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert "gaussian-amnesiac seed 0: forget MAE 0." in result.stderr and "test MAE 0." in result.stderr


def test_apply_with_audit_writes_a_regression_report_with_its_plots(tmp_path, diabetes_dir):
    req = write_regression_request(tmp_path, {"indices": diabetes_indices()}, extra={
        "audit": {"reference": str(diabetes_dir / "mlp.retrain_sample.safetensors"), "gates": ["forget_mae_gap <= 0.5", "test_mae_rise <= 0.25"]}})
    out = tmp_path / "u.safetensors"
    result = invoke("apply", diabetes_dir / "mlp.safetensors", "-r", req, "-o", out, "--audit", "--json", "--quiet")
    assert result.exit_code in (0, 3), result.stderr
    report = json.loads((tmp_path / "u.audit" / "report.json").read_text())
    assert report["request"]["task"] == "regression"
    unl = report["models"]["unlearned"]
    assert {"forget_mae", "test_rmse", "retain_r2", "mia_error_efficacy", "residual_hist", "error_hist"} <= set(unl)
    assert [g["metric"] for g in report["gates"]] == ["forget_mae_gap", "test_mae_rise"]
    assert all(g["value"] is not None for g in report["gates"])
    html = (tmp_path / "u.audit" / "report.html").read_text()
    assert "Residual distributions" in html and "Membership-attack scores" in html
    # the metrics table's caption says the error gaps are relative (it said |unlearned - reference| for all)
    unl_mae, ref_mae = unl["retain_mae"], report["models"]["reference"]["retain_mae"]
    assert report["gaps"]["retain_mae"] == pytest.approx(abs(unl_mae - ref_mae) / ref_mae, rel=1e-6)
    assert "relative" in html and "relative" in (tmp_path / "u.audit" / "report.md").read_text()


def test_bench_runs_regression_methods_only(tmp_path, diabetes_dir):
    req = diabetes_dir / "sample.yaml"
    result = invoke("bench", "-r", req, diabetes_dir / "mlp.safetensors", "--methods", "rfa,gaussian-amnesiac", "--seeds", "1",
                    "--reference", diabetes_dir / "mlp.retrain_sample.safetensors", "--report-dir", tmp_path / "b", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    bench = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert set(bench["methods"]) == {"rfa", "gaussian-amnesiac"}
    assert bench["methods"]["rfa"]["metrics"]["forget_mae"]["mean"] > 0 and bench["methods"]["rfa"]["metrics"]["avg_gap"]["mean"] is not None
    assert (tmp_path / "b" / "bench.png").stat().st_size > 0
    notes = (tmp_path / "b" / "bench.md").read_text()  # the table's legend describes the regression columns, not accuracies
    assert "MAE" in notes.split("Mean ± sample std", 1)[1] and "retain accuracy" not in notes and "over UA" not in notes
    rejected(invoke("bench", "-r", req, diabetes_dir / "mlp.safetensors", "--methods", "scrub", "--report-dir", tmp_path / "c"),
             "scrub cannot unlearn a regression model")


def test_methods_lists_each_methods_tasks():
    result = invoke("methods")
    assert result.exit_code == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "classification+regression" in lines["rfa"] and "regression" in lines["gaussian-amnesiac"]
    assert "regression" not in lines["scrub"].split("  ")[1]


def test_regression_request_round_trips_through_yaml(tmp_path):
    from unlearn_tool.request import load_request

    req = load_request(write_regression_request(tmp_path, {"target_range": {"min": -1, "max": 0.5}}))
    assert req.task == "regression" and req.forget.scenario == "range" and req.forget.target_range.max == 0.5
    plain = yaml.safe_load((tmp_path / "regression.yaml").read_text())
    plain.pop("task")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**plain, "forget": {"classes": [1]}}))
    assert load_request(tmp_path / "c.yaml").task == "classification"  # the default: existing requests are unchanged


def test_a_short_method_run_is_timed_by_the_median_of_repeated_runs(diabetes_sample_job, monkeypatch):
    """benchmarks/regression.py times 20 ms runs this way: one run's few ms of load decided RFA's diabetes time ratio."""
    import unlearn_tool.bench.run as R
    from unlearn_tool.bench import method_params

    real, calls = R.run_method, []
    scripted = iter([0.5, 0.01, 0.02, 0.03])

    def counted(name, ctx, params):
        out, _ = real(name, ctx, params)
        calls.append(name)
        return out, next(scripted)

    monkeypatch.setattr(R, "run_method", counted)
    params = method_params("finetune", {"epochs": 1})
    assert R.timed_again("finetune", diabetes_sample_job, params, 0.05, repeats=5) == 0.03  # median of 0.05, 0.5, 0.01, 0.02, 0.03
    assert calls == ["finetune"] * 4
    assert R.timed_again("finetune", diabetes_sample_job, params, R.REPEAT_BELOW_S, repeats=5) == R.REPEAT_BELOW_S  # long: once
    assert R.timed_again("finetune", diabetes_sample_job, params, 0.05, repeats=1) == 0.05
    assert len(calls) == 4


def test_rfa_gauss_newton_solver_moves_the_forget_error_towards_the_retrained_model_by_the_adapters_b_alone(diabetes_sample_job, references,
                                                                                                        monkeypatch):
    """solver gauss-newton (docs/rfa.md R9): one damped Gauss-Newton step in the adapters' B weights, A left at its
    init; the forget error moves towards the retrained model's while test error stays; a second run is identical."""
    from unlearn_tool import lora
    from unlearn_tool.evaluate import stream
    from unlearn_tool.methods import parse_params, run_method

    job = diabetes_sample_job
    params = parse_params("rfa", {"solver": "gauss-newton"})
    inject, initial = lora.inject, {}

    def recorded(*a, **k):
        model = inject(*a, **k)
        initial.update({n: layer.lora_A.weight.detach().clone() for n, layer in lora.lora_layers(model)})
        return model

    monkeypatch.setattr(lora, "inject", recorded)
    out, _ = run_method("rfa", job.context(), params)
    monkeypatch.setattr(lora, "inject", inject)
    assert out.info["solver"] == "gauss-newton" and out.info["stop_reason"] in ("criterion", "nearest")
    assert out.info["damping"] is not None  # a step was kept, not the teacher
    before, after, ref = _forget_mae(job.original, job), _forget_mae(out.model, job), _forget_mae(references["sample"], job)
    assert abs(after - ref) < 0.5 * abs(before - ref), (before, after, ref)
    test = [float(stream(m, job.splits.test, job.device, 128, job.task).abs_err.mean()) for m in (job.original, out.model)]
    assert test[1] <= 1.05 * test[0], test
    for name, layer in lora.lora_layers(out.adapter_model):
        assert layer.lora_B.weight.abs().sum() > 0, name
        assert torch.equal(layer.lora_A.weight, initial[name]), name
    job.seed_everything()
    again, _ = run_method("rfa", job.context(), params)
    assert all(torch.equal(a, b) for a, b in zip(out.model.state_dict().values(), again.model.state_dict().values()))


def test_rfa_gauss_newton_solver_is_refused_for_a_classifier_and_for_a_jacobian_too_large(digits_sample_job, diabetes_sample_job, monkeypatch):
    from unlearn_tool.errors import MethodError
    from unlearn_tool.methods import _rfa_gauss_newton, parse_params, run_method

    with pytest.raises(MethodError, match="solver gauss-newton is for regression models"):
        run_method("rfa", digits_sample_job.context(), parse_params("rfa", {"solver": "gauss-newton"}))
    monkeypatch.setattr(_rfa_gauss_newton, "JACOBIAN_BYTES", 1000)
    with pytest.raises(MethodError, match="the Jacobian would take .* lower rank, adapt fewer layers .* or use solver adam"):
        run_method("rfa", diabetes_sample_job.context(), parse_params("rfa", {"solver": "gauss-newton"}))


def test_stop_line_when_the_original_already_meets_the_target():
    from unlearn_tool.stop_text import stop_line as _stop_line

    line = _stop_line({"stop_reason": "criterion", "epochs_run": 0}, {})
    assert "already meets the stopping target" in line and "equals the original" in line
    assert _stop_line({"stop_reason": "criterion", "epochs_run": 3}, {"epochs": 30}) == "stopped early: target reached after 3 of 30 passes"


def test_stop_line_of_the_gauss_newton_solver():
    from unlearn_tool.stop_text import stop_line as _stop_line

    assert "target reached at damping 0.001" in _stop_line({"solver": "gauss-newton", "stop_reason": "criterion", "damping": 1e-3,
                                                            "dampings_read": 7}, {})
    assert "nearest to it (0.002)" in _stop_line({"solver": "gauss-newton", "stop_reason": "nearest", "damping": 2e-3}, {})
    assert "equals the original" in _stop_line({"solver": "gauss-newton", "stop_reason": "nearest", "damping": None}, {})


def test_gauss_newton_per_sample_jacobian_equals_torch_func():
    """The hook-based per-sample Jacobian (each lora_B's input times the gradient at its output) against torch.func's,
    on convolutions and linear layers with several outputs per sample."""
    from torch.func import functional_call, jacrev, vmap

    from unlearn_tool import lora
    from unlearn_tool.methods._rfa_gauss_newton import _jacobian
    from unlearn_tool.models import MLP, SmallCNN

    torch.manual_seed(0)
    for net, x in ((SmallCNN(1, 3), torch.randn(20, 1, 12, 12)), (MLP(10, [16, 8], 2), torch.randn(20, 10))):
        model = lora.inject(net.eval(), lora.select_layers(net, "all"), 4, 8.0).eval()
        with torch.no_grad():
            for _, layer in lora.lora_layers(model):
                layer.lora_B.weight.normal_(0, 0.1)
        layers = [(n, m) for n, m in model.named_modules() if isinstance(m, lora.LoraLayer)]
        names = [f"{n}.lora_B.weight" for n, _ in layers]
        ours = _jacobian(model, layers, x, lora.adapter_state(model), chunk=8)
        b = {n: p.detach() for n, p in model.named_parameters() if n in names}
        jac = vmap(jacrev(lambda p, xi: functional_call(model, p, (xi[None],)).reshape(-1)), in_dims=(None, 0))(b, x)
        theirs = torch.cat([jac[n].flatten(2) for n in names], 2).flatten(0, 1).detach()
        assert ours.shape == theirs.shape == (len(x) * net(x[:1]).shape[1], sum(b[n].numel() for n in names))
        assert torch.allclose(ours, theirs, atol=1e-6), float((ours - theirs).abs().max())


def test_gauss_newton_damped_steps_agree_in_both_square_forms_with_a_direct_solve():
    """The step from Jw Jw^T (fewer rows than weights) and from Jw^T Jw (more rows, e.g. many outputs per sample)
    is the damped least-squares solution, and the damping scale is the same in both."""
    from unlearn_tool.methods._rfa_gauss_newton import damped_steps

    gen = torch.Generator().manual_seed(0)
    for rows, dims in ((30, 50), (50, 30)):
        jw = torch.randn(rows, dims, generator=gen, dtype=torch.float64)
        wr = torch.randn(rows, generator=gen, dtype=torch.float64)
        (s_dual, dual), (s_primal, primal) = damped_steps(jw, wr, "dual"), damped_steps(jw, wr, "primal")
        assert s_dual == pytest.approx(s_primal) == pytest.approx(float(jw.pow(2).sum()) / rows)
        for lam in (10.0, 0.1):
            direct = torch.linalg.solve(jw.T @ jw + lam * torch.eye(dims, dtype=torch.float64), jw.T @ wr)
            assert torch.allclose(dual(lam), direct, atol=1e-8) and torch.allclose(primal(lam), direct, atol=1e-8)


def test_a_diverged_regression_finetune_names_the_learning_rate_it_used_and_the_steadier_optimizer(tmp_path, diabetes_dir):
    """MSE's gradients are unbounded: SGD at a rate that suits cross-entropy can blow a regression model up (a 4-epoch
    ResNet-18 regressor diverged under finetune's default 0.05 and at 0.01). The error says which rate was used, a
    tenth of it to try, and Adam at 1e-4; nothing is written."""
    req = write_regression_request(tmp_path, {"indices": diabetes_indices()}, method={"name": "finetune", "params": {"lr": 5.0}})
    out = tmp_path / "u.safetensors"
    result = invoke("apply", diabetes_dir / "mlp.safetensors", "-r", req, "-o", out, "--quiet")
    assert result.exit_code == 1, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert "unlearning diverged" in line and "loss on the retain set became" in line and "it was 5: try --param lr=0.5" in line and "--param optimizer=adam --param lr=1e-4" in line, line
    assert not out.exists()


def test_divergence_hint_without_a_learning_rate_or_on_a_classifier():
    from unlearn_tool.methods import parse_params
    from unlearn_tool.methods.common import divergence_hint

    assert divergence_hint(parse_params("ssd", {}), "regression") == "lower the learning rate or check the method's parameters"
    assert "optimizer=adam" not in divergence_hint(parse_params("finetune", {}), "classification")


def test_the_output_and_its_audit_report_say_how_the_run_ended(diabetes_dir, tmp_path):
    """How RFA's run ended (target reached after N passes, the kept check, an lr backoff) was printed by the CLI only:
    the output now records the method's scalar info as run_info, and the audit report shows it ("how it ended")."""
    import json

    from safetensors import safe_open

    from unlearn_tool.audit.report import params_rows
    from unlearn_tool.pipeline import apply, prepare

    out = tmp_path / "out.safetensors"
    result = apply(prepare(diabetes_dir / "sample.yaml", diabetes_dir / "mlp.safetensors", device="cpu"), output=out)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    info = json.loads(meta["unlearn.run_info"])
    assert info["stop_reason"] == result.info["stop_reason"] and info["epochs_run"] == result.info["epochs_run"], info
    assert all(not k.endswith("_s") for k in info)
    rows = dict(params_rows({"unlearning": {"method": "rfa", "params": result.params, "metadata": {"run_info": info}}}))
    assert rows["how it ended"].startswith(("stopped early", "ran all")) and rows["run stop_reason"] == info["stop_reason"], rows


def test_rfa_regression_suggests_a_tenth_of_the_lr_its_kept_check_ran_at_after_backoffs(diabetes_sample_job):
    """At lr 5 both backoffs happen (5 -> 0.5 -> 0.05) and the kept check's retained drift is above its bound: the
    CLI suggested "--param lr=0.5", a tenth of the lr asked for, which is ten times the lr the kept check ran at and
    exactly the lr that had already overshot."""
    from unlearn_tool.stop_text import stop_line as _stop_line
    from unlearn_tool.methods import parse_params, run_method

    params = {"lr": 5.0, "epochs": 5}
    out, _ = run_method("rfa", diabetes_sample_job.context(), parse_params("rfa", params))
    info = out.info
    assert info["lr_backoffs"] == 2 and info["kept_check"] > 0 and info["kept_check_drift"] > 1, info
    assert info["kept_check_lr"] == pytest.approx(0.05), info
    line = _stop_line(info, {"stop": "criterion", **params})
    assert "--param lr=0.005 may hold them" in line, line


@pytest.mark.parametrize("method", ["neggrad+", "finetune", "rfa", "retrain", "blindspot", "train"])
def test_targets_whose_squared_error_overflows_are_refused_naming_the_scale(tmp_path, method):
    """Targets near 1e20: MSE squares them past float32. neggrad+ once stopped as 'diverged' after 0 steps and wrote the
    original back with exit 0; later finetune and neggrad+ refused (exit 1) while train, retrain, rfa and blindspot
    exited 0 with a model fitted to nothing, and an audit against such a 'retrained' reference said PASS, Avg Gap 0.
    Every command now refuses the data when it is read (exit 2, nothing written), naming the scale."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g)
    y = x @ torch.tensor([1.0, 2.0, -1.0, 0.5])
    save_file({"x": x, "y": y}, str(tmp_path / "plain.safetensors"))
    save_file({"x": x, "y": y * 1e20}, str(tmp_path / "huge.safetensors"))
    model = {"arch": "builtin:mlp", "kwargs": {"in_features": 4, "hidden": [8], "num_outputs": 1}}

    def request(data: str, name: str) -> str:
        return write_regression_request(tmp_path, {"indices": [0, 1, 2]}, method={"name": "finetune" if method == "train" else method,
                                                                                "params": {}}, name=name, extra={
            "model": model, "data": {"train": {"source": "tensors", "path": data}, "test": {"source": "tensors", "path": data}}})

    assert invoke("train", "-r", request("plain.safetensors", "plain.yaml"), "-o", tmp_path / "m.safetensors", "--epochs", "2", "--quiet").exit_code == 0
    out = tmp_path / "u.safetensors"
    huge = request("huge.safetensors", "huge.yaml")
    r = (invoke("train", "-r", huge, "-o", out, "--epochs", "2", "--quiet") if method == "train" else
         invoke("apply", tmp_path / "m.safetensors", "-r", huge, "-o", out, "--device", "cpu", "--quiet"))
    rejected(r, "data.train: the targets reach 6.22e+20", "overflows float32", "standardise the targets")
    assert not out.exists()


@pytest.mark.parametrize("values, fragment", [
    ({"y": "bool"}, "y is boolean; give class labels as integers (int64), or regression targets as floats"),  # said "class labels must be"
    ({"y": "f64 1e39"}, "y holds values beyond float32's range (up to 1e+39); rescale the targets"),  # said "holds NaN or Inf"
    ({"x": "f64 1e39"}, "x holds values beyond float32's range (up to 1e+39); rescale the inputs"),
    ({"test_y": "3 columns"}, "the train split's targets have 2 column(s) and the test split's 3"),  # said "set num_outputs to 3"
])
def test_regression_data_problems_are_named_as_what_they_are(tmp_path, values, fragment):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g)
    y = torch.stack([x[:, 0], -x[:, 1]], 1)
    train, test = {"x": x, "y": y}, {"x": x, "y": y}
    if values.get("y") == "bool":
        train["y"] = x[:, 0] > 0
    if values.get("y") == "f64 1e39":
        train["y"] = y.double().index_fill(0, torch.tensor([3]), 1e39)
    if values.get("x") == "f64 1e39":
        train["x"] = x.double().index_fill(0, torch.tensor([3]), 1e39)
    if values.get("test_y"):
        test["y"] = torch.cat([y, y[:, :1]], 1)
    save_file({k: v.contiguous() for k, v in train.items()}, str(tmp_path / "train.safetensors"))
    save_file({k: v.contiguous() for k, v in test.items()}, str(tmp_path / "test.safetensors"))
    req = write_regression_request(tmp_path, {"indices": [0, 1]}, extra={
        "model": {"arch": "builtin:mlp", "kwargs": {"in_features": 4, "hidden": [8], "num_outputs": 2}},
        "data": {"train": {"source": "tensors", "path": "train.safetensors"}, "test": {"source": "tensors", "path": "test.safetensors"}}})
    rejected(invoke("validate", "-r", req), fragment)


@pytest.mark.parametrize("retrain", [False, True])
def test_bench_drops_the_processs_one_off_costs_from_its_first_timed_run(diabetes_dir, tmp_path, monkeypatch, retrain):
    """The bench's first timed run (the first method of --methods, or --retrain's first seed) paid the process's one-off
    costs, 2-3 s on diabetes against 0.02-0.2 s runs: finetune read 99.8% of a retraining first and 1.1% second. The
    stub charges the first run of the process 2.5 s more, as that warm-up did; every reported time must be without it."""
    import unlearn_tool.bench.run as bench_run
    from unlearn_tool.bench import bench_request

    real, calls = bench_run.run_method, []

    def first_run_warms_up(name, ctx, params):
        out, wall = real(name, ctx, params)
        calls.append(name)
        return out, wall + (2.5 if len(calls) == 1 else 0.0)

    monkeypatch.setattr(bench_run, "run_method", first_run_warms_up)
    for order in (["finetune", "blindspot"], ["blindspot", "finetune"]):
        bench, _ = bench_request(diabetes_dir / "sample.yaml", diabetes_dir / "mlp.safetensors", order, seeds=2, retrain=retrain,
                                 report_dir=tmp_path / "-".join(order), device="cpu", timing_repeats=1,
                                 param_overrides={"finetune.epochs": 1, "retrain.epochs": 5})
        calls.clear()
        walls = [v for e in bench["methods"].values() for v in e["metrics"]["wall_time_s"]["values"]]
        walls += bench["retrain_time_s"]["values"] if retrain else []
        assert max(walls) < 2.0, walls


@pytest.mark.parametrize("method, param, fragment", [
    ("neggrad+", "stop_forget_acc=0.5", "stop_forget_mae"),  # was exit 0: "target reached" at the default MAE level, 0.5 unread
    ("rfa", "class_stop_acc=0.3", "forget-MAE target"),
    ("rfa", "retain_target=teacher", "aligned with the teacher's"),
    ("blindspot", "forget_loss=l1", "always matched with L1"),
])
def test_classification_only_parameters_in_a_regression_request_are_refused_not_ignored(tmp_path, method, param, fragment):
    req = write_regression_request(tmp_path, {"indices": [0, 1, 2]}, method={"name": method, "params": {}})
    key = param.split("=")[0]
    rejected(invoke("apply", "missing.safetensors", "-r", req, "--param", param, "-o", tmp_path / "o.safetensors", "--quiet"),
             f"method.params.{key} is read by classification only", fragment)
    req.write_text(req.read_text().replace("params: {}", f"params: {{{key}: {param.split('=')[1]}}}"))
    rejected(invoke("validate", "-r", req), f"method.params.{key} is read by classification only")


def test_a_range_forgotten_earlier_in_the_lineage_is_refused_naming_what_a_regression_request_can_forget(diabetes_dir, tmp_path):
    """It said "name classes, indices or IDs", and classes are refused in a regression request."""
    first = tmp_path / "once.safetensors"
    r = invoke("apply", diabetes_dir / "mlp.safetensors", "-r", diabetes_dir / "range.yaml", "-o", first, "--method", "finetune",
               "--param", "epochs=1", "--quiet")
    assert r.exit_code == 0, r.stderr
    line = rejected(invoke("apply", first, "-r", diabetes_dir / "range.yaml", "-o", tmp_path / "twice.safetensors", "--quiet"),
                    "forgotten by earlier requests in the lineage", "name a target_range, indices or IDs")
    assert "classes" not in line


def test_a_misspelt_gate_in_a_regression_audit_lists_the_regression_gates(tmp_path, diabetes_dir):
    """An unknown name listed every metric, the classification ones first ("known metrics: retain_acc, forget_acc, ...")."""
    req = write_regression_request(tmp_path, {"indices": [0, 1]}, name="g.yaml")
    line = rejected(invoke("audit", "-r", req, "--original", diabetes_dir / "mlp.safetensors", "--unlearned", diabetes_dir / "mlp.safetensors",
                           "--gate", "forget_maee <= 1", "--report-dir", tmp_path / "rep"), "unknown metric 'forget_maee'", "regression gates: ")
    assert "forget_mae" in line and "forget_acc" not in line


def test_neggrad_plus_reads_its_target_before_the_first_pass(diabetes_sample_job):
    """When the original already met the stop level, neggrad+ still ran a pass and said "target reached after 1 of 10
    passes" (its forget MAE even fell). Now no step is taken and the line says why the output equals the original."""
    from unlearn_tool.methods import parse_params, run_method
    from unlearn_tool.pipeline import same_weights
    from unlearn_tool.stop_text import stop_line

    params = {"stop_forget_mae": 0.01}  # the original's forget MAE (about 0.5 target sd) is far above it
    out, _ = run_method("neggrad+", diabetes_sample_job.context(), parse_params("neggrad+", params))
    assert out.info["epochs_run"] == 0 and out.info["steps"] == 0 and out.info["stop_reason"] == "criterion"
    assert same_weights(out.model.state_dict(), diabetes_sample_job.original)
    line = stop_line(out.info, {"stop": "criterion", "epochs": 10, **params})
    assert line == "the original already meets the stopping target: no pass was run, the output equals the original"


def test_a_finite_collapse_of_utility_is_warned_about(tmp_path):
    """At lr 9 gaussian-amnesiac raised test MAE about 87-fold and exited 0 without a word: the outputs stay finite, so the
    NaN/Inf guards never fire. The default run gets no such warning."""
    req = write_regression_request(tmp_path, {"indices": [0, 1, 2, 3, 4]}, method={"name": "gaussian-amnesiac", "params": {}},
                                   extra={"model": {"arch": "builtin:mlp", "kwargs": {"in_features": 10, "hidden": [16], "num_outputs": 1}}})
    assert invoke("train", "-r", req, "-o", tmp_path / "m.safetensors", "--epochs", "20", "--device", "cpu", "--quiet").exit_code == 0

    def warnings(*params):
        r = invoke("apply", tmp_path / "m.safetensors", "-r", req, *params, "-o", tmp_path / f"o{len(params)}.safetensors",
                   "--device", "cpu", "--json", "--quiet")
        assert r.exit_code == 0, r.stderr
        out = json.loads(r.stdout)
        return out["warnings"], out["before"]["test_mae"], out["after"]["test_mae"]

    collapsed, before, after = warnings("--param", "lr=9", "--param", "epochs=3")
    assert after > 10 * before and any(w.startswith("utility collapsed: test_mae rose from") and "--param lr=0.9" in w for w in collapsed)
    assert not any("collapsed" in w for w in warnings()[0])
