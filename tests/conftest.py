"""Shared fixtures: real scikit-learn digits data, small models trained once per session, the real CLI in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cli.main import app

DIGITS_TRAIN = 1437


def write_shaded_images(folder: Path, n: int, classes: int, shape: tuple[int, int, int], shade: float, n_test: int) -> dict:
    """Synthetic images whose class shifts their brightness (uniform noise * 0.3 + class * `shade`), seeded, written as
    train.safetensors (all n) and test.safetensors (the first n_test); returns the request's `data` section."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    x = torch.rand(n, *shape, generator=g) * 0.3 + y.view(-1, 1, 1, 1) * shade
    save_file({"x": x, "y": y}, str(folder / "train.safetensors"))
    save_file({"x": x[:n_test], "y": y[:n_test]}, str(folder / "test.safetensors"))
    return {"train": {"source": "tensors", "path": "train.safetensors"}, "test": {"source": "tensors", "path": "test.safetensors"}}


def write_request(
    folder: Path,
    forget: dict,
    arch: str = "builtin:mlp",
    method: Optional[dict] = None,
    name: str = "request.yaml",
    extra: Optional[dict] = None,
    kwargs: Optional[dict] = None,
) -> Path:
    """Write a digits deletion request (YAML) into `folder` and return its path."""
    req = {
        "version": 1,
        "id": f"test-{name}",
        "model": {"arch": arch, "kwargs": kwargs if kwargs is not None else {"num_classes": 10}},
        "data": {"train": {"source": "sklearn:digits"}, "test": {"source": "sklearn:digits"}},
        "forget": forget,
        "method": method or {"name": "rfa", "params": {}},
        "seed": 0,
    }
    req.update(extra or {})
    path = folder / name
    path.write_text(yaml.safe_dump(req, sort_keys=False))
    return path


def random_indices(n: int = 144, seed: int = 0) -> list[int]:
    """10% of the digits train split, fixed."""
    return sorted(int(i) for i in np.random.default_rng(seed).choice(DIGITS_TRAIN, n, replace=False))


def invoke(*args: str):
    """Run the real `unlearn` CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """A folder with request files and an MLP trained on digits (the 'original'), plus retrained references."""
    folder = tmp_path_factory.mktemp("digits")
    class_req = write_request(folder, {"classes": [3]}, name="class.yaml")
    sample_req = write_request(folder, {"indices": random_indices()}, name="sample.yaml")
    cpu = ("--device", "cpu")  # the same models on a machine with a card (apply's own tests still use --device auto)
    assert invoke("train", "-r", class_req, "-o", folder / "mlp.safetensors", *cpu, "--quiet").exit_code == 0
    assert invoke("train", "-r", class_req, "-o", folder / "mlp.retrain_class.safetensors", "--exclude-forget", *cpu, "--quiet").exit_code == 0
    assert invoke("train", "-r", sample_req, "-o", folder / "mlp.retrain_sample.safetensors", "--exclude-forget", *cpu, "--quiet").exit_code == 0
    return folder


@pytest.fixture(scope="session")
def digits_job(digits_dir):
    """A prepared class-unlearning job (forget class 3) with the trained MLP loaded, for library-level tests."""
    from unlearn_tool.pipeline import prepare

    return prepare(digits_dir / "class.yaml", digits_dir / "mlp.safetensors", device="cpu")


@pytest.fixture(scope="session")
def digits_sample_job(digits_dir):
    """A prepared 10%-sample-unlearning job with the trained MLP loaded."""
    from unlearn_tool.pipeline import prepare

    return prepare(digits_dir / "sample.yaml", digits_dir / "mlp.safetensors", device="cpu")


DIABETES_TRAIN = 353
DIABETES_EPOCHS = 60  # the MLP fits the 353 training samples far better than the test split (a memorised forget set)


def write_regression_request(folder: Path, forget: dict, method: Optional[dict] = None, name: str = "regression.yaml",
                             extra: Optional[dict] = None) -> Path:
    """Write a diabetes regression deletion request (YAML) into `folder` and return its path."""
    req = {
        "version": 1,
        "id": f"test-{name}",
        "task": "regression",
        "model": {"arch": "builtin:mlp", "kwargs": {"in_features": 10, "hidden": [64, 64], "num_outputs": 1}},
        "data": {"train": {"source": "sklearn:diabetes"}, "test": {"source": "sklearn:diabetes"}},
        "forget": forget,
        "method": method or {"name": "rfa", "params": {}},
        "seed": 0,
    }
    req.update(extra or {})
    path = folder / name
    path.write_text(yaml.safe_dump(req, sort_keys=False))
    return path


def diabetes_indices(n: int = 35, seed: int = 0) -> list[int]:
    """10% of the diabetes train split, fixed."""
    return sorted(int(i) for i in np.random.default_rng(seed).choice(DIABETES_TRAIN, n, replace=False))


DIABETES_RANGE = {"min": 1.0, "max": 10.0}  # standardised targets above 1 sd: the highest ~16% of disease progression


@pytest.fixture(scope="session")
def diabetes_dir(tmp_path_factory) -> Path:
    """Diabetes regression requests (10% sample; a target range), an MLP trained on all of the train split, and the
    retrained references."""
    folder = tmp_path_factory.mktemp("diabetes")
    sample_req = write_regression_request(folder, {"indices": diabetes_indices()}, name="sample.yaml")
    range_req = write_regression_request(folder, {"target_range": DIABETES_RANGE}, name="range.yaml")
    epochs = str(DIABETES_EPOCHS)
    cpu = ("--device", "cpu")  # the same models on a machine with a card: the tests' figures were set on these
    assert invoke("train", "-r", sample_req, "-o", folder / "mlp.safetensors", "--epochs", epochs, *cpu, "--quiet").exit_code == 0
    assert invoke("train", "-r", sample_req, "-o", folder / "mlp.retrain_sample.safetensors", "--exclude-forget", "--epochs", epochs,
                  *cpu, "--quiet").exit_code == 0
    assert invoke("train", "-r", range_req, "-o", folder / "mlp.retrain_range.safetensors", "--exclude-forget", "--epochs", epochs,
                  *cpu, "--quiet").exit_code == 0
    return folder


@pytest.fixture(scope="session")
def diabetes_sample_job(diabetes_dir):
    """A prepared 10%-sample regression job (diabetes) with the trained MLP loaded."""
    from unlearn_tool.pipeline import prepare

    return prepare(diabetes_dir / "sample.yaml", diabetes_dir / "mlp.safetensors", device="cpu")


@pytest.fixture(scope="session")
def diabetes_range_job(diabetes_dir):
    """A prepared target-range regression job (diabetes) with the trained MLP loaded."""
    from unlearn_tool.pipeline import prepare

    return prepare(diabetes_dir / "range.yaml", diabetes_dir / "mlp.safetensors", device="cpu")


@pytest.fixture(autouse=True, scope="session")
def _private_caches(tmp_path_factory):
    """Caches (SSD importances, the method catalog) go to a temporary folder, never the user's ~/.cache."""
    import os

    before = os.environ.get("UNLEARN_CACHE_DIR")
    os.environ["UNLEARN_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        os.environ.pop("UNLEARN_CACHE_DIR", None)
    else:
        os.environ["UNLEARN_CACHE_DIR"] = before


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run several times faster on one thread than on two (thread start-up dominates)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
