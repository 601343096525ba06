"""Small exact artifacts trained once per session: a pre-trained base, S3T and SISA artifacts, and their retrains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import invoke, write_request

S3T = ["--exact", "s3t", "--param", "shards=2", "--param", "slices=3", "--param", "sequences=2", "--param", "epochs=2"]
SISA = ["--exact", "sisa", "--param", "shards=2", "--param", "slices=3", "--param", "epochs=6", "--param", "min_steps=16"]


def assignment(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    from safetensors.numpy import load_file

    a = load_file(str(folder / "assignment.safetensors"))
    return a["shard"], a["slice"]


def pick(shard: np.ndarray, slc: np.ndarray, cells: list[tuple[int, int]], skip: int = 0) -> list[int]:
    """One train index in each (shard, slice) cell."""
    return [int(np.nonzero((shard == k) & (slc == s))[0][skip]) for k, s in cells]


@pytest.fixture(scope="session")
def exact_dir(tmp_path_factory) -> Path:
    """base.safetensors (the 'pre-trained backbone': 3 epochs on digits), s3t/ and sisa/ artifacts, a deletion request
    for two samples in slice 2 of shard 0 and slice 1 of shard 1, and both artifacts retrained from scratch without them."""
    folder = tmp_path_factory.mktemp("exact")
    req = write_request(folder, {"classes": [3]}, name="train.yaml")
    assert invoke("train", "-r", req, "-o", folder / "base.safetensors", "--epochs", "3", "--quiet").exit_code == 0
    r = invoke("train", "-r", req, "-o", folder / "s3t", "--init", folder / "base.safetensors", *S3T, "--quiet")
    assert r.exit_code == 0, r.stderr
    r = invoke("train", "-r", req, "-o", folder / "sisa", *SISA, "--quiet")
    assert r.exit_code == 0, r.stderr
    shard, slc = assignment(folder / "s3t")
    forget = pick(shard, slc, [(0, 2), (1, 1)])
    write_request(folder, {"indices": forget}, name="delete.yaml")
    for name, args in (("s3t", ["--init", folder / "base.safetensors", *S3T]), ("sisa", SISA)):
        r = invoke("train", "-r", folder / "delete.yaml", "-o", folder / f"{name}.retrain", "--exclude-forget", *args, "--quiet")
        assert r.exit_code == 0, r.stderr
    return folder
