"""Every class of bad input: exit 2, one line naming the problem and the fix, no output written, inputs untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import invoke, write_request
from helpers import rejected
from unlearn_tool.checkpoint import sha256_file


def _assert_rejected(result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def _apply(digits_dir, req, out, *extra):
    return invoke("apply", digits_dir / "mlp.safetensors", "-r", req, "-o", out, "--quiet", *extra)


BAD_REQUESTS = {
    "malformed_yaml": ("version: 1\nid: [unclosed\n", ["malformed YAML", "line"]),
    "not_a_mapping": ("- just\n- a list\n", ["expected a mapping"]),
    "unknown_key": (None, ["forget.colour", "unknown key", "classes"]),
    "missing_model": (None, ["model", "required"]),
    "bad_version": (None, ["version", "supported"]),
    "both_classes_and_indices": (None, ["exactly one of classes, indices"]),
    "bad_arch": (None, ["model.arch", "torchvision:<name>"]),
    "bad_source": (None, ["unknown data source"]),
    "duplicate_indices": (None, ["repeats"]),
}


def _bad_request_text(name: str, tmp_path) -> str:
    text, _ = BAD_REQUESTS[name]
    if text is not None:
        return text
    good = yaml.safe_load(write_request(tmp_path, {"classes": [3]}, name="good.yaml").read_text())
    if name == "unknown_key":
        good["forget"]["colour"] = "red"
    elif name == "missing_model":
        del good["model"]
    elif name == "bad_version":
        good["version"] = 7
    elif name == "both_classes_and_indices":
        good["forget"]["indices"] = [1, 2]
    elif name == "bad_arch":
        good["model"]["arch"] = "resnet18"
    elif name == "bad_source":
        good["data"]["train"]["source"] = "parquet"
    elif name == "duplicate_indices":
        good["forget"] = {"indices": [4, 4, 5]}
    return yaml.safe_dump(good)


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_schema_errors(digits_dir, tmp_path, name):
    req = tmp_path / "bad.yaml"
    req.write_text(_bad_request_text(name, tmp_path))
    out = tmp_path / "out.safetensors"
    _assert_rejected(_apply(digits_dir, req, out), *BAD_REQUESTS[name][1])
    assert not out.exists()
    _assert_rejected(invoke("validate", "-r", req), *BAD_REQUESTS[name][1])


@pytest.mark.parametrize(
    "forget, fragments",
    [
        ({"classes": [12]}, ["class 12", "outside the model's 10 classes"]),
        ({"indices": [5, 99999]}, ["index 99999", "out of range", "1437"]),
        ({"indices_file": "missing.txt"}, ["indices_file", "missing.txt"]),
        ({"classes": list(range(10))}, ["nothing is retained"]),
    ],
)
def test_request_inconsistent_with_data(digits_dir, tmp_path, forget, fragments):
    req = write_request(tmp_path, forget)
    out = tmp_path / "out.safetensors"
    _assert_rejected(_apply(digits_dir, req, out), *fragments)
    assert not out.exists()


def test_class_absent_from_data(digits_dir, tmp_path):
    train_req = write_request(tmp_path, {"classes": [3]}, kwargs={"num_classes": 12}, name="train.yaml")
    ckpt = tmp_path / "m12.safetensors"
    assert invoke("train", "-r", train_req, "-o", ckpt, "--epochs", "1", "--quiet").exit_code == 0
    req = write_request(tmp_path, {"classes": [11]}, kwargs={"num_classes": 12})
    _assert_rejected(invoke("apply", ckpt, "-r", req, "-o", tmp_path / "o.safetensors", "--quiet"), "class 11", "no sample")


def test_non_integer_line_in_indices_file(digits_dir, tmp_path):
    (tmp_path / "idx.txt").write_text("1\n2\nthree\n")
    req = write_request(tmp_path, {"indices_file": "idx.txt"})
    r = _apply(digits_dir, req, tmp_path / "o.safetensors")
    _assert_rejected(r, "line 3", "not a non-negative integer")
    assert "three" not in r.stderr  # the contents of a file are never echoed


def test_checkpoint_that_does_not_match_the_architecture(digits_dir, tmp_path):
    req = write_request(tmp_path, {"classes": [3]}, arch="builtin:small_cnn")
    out = tmp_path / "out.safetensors"
    _assert_rejected(_apply(digits_dir, req, out), "does not match builtin:small_cnn", "missing", "model.arch")
    assert not out.exists()
    req = write_request(tmp_path, {"classes": [3]}, kwargs={"num_classes": 10, "hidden": [100, 64]}, name="wide.yaml")
    _assert_rejected(_apply(digits_dir, req, out), "shape")


def test_checkpoint_that_is_not_safetensors(digits_dir, tmp_path):
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"\x80\x04PICKLE" * 10)
    r = invoke("apply", fake, "-r", digits_dir / "class.yaml", "-o", tmp_path / "o.safetensors", "--quiet")
    _assert_rejected(r, "not a valid safetensors file")
    _assert_rejected(invoke("apply", tmp_path / "nope.safetensors", "-r", digits_dir / "class.yaml", "--quiet"), "not found")
    _assert_rejected(invoke("inspect", fake), "not a valid safetensors")


def test_unwritable_output(digits_dir, tmp_path):
    _assert_rejected(_apply(digits_dir, digits_dir / "class.yaml", tmp_path / "no" / "such" / "dir" / "o.safetensors"), "does not exist")
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        _assert_rejected(_apply(digits_dir, digits_dir / "class.yaml", ro / "o.safetensors"), "not writable")


def test_output_may_not_overwrite_the_input(digits_dir, tmp_path):
    import shutil

    ckpt = tmp_path / "m.safetensors"
    shutil.copy(digits_dir / "mlp.safetensors", ckpt)
    sha = sha256_file(ckpt)
    r = invoke("apply", ckpt, "-r", digits_dir / "class.yaml", "-o", ckpt, "--force", "--quiet")
    _assert_rejected(r, "input checkpoint")
    assert sha256_file(ckpt) == sha


def test_unknown_method_and_bad_params(digits_dir, tmp_path):
    out = tmp_path / "o.safetensors"
    _assert_rejected(_apply(digits_dir, digits_dir / "class.yaml", out, "--method", "magic"), "unknown method 'magic'", "rfa")
    _assert_rejected(_apply(digits_dir, digits_dir / "class.yaml", out, "--param", "rank=-1"), "method.params.rank")
    _assert_rejected(_apply(digits_dir, digits_dir / "class.yaml", out, "--param", "colour=1"), "unknown parameter", "rank")
    _assert_rejected(_apply(digits_dir, digits_dir / "class.yaml", out, "--method", "retrain", "--adapter-only"), "no adapter output")
    assert not out.exists()


def test_unavailable_device(digits_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _assert_rejected(_apply(digits_dir, digits_dir / "class.yaml", tmp_path / "o.safetensors", "--device", "cuda"), "CUDA is not available")
    _assert_rejected(_apply(digits_dir, digits_dir / "class.yaml", tmp_path / "o.safetensors", "--device", "tpu"), "--device tpu")


def test_help_and_schema_errors_do_not_import_torch(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nid: x\nforget: {classes: []}\n")
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from cli.main import app\n"
        f"r = CliRunner().invoke(app, ['validate', '-r', {str(bad)!r}])\n"
        "assert r.exit_code == 2, r.output\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.stdout.strip() == "False", out.stderr


def test_validate_makes_the_checks_apply_makes_on_the_output_mode_and_the_gates(tmp_path):
    """README: `validate` runs every check without training. It passed a request whose output.mode is adapter with a
    method that has no adapter, and a request whose audit.gates name no metric, both refused by `apply` (exit 2)."""
    adapter = write_request(tmp_path, {"indices": [0, 17, 42]}, method={"name": "finetune", "params": {}},
                            name="adapter.yaml", extra={"output": {"mode": "adapter"}})
    _assert_rejected(invoke("validate", "-r", adapter), "finetune", "no adapter output")
    typo = write_request(tmp_path, {"classes": [3]}, name="typo.yaml", extra={"audit": {"gates": ["forget_accc <= 0.02"]}})
    _assert_rejected(invoke("validate", "-r", typo), "forget_accc")
    gap = write_request(tmp_path, {"classes": [3]}, name="gap.yaml", extra={"audit": {"gates": ["forget_acc_gap <= 0.02"]}})
    r = invoke("validate", "-r", gap)  # `unlearn audit --reference` can still supply the reference: valid, with a note
    assert r.exit_code == 0 and "reference" in r.stdout, r.output
    fine = write_request(tmp_path, {"classes": [3]}, name="fine.yaml", extra={"audit": {"gates": ["forget_acc <= 0.02"]}})
    assert invoke("validate", "-r", fine).exit_code == 0


def test_a_missing_checkpoint_names_both_kinds_the_tool_reads(tmp_path):
    """README's ViT example (`unlearn apply my-vit -r hf_vit.yaml`) on a missing my-vit said 'give the path of a
    .safetensors file', though a save_pretrained folder is what an hf: request takes."""
    req = write_request(tmp_path, {"classes": [3]})
    _assert_rejected(invoke("apply", tmp_path / "my-vit", "-r", req), "my-vit not found", ".safetensors", "save_pretrained folder")
    assert not any(p.name.startswith("my-vit") for p in tmp_path.iterdir())


def test_a_channel_mismatch_names_both_counts_and_the_ways_out(tmp_path):
    """Found by the docs audit: a 3-channel model on 1-channel data was refused with 'match the architecture to the
    data (kwargs, preprocess.resize)', which names neither the channels nor a fix for them."""
    req = write_request(tmp_path, {"classes": [3]}, arch="builtin:small_cnn", kwargs={"num_classes": 10, "in_channels": 3})
    r = invoke("validate", "-r", req)
    _assert_rejected(r, "takes 3 input channel(s) and the data has 1", "in_channels: 1")
    assert "preprocess.resize" not in r.stderr


def test_a_channel_mismatch_inside_the_model_is_not_called_the_datas(tmp_path):
    """A python: model whose second conv expects 16 channels and gets 8 read "the model takes 16 input channel(s) and the
    data has 8" of 1-channel data: the count PyTorch reports is the data's only at the first layer."""
    (tmp_path / "twoconv.py").write_text(
        "import torch.nn as nn\n"
        "class TwoConv(nn.Module):\n"
        "    def __init__(self, num_classes=10):\n"
        "        super().__init__()\n"
        "        self.a, self.b, self.head = nn.Conv2d(1, 8, 3), nn.Conv2d(16, 8, 3), nn.LazyLinear(num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.b(self.a(x)).flatten(1))\n")
    req = write_request(tmp_path, {"classes": [3]}, arch="python:twoconv:TwoConv")
    r = invoke("validate", "-r", req)
    _assert_rejected(r, "to have 16 channels, but got 8", "match the architecture to the data")
    assert "the data has 8" not in r.stderr
    arch = write_request(tmp_path, {"classes": [3]}, arch="torchvision:resnet18", name="tv.yaml")  # no channel argument of its own
    r = invoke("validate", "-r", arch)
    _assert_rejected(r, "takes 3 input channel(s) and the data has 1", "in_chans: 1")
    assert "in_channels" not in r.stderr


def test_a_first_layer_width_mismatch_names_in_features(tmp_path):
    """A builtin:mlp left at its 64-feature default on 10-feature tabular data (sklearn:diabetes) said 'match the
    architecture to the data (kwargs, preprocess.resize)'; the fix is kwargs in_features."""
    req = write_request(tmp_path, {"classes": [3]}, kwargs={"num_classes": 10, "in_features": 32})
    _assert_rejected(invoke("validate", "-r", req), "first layer takes 32 input features and the data has 64", "in_features: 64")


@pytest.mark.parametrize("arch, kwargs", [
    ("torchvision:resnet18", {"num_classes": 0}),  # built a zero-width head behind a raw "zero-element tensors" warning
    ("timm:resnet18", {"num_classes": 0}),  # timm's headless model: its 512 features were taken for 512 classes
    ("builtin:mlp", {"num_outputs": -1}),
    ("timm:resnet18", {"num_classes": 0.0}),  # 0.0 and false passed the first check: timm built its headless model again
])
def test_a_model_without_outputs_is_refused_by_the_schema(tmp_path, arch, kwargs):
    req = write_request(tmp_path, {"classes": [3]}, arch=arch, kwargs=kwargs)
    result = invoke("validate", "-r", req)
    assert result.exit_code == 2
    assert f"kwargs.{next(iter(kwargs))} is {next(iter(kwargs.values())):g}, and a model needs at least 1 output" in result.stderr
    assert "Warning" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("arch, kwargs, fragment", [
    ("builtin:mlp", {"hidden": 32}, "model.kwargs.hidden: 32 is not a list of layer widths"),  # was "'int' object is not iterable"
    ("builtin:mlp", {"hidden": [0]}, "model.kwargs.hidden: [0] is not a list"),  # was ok, behind a raw zero-element warning
    ("builtin:mlp", {"hidden": [64, "a"]}, "hidden: [64, \"a\"] is not a list"),  # was torch's "argument 'size' ... tuple of ints"
    ("builtin:mlp", {"hidden": [10**9]}, "whole numbers from 1 to 1,000,000"),  # was an allocation of 256 GB, refused by the OS
    ("builtin:mlp", {"depth": 3}, "builtin:mlp takes no depth; its arguments are in_features, num_classes, hidden"),
    ("builtin:small_cnn", {"width": 2.5}, "model.kwargs.width: 2.5 is not a whole number"),
])
def test_builtin_model_arguments_are_checked_and_named(tmp_path, arch, kwargs, fragment):
    req = write_request(tmp_path, {"classes": [3]}, arch=arch, kwargs={"num_classes": 10, **kwargs})
    result = invoke("validate", "-r", req)
    assert result.exit_code == 2 and fragment in result.stderr, result.stderr
    assert "Warning" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("method, params, fragment", [
    ("laf", {"feature_layer": "body.0"}, "no trainable parameter feeds 'body.0'; name a later module"),  # was exit 1 "unexpected"
    ("laf", {"feature_layer": "nosuch"}, "the model has no module 'nosuch'"),
    ("rfa", {"target_layers": ["nonexistent"]}, "target_layers 'nonexistent' match no adaptable layer"),
    ("rfa", {"solver": "gauss-newton"}, "solver gauss-newton is for regression models"),
    ("concept-poison", {"concept_dir": "/nonexistent"}, "concept_dir: /nonexistent is not a folder"),
    ("salun", {"mask_ratio": 1e-300}, "mask_ratio: 1e-300 of the model's 17226 parameter entries selects none"),
    ("rfa", {"w_forget": 0}, "w_forget 0 removes the forget term"),
    ("rfa", {"temperature": 1e-300}, "temperature: Input should be greater than or equal to 0.01"),
    ("rfa", {"lr": float("nan")}, "lr: nan is not a finite number"),
])
def test_parameters_apply_would_refuse_are_refused_by_validate(digits_dir, tmp_path, method, params, fragment):
    """validate said ok to each, and apply refused it only after its summary passes (or crashed, or wrote the
    unchanged original with exit 0: salun's empty mask); bench ran them as FAILED rows."""
    req = write_request(tmp_path, {"classes": [3]}, method={"name": method, "params": params})
    for args in (("validate", "-r", req, digits_dir / "mlp.safetensors"),
                 ("apply", digits_dir / "mlp.safetensors", "-r", req, "-o", tmp_path / "u.safetensors", "--quiet")):
        result = invoke(*args)
        assert result.exit_code == 2, (args[0], result.stdout, result.stderr)
        assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "u.safetensors").exists()


def test_bench_refuses_a_rows_parameters_before_any_run(digits_dir, tmp_path):
    req = write_request(tmp_path, {"classes": [3]})
    result = invoke("bench", digits_dir / "mlp.safetensors", "-r", req, "--methods", "rfa,finetune", "--seeds", "1",
                    "--param", "rfa.target_layers=nosuch", "--report-dir", tmp_path / "b", "--quiet")
    assert result.exit_code == 2, result.stderr
    assert "rfa: target_layers 'nosuch' match no adaptable layer" in result.stderr and not (tmp_path / "b").exists()


def test_a_run_that_changes_no_weight_says_so(digits_dir, tmp_path):
    """LoRA alpha 5e-324 scales every adapter to zero: exit 0, "wrote ... (merged)", a deletion in the ledger, and not a
    word that the output was the original bit for bit."""
    from safetensors.torch import load_file

    req = write_request(tmp_path, {"classes": [3]}, method={"name": "rfa", "params": {"alpha": 5e-324, "epochs": 1}})
    result = invoke("apply", digits_dir / "mlp.safetensors", "-r", req, "-o", tmp_path / "u.safetensors", "--json")
    assert result.exit_code == 0, result.stderr
    before, after = load_file(str(digits_dir / "mlp.safetensors")), load_file(str(tmp_path / "u.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any("rfa changed no weight: the output equals the original, so nothing was forgotten" in w
               for w in json.loads(result.stdout)["warnings"])


def test_a_boolean_output_count_is_refused_by_the_schema(tmp_path):
    req = write_request(tmp_path, {"classes": [3]}, arch="timm:resnet18", kwargs={"num_classes": False})
    result = invoke("validate", "-r", req)
    assert result.exit_code == 2 and "kwargs.num_classes is false; give a whole number of outputs" in result.stderr


def test_validate_checks_the_audit_reference_as_apply_audit_does(digits_dir, tmp_path):
    """validate said ok for a request whose audit.reference was missing or did not fit the model; apply --audit then
    refused the same request."""
    wide = write_request(tmp_path, {"classes": [3]}, kwargs={"num_classes": 10, "hidden": [100, 64]}, name="wide.yaml",
                         extra={"audit": {"reference": str(digits_dir / "mlp.retrain_class.safetensors")}})
    missing = write_request(tmp_path, {"classes": [3]}, name="missing.yaml", extra={"audit": {"reference": "nope.safetensors"}})
    rejected(invoke("validate", "-r", missing), "audit reference", "nope.safetensors not found")
    line = rejected(invoke("validate", "-r", wide), "mlp.retrain_class.safetensors", "does not match builtin:mlp")
    applied = rejected(invoke("apply", digits_dir / "mlp.safetensors", "-r", wide, "--audit", "-o", tmp_path / "o.safetensors", "--quiet"))
    assert line.split(":")[0] == applied.split(":")[0]
    ok = write_request(tmp_path, {"classes": [3]}, name="ok.yaml", extra={"audit": {"reference": str(digits_dir / "mlp.retrain_class.safetensors")}})
    assert invoke("validate", "-r", ok).exit_code == 0
