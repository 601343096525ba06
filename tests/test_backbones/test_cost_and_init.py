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
