"""A model whose weights are finite but whose outputs overflow to NaN/Inf (a diverged NegGrad+ on a BatchNorm ResNet
regressor did this): `apply` refuses it like non-finite weights, `audit` and `bench` say so in one line instead of
failing inside scikit-learn. Classification (digits) and regression (diabetes), through the real CLI.

The model: the trained MLP with every Linear weight scaled by 1e15, finite in float32 (max 3.4e38), whose three
layers multiply activations by 1e45 and overflow.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from pydantic import Field
from safetensors.torch import load_file, save_file

from conftest import diabetes_indices, invoke, random_indices, write_regression_request, write_request
from helpers import rejected, tree

SCALE = 1e15


def overflowing(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights, every Linear weight matrix times SCALE: finite, but the outputs overflow."""
    out = {k: (v * SCALE if v.dim() == 2 else v) for k, v in state.items()}
    assert all(bool(torch.isfinite(v).all()) for v in out.values())
    return out


@pytest.fixture
def overflowing_method():
    """A registered method (both tasks) returning the original scaled into overflow; removed afterwards."""
    from unlearn_tool.methods import MethodOutput, MethodParams, register_method, unregister_method

    class OverflowParams(MethodParams):
        lr: float = Field(0.5, gt=0, description="named by the divergence hint")

    def run(ctx, p):
        model = ctx.student()
        model.load_state_dict(overflowing(model.state_dict()))
        return MethodOutput(model=model)

    register_method("test-overflows", OverflowParams, run, summary="test only", tasks=("classification", "regression"),
                    scenarios=("class", "sample", "range"))
    yield "test-overflows"
    unregister_method("test-overflows")


@pytest.fixture(params=["classification", "regression"])
def work(request, tmp_path, digits_dir, diabetes_dir):
    """The user's folder (a copy of the trained model, the model overflowing, a 10% sample request of the task) and
    the request's forget-set size."""
    if request.param == "classification":
        shutil.copy(digits_dir / "mlp.safetensors", tmp_path / "model.safetensors")
        write_request(tmp_path, {"indices": random_indices()}, name="req.yaml")
        forget = len(random_indices())
    else:
        shutil.copy(diabetes_dir / "mlp.safetensors", tmp_path / "model.safetensors")
        write_regression_request(tmp_path, {"indices": diabetes_indices()}, name="req.yaml")
        forget = len(diabetes_indices())
    state = load_file(str(tmp_path / "model.safetensors"))
    save_file(overflowing(state), str(tmp_path / "huge.safetensors"))
    return tmp_path, forget


def test_apply_refuses_a_result_whose_outputs_overflow_and_writes_nothing(work, overflowing_method):
    work, n = work
    before = tree(work)
    r = invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / "out.safetensors", "--method", overflowing_method,
               "--audit", "--quiet")
    rejected(r, "unlearning diverged: test-overflows's result gives NaN/Inf outputs on ", f"{n} of {n} forget", "weights are finite",
             "nothing was written", "lower the learning rate (it was 0.5: try --param lr=0.05", code=1)
    assert tree(work) == before  # no output, no ledger, no report folder


def test_apply_refuses_an_original_whose_outputs_overflow_before_unlearning(work):
    work, n = work
    before = tree(work)
    r = invoke("apply", work / "huge.safetensors", "-r", work / "req.yaml", "-o", work / "out.safetensors", "--method", "finetune", "--quiet")
    rejected(r, f"checkpoint {work / 'huge.safetensors'} gives NaN/Inf outputs on ", "forget", "give a checkpoint whose outputs are finite")
    assert tree(work) == before


@pytest.mark.parametrize("role", ["unlearned", "original", "reference"])
def test_audit_of_a_model_whose_outputs_overflow_is_one_line_and_writes_no_report(work, role):
    work, n = work
    models = {"original": work / "model.safetensors", "unlearned": work / "model.safetensors", "reference": work / "model.safetensors"}
    models[role] = work / "huge.safetensors"
    before = tree(work)
    r = invoke("audit", "-r", work / "req.yaml", "--original", models["original"], "--unlearned", models["unlearned"],
               "--reference", models["reference"], "--report-dir", work / "rep", "--quiet")
    line = rejected(r, f"the {role}", "huge.safetensors gives NaN/Inf outputs on ", f"{n} of {n} forget", "no report was written")
    assert "Input X" not in line and "please report" not in line
    assert ("unlearn again with a lower learning rate" in line) == (role == "unlearned")
    assert tree(work) == before and not (work / "rep").exists()


def test_bench_fails_only_the_overflowing_row_with_a_readable_reason(work, overflowing_method):
    work, n = work
    r = invoke("bench", work / "model.safetensors", "-r", work / "req.yaml", "--methods", f"{overflowing_method},finetune",
               "--param", "finetune.epochs=1", "--seeds", "1", "--device", "cpu", "--report-dir", work / "rep", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    bench = json.loads(r.stdout)
    bad, ok = bench["methods"][overflowing_method], bench["methods"]["finetune"]
    assert bad["status"] == "failed" and bad["error"].startswith(f"diverged: outputs not finite (NaN/Inf) on {n} of {n} forget"), bad["error"]
    assert "lower the learning rate (it was 0.5" in bad["error"] and "ValueError" not in bad["error"]
    assert ok["status"] == "ok" and ok["error"] is None and ok["metrics"]["avg_gap"]["mean"] is not None
    assert f"FAILED: diverged: outputs not finite (NaN/Inf) on {n} of {n} forget" in (work / "rep" / "bench.md").read_text()


def test_bench_refuses_an_original_whose_outputs_overflow(work):
    work, n = work
    r = invoke("bench", work / "huge.safetensors", "-r", work / "req.yaml", "--methods", "finetune", "--seeds", "1", "--device", "cpu",
               "--report-dir", work / "rep", "--quiet")
    rejected(r, "the original", "huge.safetensors gives NaN/Inf outputs on ", "give a checkpoint whose outputs are finite")
    assert not (work / "rep").exists()


def test_where_names_forget_first_and_only_the_sets_that_overflow():
    import numpy as np

    from unlearn_tool.evaluate import non_finite_rows, non_finite_where

    assert non_finite_rows(np.array([[1.0, np.inf], [0.0, 1.0], [np.nan, 2.0]])) == 2
    assert non_finite_rows(torch.tensor([1.0, float("-inf")])) == 1 and non_finite_rows(np.zeros((0, 3))) == 0
    assert non_finite_where({"retain": (0, 9), "forget": (0, 3)}) is None
    assert non_finite_where({"retain": (4, 9), "forget": (3, 3), "test": (1, 5)}) == "3 of 3 forget, 4 of 9 retain and 1 of 5 test samples"
    assert non_finite_where({"test": (2, 5)}) == "2 of 5 test samples"


@pytest.mark.parametrize("keep", ["--keep-on-fail", "--no-keep-on-fail"])
def test_apply_audit_refuses_a_reference_whose_outputs_overflow_before_any_work(work, keep):
    """The request's audit.reference gave NaN/Inf outputs: apply unlearned, published its output and ledger, then
    the audit refused the reference with exit 2 (an input error, yet written files, and no word of them)."""
    import yaml

    work, n = work
    request = yaml.safe_load((work / "req.yaml").read_text())
    request["audit"] = {"reference": "huge.safetensors"}
    (work / "req.yaml").write_text(yaml.safe_dump(request))
    before = tree(work)
    r = invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / "out.safetensors", "--method", "finetune",
               "--param", "epochs=1", "--audit", keep, "--report-dir", work / "rep", "--quiet")
    rejected(r, f"the reference {work / 'huge.safetensors'} gives NaN/Inf outputs on ", f"{n} of {n} forget", "nothing was written",
             "retrain it")
    assert tree(work) == before
