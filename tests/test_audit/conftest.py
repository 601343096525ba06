"""Fixtures of the audit tests: a model built to leak membership."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import invoke, write_request


@pytest.fixture(scope="session")
def leaky(tmp_path_factory):
    """A model built to leak: a wide MLP trained 150 epochs on 300 digits; forget 60 of them. And its retrained reference."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("leaky")
    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))  # one population: forget, retain and test are alike
    x = torch.from_numpy((d.images[order] / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(d.target[order].astype(np.int64))
    save_file({"x": x[:300].contiguous(), "y": y[:300].contiguous()}, str(folder / "train.safetensors"))
    save_file({"x": x[300:900].contiguous(), "y": y[300:900].contiguous()}, str(folder / "test.safetensors"))
    req = write_request(folder, {"indices": list(range(0, 300, 5))}, kwargs={"num_classes": 10, "hidden": [256, 256]},
                        extra={"data": {"train": {"source": "tensors", "path": "train.safetensors"},
                                        "test": {"source": "tensors", "path": "test.safetensors"}}})
    for name, extra in (("m.safetensors", []), ("ref.safetensors", ["--exclude-forget"])):
        r = invoke("train", "-r", req, "-o", folder / name, "--epochs", "150", "--quiet", *extra)
        assert r.exit_code == 0, r.stderr
    return folder, req


