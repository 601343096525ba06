"""RFA-LoRA's pieces on small fixed inputs: targets, layer choice, residual capture, and what training may touch."""

from __future__ import annotations

import torch
from torch import nn

from unlearn_tool import lora
from unlearn_tool.methods import parse_params, run_method
from unlearn_tool.methods.rfa import _heldout_targets, _other_class_targets


def test_other_class_targets_remove_the_forgotten_class_and_keep_proportions():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]))
    t = _other_class_targets(logits, [1])
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert torch.all(t[:, 1] == 0)
    assert torch.allclose(t[0], torch.tensor([0.7 / 0.8, 0.0, 0.1 / 0.8]))
    assert torch.allclose(t[1], torch.tensor([0.25, 0.0, 0.75]))


def test_heldout_targets_match_heldout_confidence_quantiles_by_rank():
    # four forget samples, all labelled 0, teacher margins increasing with the index
    forget_logits = torch.tensor([[2.0, 0.0, -1.0], [3.0, 0.0, -1.0], [4.0, 0.0, -1.0], [6.0, 0.0, -1.0]])
    y = torch.zeros(4, dtype=torch.long)
    # held-out true-class confidences 0.4, 0.6, 0.8, 0.9 (label 0)
    conf = torch.tensor([0.4, 0.6, 0.8, 0.9])
    held = torch.stack([conf.log(), ((1 - conf) / 2).log(), ((1 - conf) / 2).log()], 1)
    t = _heldout_targets(forget_logits, y, held, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(t.sum(1), torch.ones(4))
    teacher_conf = forget_logits.softmax(1)[:, 0]
    expected = torch.minimum(conf, teacher_conf)  # k-th least confident gets the k-th quantile, never more than now
    assert torch.allclose(t[:, 0], expected, atol=1e-6)
    # the rest keeps the teacher's proportions between classes 1 and 2
    p = forget_logits.softmax(1)
    assert torch.allclose(t[:, 1] / t[:, 2], p[:, 1] / p[:, 2], atol=1e-5)


def test_lora_skips_depthwise_and_dilated_convs_and_attention_projections():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.depthwise = nn.Conv2d(8, 8, 3, groups=8)
            self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2)  # peft's LoRA branch would drop the dilation
            self.attn = nn.MultiheadAttention(8, 2)
            self.head = nn.Linear(8, 4)

    names = lora.lora_capable_layers(Net())
    assert names == ["conv", "head"]
    assert lora.select_layers(Net(), "head") == ["head"]
    assert lora.select_layers(Net(), "last:2") == ["conv", "head"]
    assert lora.select_layers(Net(), ["co.*"]) == ["conv"]


def test_residuals_start_at_zero_and_the_injected_model_equals_the_original():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    peft_model = lora.inject(base, ["1", "3"], rank=2, alpha=4).eval()
    x = torch.rand(5, 4, 4)
    with torch.no_grad(), lora.capture_residuals(peft_model) as res:
        out = peft_model(x)
    assert set(n.split(".")[-1] for n in res) == {"1", "3"}
    assert all(torch.count_nonzero(r) == 0 for r in res.values())
    assert torch.allclose(out, base(x))


def test_rfa_trains_only_adapters_and_leaves_the_original_untouched(digits_job):
    before = {k: v.clone() for k, v in digits_job.original.state_dict().items()}
    out, _ = run_method("rfa", digits_job.context(), parse_params("rfa", {"epochs": 2, "stop": "epochs"}))
    assert all(torch.equal(before[k], v) for k, v in digits_job.original.state_dict().items())
    trainable = [n for n, p in out.adapter_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(torch.count_nonzero(p) > 0 for n, p in out.adapter_model.named_parameters() if "lora_B" in n)
    assert out.info["epochs_run"] == 2 and out.info["stop_reason"] == "epochs"


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def test_heldout_targets_reproduce_the_heldout_error_rate_on_digits(digits_sample_job):
    # the targets must not only lower confidence: as many of them must be errors (argmax not the label) as the
    # teacher makes on held-out data, although the teacher gets (nearly) every forget sample right
    from unlearn_tool.evaluate import predict_logits

    job = digits_sample_job
    t_forget, y_forget = predict_logits(job.original, job.splits.forget, "cpu", 256)
    t_held, y_held = predict_logits(job.original, job.splits.test, "cpu", 256)
    heldout_error, teacher_error = 1 - _accuracy(t_held, y_held), 1 - _accuracy(t_forget, y_forget)
    assert heldout_error > teacher_error + 0.01, (heldout_error, teacher_error)  # memorised: there is something to forget
    targets = _heldout_targets(t_forget, y_forget, t_held, y_held)
    target_error = float((targets.argmax(1) != y_forget).float().mean())
    assert abs(target_error - heldout_error) <= 1.5 / len(y_forget) + 0.005, (target_error, heldout_error)


def test_rfa_sample_unlearning_lands_near_heldout_accuracy_and_keeps_utility(digits_sample_job):
    # end to end, both schedules: forget accuracy falls from the memorised level to about the held-out accuracy,
    # test accuracy stays within a point of the original's
    from unlearn_tool.pipeline import utility

    job = digits_sample_job
    before = utility(job.original, job)
    for params in ({}, {"lr_schedule": "cosine", "epochs": 10, "stop": "epochs", "w_forget": 10}):
        out, _ = run_method("rfa", job.context(), parse_params("rfa", params))
        after = utility(out.model, job)
        assert after["forget_acc"] < before["forget_acc"], (params, before, after)
        assert abs(after["forget_acc"] - before["test_acc"]) <= 0.015, (params, before, after)
        assert after["test_acc"] >= before["test_acc"] - 0.01, (params, before, after)


def test_rfa_runs_when_the_retain_set_is_too_small_to_hold_samples_back(digits_dir, diabetes_dir, tmp_path):
    """Forgetting all but 3 train samples leaves no retained sample to hold back for the stopping rule's agreement or
    drift check (a quarter of 3 rounds to none): RFA still runs, on classification and regression, instead of failing
    with torch.cat of an empty list."""
    from tests.conftest import DIABETES_TRAIN, DIGITS_TRAIN, write_regression_request, write_request
    from unlearn_tool.pipeline import prepare

    cases = ((write_request(tmp_path, {"indices": list(range(3, DIGITS_TRAIN))}, name="c.yaml"), digits_dir / "mlp.safetensors"),
             (write_regression_request(tmp_path, {"indices": list(range(3, DIABETES_TRAIN))}, name="r.yaml"),
              diabetes_dir / "mlp.safetensors"))
    for request, checkpoint in cases:
        job = prepare(request, checkpoint, device="cpu")
        assert len(job.splits.retain) == 3
        out, _ = run_method("rfa", job.context(), parse_params("rfa", {"epochs": 1}))
        assert all(torch.isfinite(v).all() for v in out.model.state_dict().values())
