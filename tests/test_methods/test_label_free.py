"""Label-free in the product, not only in the method: a train split without labels runs laf, and nothing else (issue 13)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import invoke, write_request
from helpers import rejected


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory, digits_dir):
    """The digits train split as tensors with y and without y (same x, same order), and requests for each."""
    from unlearn_tool.data import load_split
    from unlearn_tool.request import DataSpec

    folder = tmp_path_factory.mktemp("nolabels")
    train = load_split(DataSpec(source="sklearn:digits"), "train", folder)
    test = load_split(DataSpec(source="sklearn:digits"), "test", folder)
    save_file({"x": train.x.contiguous(), "y": train.targets.contiguous()}, str(folder / "with_y.safetensors"))
    save_file({"x": train.x.contiguous()}, str(folder / "no_y.safetensors"))
    save_file({"x": test.x.contiguous(), "y": test.targets.contiguous()}, str(folder / "test.safetensors"))
    forget = {"indices": sorted(int(i) for i in np.random.default_rng(0).choice(1437, 60, replace=False))}
    reqs = {}
    for name in ("with_y", "no_y"):
        path = write_request(folder, forget, name=f"{name}.yaml", method={"name": "laf", "params": {"epochs": 2}})
        req = yaml.safe_load(path.read_text())
        req["data"] = {"train": {"source": "tensors", "path": f"{name}.safetensors"}, "test": {"source": "tensors", "path": "test.safetensors"}}
        path.write_text(yaml.safe_dump(req, sort_keys=False))
        reqs[name] = path
    return folder, reqs


def test_laf_runs_without_labels_and_gives_the_same_weights(unlabelled, digits_dir, tmp_path):
    folder, reqs = unlabelled
    outs = {}
    for name, req in reqs.items():
        r = invoke("apply", digits_dir / "mlp.safetensors", "-r", req, "-o", tmp_path / f"{name}.safetensors", "--json", "--quiet")
        assert r.exit_code == 0, r.stderr
        outs[name] = json.loads(r.stdout)
        assert outs[name]["method"] == "laf"
    a, b = load_file(str(tmp_path / "with_y.safetensors")), load_file(str(tmp_path / "no_y.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # absent labels change nothing: laf never reads them
    assert any("agreement with the original model's predictions" in w for w in outs["no_y"]["warnings"])


def test_other_methods_and_class_requests_need_labels(unlabelled, digits_dir, tmp_path):
    folder, reqs = unlabelled
    rejected(invoke("apply", digits_dir / "mlp.safetensors", "-r", reqs["no_y"], "--method", "rfa", "-o", tmp_path / "x.safetensors", "--quiet"),
             "has no labels", "label-free method")
    req = yaml.safe_load(reqs["no_y"].read_text())
    req["forget"] = {"classes": [3]}
    (folder / "cls.yaml").write_text(yaml.safe_dump(req))
    rejected(invoke("validate", "-r", folder / "cls.yaml"), "forget by indices or ids")
    r = invoke("validate", "-r", reqs["no_y"], "--json")
    info = json.loads(r.stdout)
    assert r.exit_code == 0 and info["train_labelled"] is False and "laf" in info["note"]


def test_the_audit_needs_and_uses_a_labelled_test_split(unlabelled, digits_dir, tmp_path):
    folder, reqs = unlabelled
    assert invoke("apply", digits_dir / "mlp.safetensors", "-r", reqs["no_y"], "-o", tmp_path / "u.safetensors", "--quiet").exit_code == 0
    r = invoke("audit", "-r", reqs["no_y"], "--original", digits_dir / "mlp.safetensors", "--unlearned", tmp_path / "u.safetensors",
               "--report-dir", tmp_path / "rep", "--json", "--quiet")
    assert r.exit_code in (0, 3), r.stderr
    report = json.loads(r.stdout)
    assert any("the train split has no labels" in w for w in report["warnings"])
    assert report["models"]["unlearned"]["test_acc"] > 0.8  # the test split's own labels
    req = yaml.safe_load(reqs["no_y"].read_text())
    save_file({"x": load_file(str(folder / "test.safetensors"))["x"]}, str(folder / "test_noy.safetensors"))
    req["data"]["test"] = {"source": "tensors", "path": "test_noy.safetensors"}
    (folder / "notest.yaml").write_text(yaml.safe_dump(req))
    rejected(invoke("validate", "-r", folder / "notest.yaml"), "data.test", "lacks key(s) y")


def test_laf_vae_initialisation_leaves_the_global_and_cuda_generators_alone(monkeypatch):
    """train_vae seeds its VAE's initialisation from the run's generator inside fork_rng(devices=[]), which restores
    the CPU generator only: torch.manual_seed there also reseeded every CUDA generator for the rest of the run."""
    from unlearn_tool.methods.laf import train_vae

    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    before = torch.random.get_rng_state()
    emb = torch.randn(32, 6, generator=torch.Generator().manual_seed(0))
    train_vae(emb, 2, 1, 1e-3, 16, 1.0, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert reseeded == [] and torch.equal(torch.random.get_rng_state(), before)


def test_bench_runs_laf_on_an_unlabelled_train_split_and_names_the_rows_that_need_labels(unlabelled, digits_dir, tmp_path):
    """bench refused every method on a train split without y ("method laf needs them"), the label-free one too."""
    folder, reqs = unlabelled
    ckpt = digits_dir / "mlp.safetensors"
    r = invoke("bench", ckpt, "-r", reqs["no_y"], "--methods", "laf", "--seeds", "1", "--report-dir", tmp_path / "b", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    rows = json.loads(r.stdout)["methods"]
    assert list(rows) == ["laf"] and rows["laf"]["error"] is None and rows["laf"]["seeds"] == [0]
    figures = {k: v["mean"] for k, v in rows["laf"]["metrics"].items() if v}
    assert figures["test_acc"] > 0.9 and figures["retain_acc"] > 0.95  # test: its own labels; retain: agreement with the original
    assert figures["avg_gap"] > 0  # the row measured a changed model (its gap to the original, no reference given)
    for extra, named in ((["--methods", "laf,rfa"], "bench (rfa)"), (["--methods", "laf", "--retrain"], "bench (--retrain)")):
        rejected(invoke("bench", ckpt, "-r", reqs["no_y"], *extra, "--seeds", "1", "--report-dir", tmp_path / "c", "--quiet"),
                 "has no labels", named, "label-free method")
        assert not (tmp_path / "c").exists()
