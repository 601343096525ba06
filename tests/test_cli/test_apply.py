"""`unlearn apply` through the real CLI on real data (scikit-learn digits): it forgets, keeps utility, writes usable outputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import invoke, random_indices, write_request, write_shaded_images
from unlearn_tool.checkpoint import read_checkpoint, sha256_file
from unlearn_tool.models import MLP


def _apply_json(*args):
    result = invoke("apply", *args, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_class_unlearning_forgets_the_class_and_keeps_the_rest(digits_dir, tmp_path):
    before_sha = sha256_file(digits_dir / "mlp.safetensors")
    out = _apply_json(digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", tmp_path / "u.safetensors")
    before, after = out["before"], out["after"]
    assert before["forget_acc"] > 0.9
    assert after["forget_acc"] <= 0.05
    assert after["test_forgotten_acc"] <= 0.05
    assert after["test_remaining_acc"] >= before["test_remaining_acc"] - 0.02
    assert after["retain_acc"] >= before["retain_acc"] - 0.02
    assert out["scenario"] == "class" and out["forget_size"] > 100
    assert sha256_file(digits_dir / "mlp.safetensors") == before_sha  # input untouched
    assert out["output_sha256"] == sha256_file(tmp_path / "u.safetensors")


def test_sample_unlearning_from_indices_file_matches_retraining(digits_dir, tmp_path):
    idx_file = tmp_path / "forget.txt"
    idx_file.write_text("# 10% of digits train\n" + "\n".join(map(str, random_indices())) + "\n")
    req = write_request(tmp_path, {"indices_file": "forget.txt"})  # relative to the request's folder
    out = _apply_json(digits_dir / "mlp.safetensors", "-r", req, "-o", tmp_path / "u.safetensors")
    assert out["scenario"] == "sample" and out["forget_size"] == 144

    from unlearn_tool.pipeline import prepare, utility

    retrained = prepare(req, digits_dir / "mlp.retrain_sample.safetensors", device="cpu")
    ref = utility(retrained.original, retrained)
    # forgotten samples look like unseen data (retrain level), not like errors
    assert abs(out["after"]["forget_acc"] - ref["forget_acc"]) <= 0.05
    assert out["after"]["forget_acc"] < out["before"]["forget_acc"] or out["before"]["forget_acc"] <= ref["forget_acc"]
    assert out["after"]["test_acc"] >= out["before"]["test_acc"] - 0.02


def test_merged_output_is_a_drop_in_replacement(digits_dir, tmp_path):
    invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", tmp_path / "u.safetensors", "--quiet")
    original = load_file(str(digits_dir / "mlp.safetensors"))
    merged, metadata = read_checkpoint(tmp_path / "u.safetensors")
    assert list(merged) == list(original) or set(merged) == set(original)
    assert all(merged[k].shape == original[k].shape and merged[k].dtype == original[k].dtype for k in original)
    model = MLP(num_classes=10)
    model.load_state_dict(merged, strict=True)
    assert any(not torch.equal(merged[k], original[k]) for k in original)
    for key in ("model_arch", "request_id", "request_sha256", "method", "params", "parent_sha256", "tool_version", "seed", "wall_time_s"):
        assert f"unlearn.{key}" in metadata, key
    assert metadata["unlearn.parent_sha256"] == sha256_file(digits_dir / "mlp.safetensors")
    assert metadata["unlearn.method"] == "rfa"


def test_adapter_output_loads_with_peft_and_matches_merged(digits_dir, tmp_path):
    from peft import PeftModel

    cpu = ("--device", "cpu")  # two runs compared: only CPU runs repeat exactly
    r1 = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", tmp_path / "adapter", "--adapter-only", *cpu, "--quiet")
    assert r1.exit_code == 0, r1.stderr
    assert "still in the base weights" in r1.stderr
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    r2 = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", tmp_path / "merged.safetensors", *cpu, "--quiet")
    assert r2.exit_code == 0, r2.stderr

    base = MLP(num_classes=10)
    base.load_state_dict(load_file(str(digits_dir / "mlp.safetensors")))
    with_adapter = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    merged = MLP(num_classes=10)
    merged.load_state_dict(load_file(str(tmp_path / "merged.safetensors")))
    merged.eval()
    x = torch.rand(64, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(with_adapter(x), merged(x), atol=1e-4)
        assert (with_adapter(x).argmax(1) == merged(x).argmax(1)).all()


def test_same_seed_same_output_on_cpu(digits_dir, tmp_path):
    for name in ("a", "b"):
        r = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", tmp_path / f"{name}.safetensors", "--device", "cpu", "--quiet")
        assert r.exit_code == 0, r.stderr
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", tmp_path / "c.safetensors", "--seed", "5", "--quiet")
    c = load_file(str(tmp_path / "c.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_existing_output_is_kept_without_force(digits_dir, tmp_path):
    import shutil

    out = tmp_path / "u.safetensors"
    shutil.copy(digits_dir / "mlp.safetensors", out)
    before = sha256_file(out)
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", out, "--quiet")
    assert r.exit_code == 2 and "--force" in r.stderr
    assert sha256_file(out) == before
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", out, "--quiet", "--force")
    assert r.exit_code == 0, r.stderr
    assert read_checkpoint(out)[1]["unlearn.method"] == "rfa"


def test_default_output_path_is_beside_the_input(digits_dir, tmp_path):
    import shutil

    ckpt = tmp_path / "model.safetensors"
    shutil.copy(digits_dir / "mlp.safetensors", ckpt)
    req = write_request(tmp_path, {"classes": [1]})
    r = invoke("apply", ckpt, "-r", req, "--quiet")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "model.unlearned.safetensors").exists()


def test_user_architecture_via_python_source(digits_dir, tmp_path):
    (tmp_path / "my_nets.py").write_text(
        "import torch.nn as nn\n"
        "def tiny(num_classes=10):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, num_classes))\n"
    )
    req = write_request(tmp_path, {"classes": [7]}, arch="python:my_nets:tiny")
    assert invoke("train", "-r", req, "-o", tmp_path / "tiny.safetensors", "--quiet", "--epochs", "30").exit_code == 0
    out = _apply_json(tmp_path / "tiny.safetensors", "-r", req, "-o", tmp_path / "u.safetensors")
    assert out["before"]["forget_acc"] > 0.85
    assert out["after"]["forget_acc"] <= 0.05
    assert out["after"]["test_remaining_acc"] >= out["before"]["test_remaining_acc"] - 0.03


@pytest.mark.parametrize("arch", ["builtin:small_cnn"])
def test_class_unlearning_on_a_cnn(tmp_path, arch):
    req = write_request(tmp_path, {"classes": [5]}, arch=arch)
    assert invoke("train", "-r", req, "-o", tmp_path / "cnn.safetensors", "--quiet").exit_code == 0
    out = _apply_json(tmp_path / "cnn.safetensors", "-r", req, "-o", tmp_path / "u.safetensors")
    assert out["before"]["forget_acc"] > 0.85
    assert out["after"]["forget_acc"] <= 0.05
    assert out["after"]["test_remaining_acc"] >= out["before"]["test_remaining_acc"] - 0.03


def test_validate_and_inspect(digits_dir):
    r = invoke("validate", "-r", digits_dir / "class.yaml", digits_dir / "mlp.safetensors", "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["ok"] and info["num_classes"] == 10 and info["scenario"] == "class"
    assert info["forget_size"] + info["retain_size"] == info["train_size"] == 1437
    r = invoke("inspect", digits_dir / "mlp.safetensors", "--json")
    assert r.exit_code == 0
    info = json.loads(r.stdout)
    assert info["parameters"] == sum(p.numel() for p in MLP().parameters())
    assert info["metadata"]["model_arch"] == "builtin:mlp"


def test_methods_lists_rfa_with_parameters():
    r = invoke("methods")
    assert r.exit_code == 0 and "rfa" in r.stdout and "retrain" in r.stdout
    r = invoke("methods", "rfa", "--json")
    names = [p["name"] for p in json.loads(r.stdout)["params"]]
    assert {"rank", "alpha", "target_layers", "epochs", "lr"} <= set(names)


@pytest.mark.parametrize("arch", ["torchvision:resnet18", "torchvision:mobilenet_v3_small"])
def test_rfa_runs_on_torchvision_models_with_default_parameters(tmp_path, arch):
    """ResNet (BatchNorm, downsample convs) and MobileNet (depthwise convs, which LoRA skips) with no tuning."""
    data = write_shaded_images(tmp_path, 48, 4, (3, 32, 32), 0.2, 16)
    req = write_request(tmp_path, {"classes": [1]}, arch=arch, kwargs={"num_classes": 4}, extra={"data": data})
    r = invoke("train", "-r", req, "-o", tmp_path / "m.safetensors", "--epochs", "3", "--quiet")
    assert r.exit_code == 0, r.stderr
    out = _apply_json(tmp_path / "m.safetensors", "-r", req, "-o", tmp_path / "u.safetensors", "--param", "epochs=5")
    assert out["info"]["adapted_layers"] >= 2  # target_layers auto: the layers after the cut (docs/rfa.md), depthwise convs skipped
    assert out["after"]["forget_acc"] <= out["before"]["forget_acc"]
    merged = load_file(str(tmp_path / "u.safetensors"))
    assert set(merged) == set(load_file(str(tmp_path / "m.safetensors")))  # BatchNorm buffers included
    r = invoke("apply", tmp_path / "m.safetensors", "-r", req, "-o", tmp_path / "adapter", "--adapter-only", "--param", "epochs=5", "--quiet")
    assert r.exit_code == 0, r.stderr


@pytest.mark.parametrize("method", ["finetune", "l1-sparse", "scrub"])
def test_batchnorm_models_train_when_a_pass_would_end_on_one_sample(tmp_path, method):
    """A retain set of 2 x 64 + 1 samples: a shuffled pass used to end on a batch of one, which BatchNorm at 1x1 spatial
    size refuses in training mode ("Expected more than 1 value per channel"); found by benchmarks/pretrained_digits.py
    --arch resnet. The last sample now joins the batch before it."""
    (tmp_path / "bn_nets.py").write_text(
        "import torch.nn as nn\n"
        "def net(num_classes=3):\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8, num_classes))\n"
    )
    data = write_shaded_images(tmp_path, 130, 3, (1, 6, 6), 0.3, 30)
    req = write_request(tmp_path, {"indices": [0]}, arch="python:bn_nets:net", kwargs={"num_classes": 3},
                        extra={"data": {**data, "batch_size": 64}})
    r = invoke("train", "-r", req, "-o", tmp_path / "m.safetensors", "--epochs", "2", "--batch-size", "64", "--quiet")
    assert r.exit_code == 0, r.stderr
    out = _apply_json(tmp_path / "m.safetensors", "-r", req, "-o", tmp_path / "u.safetensors", "--method", method,
                      "--param", "epochs=1", "--param", "batch_size=64")
    assert out["retain_size"] == 129 and out["method"] == method


def test_shuffled_passes_never_end_on_one_sample_and_cover_every_sample_once():
    from unlearn_tool.data import LabelledData

    xs, ys = torch.arange(129.0).view(-1, 1), torch.zeros(129, dtype=torch.long)
    for data, shuffle in [(LabelledData(torch.utils.data.TensorDataset(xs, ys), ys, x=x), shuffle)  # in memory, and via a DataLoader
                          for x in (xs, None) for shuffle in (True, False)]:
        sizes, seen = [], []
        for x, _ in data.batches(64, shuffle=shuffle, generator=torch.Generator().manual_seed(0)):
            sizes.append(len(x))
            seen += x.view(-1).long().tolist()
        assert sorted(seen) == list(range(129))
        assert sizes == ([64, 65] if shuffle else [64, 64, 1])  # evaluation passes keep their batches


def test_single_sample_batchnorm_guard_uses_running_statistics_only_while_a_method_runs():
    from unlearn_tool.training import single_sample_batchnorm

    bn = torch.nn.BatchNorm1d(3).train()
    bn.running_mean.fill_(1.0)
    x = torch.tensor([[2.0, 3.0, 4.0]])
    with single_sample_batchnorm():
        out = bn(x)
        assert bn.training  # switched back after the call
        torch.testing.assert_close(out, (x - 1.0) / torch.sqrt(torch.tensor(1.0 + bn.eps)))
        assert torch.equal(bn.running_mean, torch.ones(3)) and int(bn.num_batches_tracked) == 0
        bn(torch.randn(4, 3))  # a real batch still trains the statistics
        assert int(bn.num_batches_tracked) == 1
    with pytest.raises(ValueError, match="Expected more than 1 value"):
        bn(x)  # outside a method's run, torch's own behaviour
