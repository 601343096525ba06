"""Cost follows the work (apply's bounded summary, the original's predictions computed once) and `train --init` (fine-tuning)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from torch import nn

from conftest import invoke, write_request
from unlearn_tool.checkpoint import read_checkpoint, read_metadata_fields
from unlearn_tool.data import LabelledData
from unlearn_tool.evaluate import predict_logits, remember_predictions


def test_apply_summary_samples_retain_and_test_and_says_so(digits_dir, tmp_path):
    req = write_request(tmp_path, {"classes": [3]}, name="req.yaml", method={"name": "rfa", "params": {"epochs": 2, "stop": "epochs"}})
    runs = {}
    for k in ("100", "0"):
        r = invoke("apply", digits_dir / "mlp.safetensors", "-r", req, "-o", tmp_path / f"o{k}.safetensors", "--summary-samples", k,
                   "--json", "--quiet")
        assert r.exit_code == 0, r.stderr
        runs[k] = json.loads(r.stdout)
    sampled, full = runs["100"]["summary_samples"], runs["0"]["summary_samples"]
    assert sampled["forget"] == sampled["forget_total"] == full["forget"]  # the forget set is always whole
    assert sampled["retain"] == sampled["test"] == 100 and sampled["retain_total"] == full["retain"] == 1291
    assert full["test"] == full["test_total"] == 360
    timings = runs["0"]["timings"]  # where the time went; the method's CPU time is not a part of the wall time
    assert timings["method_cpu_s"] > 0 and timings["startup_s"] >= 0 and timings["method_s"] > 0
    assert runs["100"]["after"]["forget_acc"] == runs["0"]["after"]["forget_acc"]
    # same seed, same output whatever the summary evaluated
    assert load_file(str(tmp_path / "o100.safetensors")).keys() == load_file(str(tmp_path / "o0.safetensors")).keys()
    assert all(torch.equal(a, b) for a, b in zip(load_file(str(tmp_path / "o100.safetensors")).values(),
                                                  load_file(str(tmp_path / "o0.safetensors")).values()))


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return self.fc(x)


def test_predictions_are_remembered_only_while_the_weights_are_unchanged():
    model, data = Counting(), LabelledData.from_tensors(torch.randn(10, 4), torch.arange(10) % 3)
    predict_logits(model, data, torch.device("cpu"))
    predict_logits(model, data, torch.device("cpu"))
    assert model.seen == 20  # outside the block: every call computes
    with remember_predictions(model):
        a, _ = predict_logits(model, data, torch.device("cpu"))
        b, _ = predict_logits(model, data, torch.device("cpu"), batch_size=3)
        assert model.seen == 30 and torch.equal(a, b)
        a.zero_()  # callers get copies
        assert not torch.equal(predict_logits(model, data, torch.device("cpu"))[0], a)
        other = LabelledData.from_tensors(torch.randn(4, 4), torch.zeros(4, dtype=torch.long))
        predict_logits(model, other, torch.device("cpu"))
        assert model.seen == 34
        with torch.no_grad():
            model.fc.weight.add_(1.0)  # changed in place: recomputed
        predict_logits(model, data, torch.device("cpu"))
        assert model.seen == 44
    predict_logits(model, data, torch.device("cpu"))
    assert model.seen == 54


def test_train_init_fine_tunes_from_a_pretrained_checkpoint(digits_dir, tmp_path):
    """A 12-class head cannot take the 10-class checkpoint's head: it starts fresh; every other tensor comes from --init."""
    req = write_request(tmp_path, {"classes": [3]}, name="req.yaml", kwargs={"num_classes": 12})
    init = digits_dir / "mlp.safetensors"
    r = invoke("train", "-r", req, "-o", tmp_path / "ft.safetensors", "--init", init, "--epochs", "1", "--lr", "1e-9", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["init_fresh"] == ["head.bias", "head.weight"]
    tuned, pre = load_file(str(tmp_path / "ft.safetensors")), load_file(str(init))
    assert tuned["head.weight"].shape == (12, 64)
    assert all(torch.allclose(tuned[k], pre[k], atol=1e-6) for k in pre if not k.startswith("head."))
    fields = read_metadata_fields(read_checkpoint(tmp_path / "ft.safetensors")[1])
    assert fields["init_sha256"] and fields["trained_on"] == "train"
    r = invoke("train", "-r", req, "-o", tmp_path / "ft.retrain.safetensors", "--init", init, "--exclude-forget", "--epochs", "1", "--json", "--quiet")
    assert r.exit_code == 0 and json.loads(r.stdout)["train_size"] == 1291


def test_in_memory_subsets_are_views_not_copies():
    x, y = torch.randn(50, 3, 4, 4), torch.arange(50) % 5
    data = LabelledData.from_tensors(x, y)
    sub = data.subset(torch.arange(10, 40))
    subsub = sub.subset([0, 5, 29])
    assert sub._x.data_ptr() == subsub._x.data_ptr() == x.data_ptr()  # one tensor, however deep the subsets
    assert torch.equal(subsub.x, x[[10, 15, 39]]) and subsub.targets.tolist() == y[[10, 15, 39]].tolist()
    gen = torch.Generator().manual_seed(0)
    xb, yb = next(sub.batches(8, shuffle=True, generator=gen))
    order = torch.randperm(30, generator=torch.Generator().manual_seed(0))[:8]
    assert torch.equal(xb, x[10 + order]) and torch.equal(yb, y[10 + order])
    assert torch.equal(sub.take(torch.tensor([1, 2]))[0], x[[11, 12]])
    assert sub.input_shape() == (3, 4, 4)


def test_training_skips_a_last_batch_of_one_sample():
    """N % batch_size == 1 used to crash `unlearn train` on BatchNorm models (a ResNet at 1x1 spatial size)."""
    from unlearn_tool.training import TrainConfig, fit

    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    data = LabelledData.from_tensors(torch.randn(65, 4), torch.arange(65) % 3)
    fit(model, data, TrainConfig(epochs=2, batch_size=64), torch.device("cpu"), torch.Generator().manual_seed(0))


def test_rfa_in_apply_reuses_the_summarys_predictions_of_the_original(digits_sample_job, tmp_path, monkeypatch):
    """apply's before-summary runs the original once on the forget set and the test sample; RFA takes those logits
    (the forget set's teacher outputs, the held-out sample) instead of a second pass. A test set larger than the
    summary's sample (digits' test set four times) is where the held-out sample used to be drawn separately."""
    import dataclasses

    from unlearn_tool.methods import rfa
    from unlearn_tool.methods.base import run_method
    from unlearn_tool.pipeline import SUMMARY_SAMPLES, plan_apply, unlearn_step

    base = digits_sample_job
    test = base.splits.test.subset(torch.arange(4 * len(base.splits.test)) % len(base.splits.test))
    job = dataclasses.replace(base, splits=dataclasses.replace(base.splits, test=test))
    assert len(job.splits.test) > SUMMARY_SAMPLES
    plan = plan_apply(job.request, base.artifact.path, "rfa", {"epochs": 1, "stop": "epochs"}, tmp_path / "out.safetensors")
    seen, teacher_rows = [], []
    probe = 2  # RFA traces shapes with 1- or 2-sample retain batches through the original: not passes over a data set
    job.original.register_forward_hook(lambda m, i, o: seen.append(len(i[0])) if m is job.original and len(i[0]) > probe else None)
    real_teacher = rfa._Net.teacher
    monkeypatch.setattr(rfa._Net, "teacher", lambda self, z, energy=None: teacher_rows.append(len(z)) or real_teacher(self, z, energy))
    try:
        step = unlearn_step(job, plan)
        in_apply, seen_in_apply = sum(teacher_rows), sum(seen)
        teacher_rows.clear()
        alone, _ = run_method("rfa", job.context(), plan.params)  # alone: nothing remembered, the teacher runs on the forget set
    finally:
        job.original._forward_hooks.clear()
    n_forget = len(job.splits.forget)
    assert seen_in_apply == n_forget + 2 * SUMMARY_SAMPLES  # the before-summary's passes, nothing more inside apply
    assert sum(seen) - seen_in_apply == SUMMARY_SAMPLES  # alone, RFA runs the original on its held-out sample itself
    assert sum(teacher_rows) - in_apply == n_forget
    assert step.summary_samples["test"] == SUMMARY_SAMPLES
    # the reused logits are the teacher's: the same unlearned weights as the run that computed them itself
    merged, own = step.model.state_dict(), alone.model.state_dict()
    assert any(not torch.equal(merged[k], job.original.state_dict()[k]) for k in merged)
    assert all(torch.allclose(merged[k].float(), own[k].float(), atol=1e-5) for k in merged)
