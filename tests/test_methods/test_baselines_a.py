"""Group A baselines (finetune, neggrad, neggrad+, random-label, salun, l1-sparse) on real digits models.

Every method runs with its *default* parameters on both scenarios and must move the forget
figures the right way while keeping retain accuracy above a stated floor. Reference figures
(seed 0, 2 CPU cores): original forget/retain/test 0.993/0.997/0.967 (class 3) and
0.986/0.998/0.967 (10% samples); retrained forget accuracy 0.0 (class) and 0.965 (sample).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import invoke
from unlearn_tool.errors import MethodError
from unlearn_tool.evaluate import predict_logits
from unlearn_tool.methods import UnlearnContext, parse_params, run_method
from unlearn_tool.methods.salun import saliency_mask
from unlearn_tool.pipeline import utility

GROUP_A = ["finetune", "neggrad", "neggrad+", "random-label", "salun", "l1-sparse"]


def make_ctx(job, seed=None) -> UnlearnContext:
    return (job if seed is None else job.for_seed(seed)).context()


def forget_confidence(model, job) -> float:
    logits, y = predict_logits(model, job.splits.forget, job.device)
    return float(logits.softmax(1).gather(1, y[:, None]).mean())


def forget_ce(model, job) -> float:
    logits, y = predict_logits(model, job.splits.forget, job.device)
    return float(torch.nn.functional.cross_entropy(logits, y))


def run(name, job, seed=None, **params):
    out, wall = run_method(name, make_ctx(job, seed), parse_params(name, params))
    return out, utility(out.model, job), wall


@pytest.fixture(scope="module")
def references(digits_dir, digits_job, digits_sample_job):
    """Original and retrained figures per scenario."""
    refs = {}
    for scenario, job in (("class", digits_job), ("sample", digits_sample_job)):
        retrained, _ = job.load(digits_dir / f"mlp.retrain_{scenario}.safetensors")
        refs[scenario] = {"original": utility(job.original, job), "retrain": utility(retrained, job),
                          "original_conf": forget_confidence(job.original, job), "original_ce": forget_ce(job.original, job)}
    return refs


# Class unlearning (forget digit 3): (method, max forget accuracy, min retain accuracy, min test accuracy on the other classes).
CLASS_CASES = [
    ("finetune", 0.25, 0.97, 0.93),      # observed 0.09..0.14 / 0.998..1.0 / 0.963..0.972 over seeds 0..2
    ("l1-sparse", 0.05, 0.97, 0.93),     # observed 0.0..0.007 / 0.996..0.998 / 0.960..0.972
    ("neggrad", 0.01, 0.93, 0.88),       # observed 0.0 / 0.953..0.981 / 0.920..0.954 (stops once Df is forgotten)
    ("neggrad+", 0.01, 0.93, 0.88),      # observed 0.0 / 0.956..0.988 / 0.920..0.954
    ("random-label", 0.01, 0.97, 0.93),  # observed 0.0 / 0.990..0.991 / 0.966..0.972
    ("salun", 0.05, 0.97, 0.93),         # observed 0.0 / 0.985..0.988 / 0.963..0.969
]


@pytest.mark.parametrize("name,max_forget,min_retain,min_test_rest", CLASS_CASES, ids=[c[0] for c in CLASS_CASES])
def test_class_unlearning_defaults(name, max_forget, min_retain, min_test_rest, digits_job, references):
    out, after, _ = run(name, digits_job)
    assert references["class"]["original"]["forget_acc"] > 0.98
    assert after["forget_acc"] <= max_forget, after
    assert after["test_forgotten_acc"] <= max_forget + 0.05, after  # unseen 3s are forgotten too, not just the training 3s
    assert after["retain_acc"] >= min_retain, after
    assert after["test_remaining_acc"] >= min_test_rest, after
    assert not out.model.training


# Sample unlearning (10% random): forget accuracy never above the original's and never far below retrain level; the
# forget loss must rise by half at least (an unchanged model fails this; measured: 1.9x..2.4x for the fine-tuning
# methods, 5.6x..5.9x for the relabelling ones); the relabelling methods must also cut forget confidence clearly.
SAMPLE_CASES = [
    ("finetune", None),      # observed forget 0.972..0.986, conf 0.964..0.970, retain 0.999..1.0
    ("l1-sparse", None),     # observed 0.965..0.979, conf 0.952..0.956
    ("neggrad", None),       # observed 0.958..0.965 (stops at the test accuracy 0.967), retain 0.988..0.997
    ("neggrad+", None),      # observed 0.965..0.972, conf 0.960..0.963
    ("random-label", 0.10),  # observed 0.972..0.986, conf 0.809..0.810 (original 0.970)
    ("salun", 0.10),         # observed 0.965..0.986, conf 0.815..0.817
]


@pytest.mark.parametrize("name,min_conf_drop", SAMPLE_CASES, ids=[c[0] for c in SAMPLE_CASES])
def test_sample_unlearning_defaults(name, min_conf_drop, digits_sample_job, references):
    ref = references["sample"]
    out, after, _ = run(name, digits_sample_job)
    assert after["forget_acc"] <= ref["original"]["forget_acc"], after
    assert after["forget_acc"] >= ref["retrain"]["forget_acc"] - 0.05, after  # no over-forgetting below retrain level
    assert after["retain_acc"] >= 0.97, after
    assert after["test_acc"] >= 0.94, after
    conf = forget_confidence(out.model, digits_sample_job)
    assert conf <= ref["original_conf"] + 0.005, conf
    assert forget_ce(out.model, digits_sample_job) >= 1.5 * ref["original_ce"], "the forget loss barely moved: nothing was forgotten"
    if min_conf_drop is not None:
        assert conf <= ref["original_conf"] - min_conf_drop, conf
    if name == "neggrad":
        assert out.info["stop_reason"] == "criterion"
        assert after["forget_acc"] <= ref["original"]["test_acc"]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_salun_changes_only_salient_weights(optimizer, digits_job):
    ctx = make_ctx(digits_job)
    mask = saliency_mask(ctx.student(), ctx.forget, ctx.device, ctx.batch_size, 0.3)
    out, _ = run_method("salun", ctx, parse_params("salun", {"mask_ratio": 0.3, "epochs": 2, "optimizer": optimizer,
                                                              "lr": 0.01 if optimizer == "sgd" else 1e-3, "weight_decay": 5e-4}))
    before, after = dict(digits_job.original.named_parameters()), dict(out.model.named_parameters())
    assert set(mask) == set(before)
    assert abs(sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values()) - 0.3) < 1e-3
    changed_inside = 0
    for name, m in mask.items():
        assert torch.equal(after[name].detach()[~m], before[name].detach()[~m]), f"{name}: a masked-out weight moved"
        changed_inside += int((after[name].detach()[m] != before[name].detach()[m]).sum())
    assert changed_inside > 0.5 * sum(int(m.sum()) for m in mask.values())
    assert utility(out.model, digits_job)["forget_acc"] < 0.5


def test_same_seed_same_weights_on_cpu(digits_sample_job):
    a, _, _ = run("random-label", digits_sample_job, seed=5, epochs=2)
    b, _, _ = run("random-label", digits_sample_job, seed=5, epochs=2)
    c, _, _ = run("random-label", digits_sample_job, seed=6, epochs=2)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_l1_sparse_shrinks_weights_and_rejects_the_02_pitfall(digits_job):
    ft, _, _ = run("finetune", digits_job, epochs=3)
    l1, _, _ = run("l1-sparse", digits_job, epochs=3)
    norm = lambda m: float(sum(q.detach().abs().sum() for q in m.parameters()))  # noqa: E731
    assert norm(l1.model) < 0.95 * norm(ft.model)
    assert l1.info["l1_norm"] == pytest.approx(norm(l1.model), rel=1e-4)
    with pytest.raises(MethodError, match="gamma"):
        parse_params("l1-sparse", {"gamma": 0.2})


def test_neggrad_without_stop_runs_every_epoch(digits_job):
    out, _, _ = run("neggrad", digits_job, epochs=2, lr=1e-4, stop="epochs")
    assert out.info["epochs_run"] == 2 and out.info["stop_reason"] == "epochs"


def test_cli_apply_finetune(digits_dir, tmp_path):
    out = tmp_path / "ft.safetensors"
    result = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "--method", "finetune",
                    "--param", "epochs=2", "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    state = load_file(str(out))
    original = load_file(str(digits_dir / "mlp.safetensors"))
    assert set(state) == set(original)
    from unlearn_tool.models import MLP

    MLP().load_state_dict(state, strict=True)
    assert any(not torch.equal(state[k], original[k]) for k in state)
