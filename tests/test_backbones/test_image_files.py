"""Image-file sources (imagefolder, a csv manifest): read lazily, by DataLoader workers when asked; bad manifests are exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import invoke, write_request
from helpers import rejected
from unlearn_tool.data import load_split
from unlearn_tool.errors import DataError
from unlearn_tool.request import DataSpec

N = 60


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """60 scikit-learn digits as 8x8 PNG files: a class-per-folder tree (imagefolder) and a manifest (images.csv) over it."""
    from sklearn.datasets import load_digits

    d = load_digits()
    folder = tmp_path_factory.mktemp("images")
    rows = ["path,label,id"]
    for i in range(N):
        label = int(d.target[i])
        (folder / "tree" / str(label)).mkdir(parents=True, exist_ok=True)
        rel = f"tree/{label}/{i:03d}.png"
        Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8), mode="L").save(folder / rel)
        rows.append(f"{rel},{label},sample-{i}")
    (folder / "images.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_csv_manifest_is_lazy_and_workers_give_the_same_batches(images):
    data = load_split(DataSpec(source="csv", path="images.csv", preprocess={"grayscale": True}), "train", images)
    assert data.x is None and len(data) == N  # nothing decoded up front but the probe
    assert data.input_shape() == (1, 8, 8)
    assert data.dataset.ids[:2] == ["sample-0", "sample-1"]
    assert data.targets.tolist()[:5] == [0, 1, 2, 3, 4]
    serial = list(data.batches(16))
    data.num_workers = 2
    parallel = list(data.batches(16))
    assert len(serial) == len(parallel) == 4
    for (xa, ya), (xb, yb) in zip(serial, parallel):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    sub = data.subset([5, 7])
    assert sub.num_workers == 2 and sub.targets.tolist() == [data.targets[5].item(), data.targets[7].item()]
    x, y = data.take(torch.tensor([3, 4]))
    assert x.shape == (2, 1, 8, 8) and float(x.max()) <= 1.0


def test_csv_record_ids_are_the_id_column_else_the_paths(images, tmp_path):
    spec = DataSpec(source="csv", path="images.csv", preprocess={"grayscale": True})
    data = load_split(spec, "train", images)
    assert data.ids[:2] == ["sample-0", "sample-1"] and data.subset([4, 2]).ids == ["sample-4", "sample-2"]
    lines = (images / "images.csv").read_text().splitlines()
    (images / "no_ids.csv").write_text("\n".join(",".join(r.split(",")[:2]) for r in lines) + "\n")
    assert load_split(DataSpec(source="csv", path="no_ids.csv"), "train", images).ids[0] == "tree/0/000.png"
    (images / "dup_ids.csv").write_text("\n".join(lines[:3] + [lines[3].rsplit(",", 1)[0] + ",sample-0"]) + "\n")
    with pytest.raises(DataError, match="duplicate record ID"):
        load_split(DataSpec(source="csv", path="dup_ids.csv"), "train", images)


def test_imagefolder_and_csv_read_the_same_images(images):
    tree = load_split(DataSpec(source="imagefolder", path="tree", preprocess={"grayscale": True}), "train", images)
    manifest = load_split(DataSpec(source="csv", path="images.csv", preprocess={"grayscale": True}), "train", images)
    assert tree.x is None
    by_path = {p: i for i, p in enumerate(manifest.dataset.paths)}
    for i in range(0, N, 7):
        path, label = tree.dataset.samples[i]
        x, y = manifest.dataset[by_path[path]]
        assert y == label and torch.equal(x, tree.dataset[i][0])


def _manifest(folder: Path, text: str, name: str = "bad.csv", raw: bytes | None = None) -> Path:
    path = folder / name
    path.write_bytes(raw if raw is not None else text.encode())
    return path


BAD = {
    "no label column": ("path\ntree/0/000.png\n", None, "no label column"),
    "label not a number": ("path,label\ntree/0/000.png,zero\n", None, "line 2: the label is not"),
    "image missing": ("path,label\ntree/0/000.png,0\nnope.png,1\n", None, "line 3: the image file does not exist"),
    "not an image": ("path,label\nimages.csv,0\n", None, r"line 2: image .*images.csv cannot be read \(UnidentifiedImageError\)"),
    "no rows": ("path,label\n", None, "lists no images"),
    "not UTF-8": (None, b"path,label\n\xff\xfe,0\n", "not UTF-8"),
    # each was accepted silently: the last label column won; extra fields were dropped; one image in two classes
    "a column twice": ("path,label,label\ntree/0/000.png,0,1\n", None, "names the column 'label' twice"),
    "extra fields": ("path,label\ntree/0/000.png,0,zero\n", None, "line 2: more fields than the header"),
    "an image in two classes": ("path,label\ntree/0/000.png,0\ntree/0/000.png,1\n", None, "line 3: the image of line 2 again"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_manifest(images, name):
    text, raw, fragment = BAD[name]
    _manifest(images, text or "", raw=raw)
    with pytest.raises(DataError, match=fragment) as e:
        load_split(DataSpec(source="csv", path="bad.csv"), "train", images)
    assert "zero" not in str(e.value) and "nope.png" not in str(e.value)  # the file's contents are never echoed


def test_train_and_apply_on_a_manifest_with_workers(images, tmp_path):
    def spec() -> dict:  # a fresh dict per split: yaml.safe_dump would write a shared one as an alias, which requests refuse
        return {"source": "csv", "path": str(images / "images.csv"), "preprocess": {"grayscale": True}}

    req = write_request(tmp_path, {"indices": [0, 1, 2, 3, 4, 5]}, arch="builtin:small_cnn", kwargs={"in_channels": 1, "num_classes": 10, "width": 4},
                        name="req.yaml", method={"name": "rfa", "params": {"epochs": 1, "stop": "epochs"}},
                        extra={"data": {"train": spec(), "test": spec(), "batch_size": 32}})
    r = invoke("train", "-r", req, "-o", tmp_path / "m.safetensors", "--epochs", "2", "--num-workers", "2", "--quiet")
    assert r.exit_code == 0, r.stderr
    r = invoke("apply", tmp_path / "m.safetensors", "-r", req, "--num-workers", "2", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["summary_samples"]["forget"] == 6
    rejected(invoke("apply", tmp_path / "m.safetensors", "-r", req, "-o", tmp_path / "o.safetensors", "--num-workers", "-1"), "--num-workers")


def test_images_of_two_sizes_are_named_by_every_reader_not_a_crash(tmp_path):
    """validate fingerprints the data through LabelledData.take, which stacked the images itself: a manifest with an 8x8
    and a 12x12 image exited 1 "unexpected RuntimeError: stack expects each tensor to be equal size"."""
    (tmp_path / "img").mkdir()
    for i in range(10):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / f"{i}.png")
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "img" / "big.png")
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"img/{i}.png,{i}\n" for i in range(10)) + "img/big.png,1\n")
    req = write_request(tmp_path, {"indices": [0]}, arch="builtin:small_cnn", kwargs={"in_channels": 3, "num_classes": 10},
                        extra={"data": {"train": {"source": "csv", "path": "m.csv"}, "test": {"source": "csv", "path": "m.csv"}}})
    rejected(invoke("validate", "-r", req), "the images differ in size (8x8 and 12x12)", "set data.preprocess.resize")
    data = load_split(DataSpec(source="csv", path="m.csv"), "train", tmp_path)
    with pytest.raises(DataError, match="differ in size"):
        data.take(torch.arange(11))
