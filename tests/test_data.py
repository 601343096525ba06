"""Data loading from each source on small files written in the real on-disk formats (no download)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import invoke
from unlearn_tool.data import load_split, write_idx_images, write_idx_labels
from unlearn_tool.errors import DataError
from unlearn_tool.request import DataSpec

RNG = np.random.default_rng(0)


def _spec(**kw) -> DataSpec:
    return DataSpec.model_validate(kw)


def _mnist_like(root, name: str, n_train=40, n_test=20, size=28):
    raw = root / name / "raw"
    raw.mkdir(parents=True)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = RNG.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
        data[prefix] = (images, labels)
    return data


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST"])
def test_mnist_family_from_idx_files(tmp_path, name):
    data = _mnist_like(tmp_path, name)
    train = load_split(_spec(source=f"torchvision:{name}", root=str(tmp_path)), "train", tmp_path)
    test = load_split(_spec(source=f"torchvision:{name}", root=str(tmp_path)), "test", tmp_path)
    assert len(train) == 40 and len(test) == 20
    assert train.x.shape == (40, 1, 28, 28) and train.x.dtype == torch.float32
    # order and values are the files' own: sample 7 is image 7 scaled to [0, 1]
    assert torch.allclose(train.x[7, 0], torch.from_numpy(data["train"][0][7]).float() / 255)
    assert train.targets.tolist() == data["train"][1].tolist()
    normed = load_split(_spec(source=f"torchvision:{name}", root=str(tmp_path), preprocess={"normalize": {"mean": [0.5], "std": [0.25]}}), "train", tmp_path)
    assert torch.allclose(normed.x, (train.x - 0.5) / 0.25)


def _cifar_bin(folder, files, n, label_bytes):
    folder.mkdir(parents=True)
    out = []
    for f in files:
        labels = RNG.integers(0, 10, size=(n, label_bytes), dtype=np.uint8)
        pixels = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        (folder / f).write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())
        out.append((labels, pixels))
    return out


def test_cifar10_binary_edition(tmp_path):
    written = _cifar_bin(tmp_path / "cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"], 6, 1)
    train = load_split(_spec(source="torchvision:CIFAR10", root="."), "train", tmp_path)
    test = load_split(_spec(source="torchvision:CIFAR10", root="."), "test", tmp_path)
    assert len(train) == 30 and len(test) == 6
    assert train.x.shape == (30, 3, 32, 32)
    labels, pixels = written[1]  # second batch file = samples 6..11
    assert train.targets[6:12].tolist() == labels[:, 0].tolist()
    assert torch.allclose(train.x[6], torch.from_numpy(pixels[0].reshape(3, 32, 32)).float() / 255)
    resized = load_split(_spec(source="torchvision:CIFAR10", root=".", preprocess={"resize": 16}), "test", tmp_path)
    assert resized.x.shape == (6, 3, 16, 16)
    # per-channel normalisation (applied in place, as one affine map on the uint8 values) is (x / 255 - mean) / std
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    norm = {"normalize": {"mean": mean, "std": std}}
    normed = load_split(_spec(source="torchvision:CIFAR10", root=".", preprocess=norm), "train", tmp_path)
    expect = (train.x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(normed.x, expect, atol=1e-5)
    both = load_split(_spec(source="torchvision:CIFAR10", root=".", preprocess={"resize": 16, **norm}), "test", tmp_path)
    expect = (resized.x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(both.x, expect, atol=1e-5)


def test_a_cifar_file_too_big_for_memory_is_refused_by_name_before_it_is_read(tmp_path, monkeypatch):
    """A sparse 8.6 GB data_batch_1.bin was read whole before any check; out of memory, the error advised a smaller
    batch size. Its size on disk is checked first (here a 3 MB sparse file against 1 MiB of memory)."""
    import unlearn_tool.data as data_module

    _cifar_bin(tmp_path / "cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], 2, 1)
    os.truncate(tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin", 3073 * 1000)
    monkeypatch.setattr(data_module, "available_memory", lambda: 1 << 20)
    read = []
    monkeypatch.setattr(np, "fromfile", lambda *a, **k: read.append(a))
    with pytest.raises(DataError, match=r"data_batch_1\.bin \(3,073,000 bytes\): the data would need 0\.0 GiB in memory .*"
                                        "extract the data set's binary archive there again"):
        load_split(_spec(source="torchvision:CIFAR10", root="."), "train", tmp_path)
    assert not read


def test_cifar100_binary_uses_the_fine_label(tmp_path):
    written = _cifar_bin(tmp_path / "cifar-100-binary", ["train.bin", "test.bin"], 5, 2)
    train = load_split(_spec(source="torchvision:CIFAR100", root=str(tmp_path)), "train", tmp_path)
    assert train.targets.tolist() == written[0][0][:, 1].tolist()


def test_cifar_pickle_edition_is_refused_not_unpickled(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x80\x04 not to be unpickled")
    with pytest.raises(DataError, match="never unpickles"):
        load_split(_spec(source="torchvision:CIFAR10", root=str(tmp_path)), "train", tmp_path)


def test_svhn_mat_files(tmp_path):
    from scipy.io import savemat

    x = RNG.integers(0, 256, size=(32, 32, 3, 8), dtype=np.uint8)
    y = np.array([[10], [1], [2], [3], [4], [5], [6], [10]], dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    data = load_split(_spec(source="torchvision:SVHN", root=str(tmp_path)), "train", tmp_path)
    assert data.x.shape == (8, 3, 32, 32)
    assert data.targets.tolist() == [0, 1, 2, 3, 4, 5, 6, 0]  # label 10 is digit 0
    assert torch.allclose(data.x[2].permute(1, 2, 0), torch.from_numpy(x[:, :, :, 2]).float() / 255)


@pytest.mark.parametrize("y, shape", [(np.ones((25, 1)), r"\(25, 1\)"), (np.ones((30, 2)), r"\(30, 2\)")])
def test_svhn_labels_that_are_not_one_per_image_are_named(tmp_path, y, shape):
    """X of 30 images and y of 25 labels (or y (30, 2)) read as 'AssertionError: Size mismatch between tensors'."""
    from scipy.io import savemat

    savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 30), dtype=np.uint8), "y": y})
    with pytest.raises(DataError, match=rf"X holds 30 images and y has shape {shape}; give one label per image"):
        load_split(_spec(source="torchvision:SVHN", root=str(tmp_path)), "train", tmp_path)


def test_a_compressed_svhn_file_too_big_for_memory_is_refused_before_it_is_unpacked(tmp_path, monkeypatch):
    """A 261 KB train_32x32.mat with a compressed X of 0.25 GiB took 1.9 GB of memory: nothing was checked before loadmat
    (and scipy's whosmat unpacks X whole to tell its shape). X's declared shape is read from its element's first bytes."""
    import scipy.io
    import unlearn_tool.data as data_module

    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 400), dtype=np.uint8),
                                                     "y": np.ones((400, 1), dtype=np.uint8)}, do_compression=True)
    assert (tmp_path / "train_32x32.mat").stat().st_size < 20_000  # 1.2 MB of X packed small
    monkeypatch.setattr(data_module, "available_memory", lambda: 1 << 20)
    loaded = []
    monkeypatch.setattr(scipy.io, "loadmat", lambda *a, **k: loaded.append(a))
    with pytest.raises(DataError, match=r"train_32x32\.mat: X \(32, 32, 3, 400\): the data would need 0\.0 GiB in memory"):
        load_split(_spec(source="torchvision:SVHN", root=str(tmp_path)), "train", tmp_path)
    assert not loaded  # refused before anything was unpacked


@pytest.mark.parametrize("layout", ["cell", "twice"])
def test_an_svhn_x_hidden_in_a_cell_or_named_twice_is_refused_before_it_is_unpacked(tmp_path, monkeypatch, layout):
    """The size check read X's own header: an X wrapped in a cell declared (1, 1), and of two elements named X the check
    kept the last (small) one while loadmat reads the first. A 1.2 MB file was unpacked to 1.2 GB before a refusal."""
    import io

    import scipy.io

    x, y = np.zeros((32, 32, 3, 40), dtype=np.uint8), np.ones((40, 1), dtype=np.uint8)
    path = tmp_path / "train_32x32.mat"
    if layout == "cell":
        cell = np.empty((1, 1), dtype=object)
        cell[0, 0] = x
        scipy.io.savemat(path, {"X": cell, "y": y}, do_compression=True)
    else:
        big, small = io.BytesIO(), io.BytesIO()
        scipy.io.savemat(big, {"X": x, "y": y}, do_compression=True)
        scipy.io.savemat(small, {"X": x[..., :1], "y": y[:1]}, do_compression=True)
        path.write_bytes(big.getvalue() + small.getvalue()[128:])
    loaded = []
    monkeypatch.setattr(scipy.io, "loadmat", lambda *a, **k: loaded.append(a))
    with pytest.raises(DataError, match="X is not a numeric array" if layout == "cell" else "X appears 2 times"):
        load_split(_spec(source="torchvision:SVHN", root=str(tmp_path)), "train", tmp_path)
    assert not loaded


@pytest.mark.parametrize("label", [1.7, float("nan"), 1e20, 0, 11])
def test_svhn_labels_that_are_not_its_digits_are_refused_not_truncated(tmp_path, label):
    """A label of 1.7 was read as 1, NaN and 1e20 as -9223372036854775808 (then blamed on num_classes)."""
    from scipy.io import savemat

    x = RNG.integers(0, 256, size=(32, 32, 3, 4), dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": np.array([[1.0], [2.0], [label], [10.0]])})
    with pytest.raises(DataError, match="not whole numbers from 1 to 10"):
        load_split(_spec(source="torchvision:SVHN", root=str(tmp_path)), "train", tmp_path)


@pytest.mark.parametrize("arrays, fragment", [
    ({"ids": np.array([f"id{i}" for i in range(4)])}, r"ids holds <U3 values \(shape \(4,\)\), not numbers; give record IDs as integers"),
    ({"ids": np.array([1, "a", None, 2.0], dtype=object)}, r"ids holds \|O values"),
    ({"x": np.zeros(4, dtype=[("a", "f4"), ("b", "i4")])}, r"x holds records values \(shape \(4,\)\), not numbers; save x as float32"),
    ({"x": np.array(["2020-01-01"] * 4, dtype="datetime64[D]")}, r"x holds <M8\[D\] values"),
    ({"x": np.float32(1.0)}, r"x is a single value \(shape \(\)\), not one per sample"),
])
def test_npz_arrays_that_are_not_numbers_per_sample_are_named_and_big_endian_ones_read(tmp_path, arrays, fragment):
    """Each read as "not a readable .safetensors/.npz file (TypeError)" (or ValueError, IndexError), naming neither key
    nor dtype; big-endian x, valid numpy, was refused too (ValueError)."""
    base = {"x": np.zeros((4, 1, 8, 8), dtype=np.float32), "y": np.arange(4)}
    np.savez(tmp_path / "odd.npz", **{**base, **arrays})
    with pytest.raises(DataError, match=fragment):
        load_split(_spec(source="tensors", path="odd.npz"), "train", tmp_path)
    x = np.random.rand(4, 1, 8, 8).astype(">f4")
    np.savez(tmp_path / "be.npz", x=x, y=np.arange(4).astype(">i8"))
    data = load_split(_spec(source="tensors", path="be.npz"), "train", tmp_path)
    assert torch.equal(data.x, torch.from_numpy(x.astype("<f4"))) and data.targets.tolist() == [0, 1, 2, 3]


def test_safetensors_float8_inputs_read_and_a_scalar_is_named(tmp_path):
    """float8 x: "(NotImplementedError: isfinite not implemented for Float8_e4m3fn)"; scalar x: "(IndexError)"."""
    from safetensors.torch import save_file

    x = torch.rand(4, 1, 8, 8).to(torch.float8_e4m3fn)
    save_file({"x": x, "y": torch.arange(4)}, str(tmp_path / "f8.safetensors"))
    assert torch.equal(load_split(_spec(source="tensors", path="f8.safetensors"), "train", tmp_path).x, x.float())
    save_file({"x": torch.tensor(1.0), "y": torch.arange(4)}, str(tmp_path / "s.safetensors"))
    with pytest.raises(DataError, match=r"x is a single value \(shape \(\)\), not one per sample"):
        load_split(_spec(source="tensors", path="s.safetensors"), "train", tmp_path)


def test_an_npz_file_is_known_by_its_suffix_in_any_case(tmp_path):
    """UP.NPZ was read as safetensors and refused as unreadable."""
    with open(tmp_path / "UP.NPZ", "wb") as f:  # (np.savez would append .npz to a name that does not end in it)
        np.savez(f, x=np.zeros((4, 1, 8, 8), dtype=np.float32), y=np.arange(4))
    data = load_split(_spec(source="tensors", path="UP.NPZ"), "train", tmp_path)
    assert len(data) == 4 and data.targets.tolist() == [0, 1, 2, 3]


def test_resize_on_inputs_that_are_not_images_is_refused_not_ignored(tmp_path):
    """resize returned (N, F) or 5-D inputs unchanged, silently."""
    from safetensors.torch import save_file

    save_file({"x": torch.rand(6, 64), "y": torch.arange(6) % 3}, str(tmp_path / "flat.safetensors"))
    with pytest.raises(DataError, match=r"preprocess.resize: the inputs have shape \(64,\) per sample, not images"):
        load_split(_spec(source="tensors", path="flat.safetensors", preprocess={"resize": 4}), "train", tmp_path)


def test_a_resize_is_checked_against_its_peak_memory_and_a_size_that_fits_is_named(tmp_path, monkeypatch):
    """resize 4096 on 20 tiny images peaked at 15 GB where the check had allowed 4 GB (one copy of one split)."""
    import unlearn_tool.data as data_module

    np.savez(tmp_path / "x3.npz", x=np.random.rand(20, 3, 8, 8).astype(np.float32), y=np.arange(20) % 10)
    _cifar_bin(tmp_path / "cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], 6, 1)
    monkeypatch.setattr(data_module, "available_memory", lambda: 2 << 20)  # one copy of 20x3x64x64 floats (0.9 MiB) fits
    with pytest.raises(DataError, match=r"data.train.preprocess.resize 64 would need ~0\.0 GiB .* use preprocess.resize 41 or smaller"):
        load_split(_spec(source="tensors", path="x3.npz", preprocess={"resize": 64}), "train", tmp_path)
    assert load_split(_spec(source="tensors", path="x3.npz", preprocess={"resize": 41}), "train", tmp_path).x.shape == (20, 3, 41, 41)
    with pytest.raises(DataError, match=r"resize 128 would need .* use preprocess.resize 34 or smaller"):  # 30 CIFAR images
        load_split(_spec(source="torchvision:CIFAR10", root=str(tmp_path), preprocess={"resize": 128}), "train", tmp_path)


def test_imagefolder(tmp_path):
    for c, cls in enumerate(["cat", "dog"]):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((10, 12, 3), 40 * (c + i), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    data = load_split(_spec(source="imagefolder", path="imgs", preprocess={"resize": 8, "grayscale": True}), "train", tmp_path)
    assert len(data) == 6 and data.targets.tolist() == [0, 0, 0, 1, 1, 1]
    x, y = next(data.batches(4))
    assert x.shape == (4, 1, 8, 8) and y.tolist() == [0, 0, 0, 1]
    assert data.subset([5]).take(torch.tensor([0]))[1].tolist() == [1]


def test_tensor_files_npz_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    x = torch.rand(12, 1, 4, 4)
    y = torch.arange(12) % 3
    save_file({"x": x, "y": y}, str(tmp_path / "d.safetensors"))
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    for name in ("d.safetensors", "d.npz"):
        data = load_split(_spec(source="tensors", path=name), "train", tmp_path)
        assert torch.equal(data.x, x) and torch.equal(data.targets, y)
    np.savez(tmp_path / "bad.npz", x=x.numpy(), y=y.numpy().astype(np.float32))
    floats = load_split(_spec(source="tensors", path="bad.npz"), "train", tmp_path)  # float targets load (regression) ...
    assert floats.targets.dtype == torch.float32
    from unlearn_tool.tasks import CLASSIFICATION

    with pytest.raises(DataError, match="integers"):  # ... and a classification request refuses them
        CLASSIFICATION.check_targets(floats.targets, 3, "data.train")
    np.savez(tmp_path / "obj.npz", x=np.array([object()], dtype=object), y=np.array([1]))
    with pytest.raises(DataError, match=r"x holds \|O values \(shape \(1,\)\), not numbers"):  # from its header: never unpickled
        load_split(_spec(source="tensors", path="obj.npz"), "train", tmp_path)


def test_missing_torchvision_root_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="download: true"):
        load_split(_spec(source="torchvision:MNIST", root=str(tmp_path / "nothing")), "train", tmp_path)


@pytest.mark.parametrize("name, by_hand", [("MNIST", r"put its idx files \(train-images-idx3-ubyte, ...\) in .*MNIST/raw"),
                                           ("CIFAR10", r"extract cifar-10-binary\.tar\.gz .* into"),
                                           ("SVHN", r"put torchvision's train_32x32\.mat .* in")])
def test_a_failed_download_is_named_with_how_to_place_the_files_by_hand(tmp_path, monkeypatch, name, by_hand):
    """Without network, download: true read "cannot be read as torchvision:MNIST data (URLError: ...)"."""
    import urllib.error

    import torchvision

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    monkeypatch.setattr(torchvision.datasets, "SVHN", offline)
    with pytest.raises(DataError, match=rf"data.train: downloading {name} failed \(URLError: .*name resolution.*\); check the "
                                        rf"network, or {by_hand}.* and drop download: true"):
        load_split(_spec(source=f"torchvision:{name}", root=str(tmp_path), download=True), "train", tmp_path)


def test_mnist_files_still_gzipped_are_named_with_gunzip(tmp_path):
    """A root holding only the downloaded *.gz files read "not found ... (no train-images-idx3-ubyte)"."""
    import gzip

    _mnist_like(tmp_path, "MNIST")
    for f in (tmp_path / "MNIST" / "raw").iterdir():
        (f.parent / f"{f.name}.gz").write_bytes(gzip.compress(f.read_bytes()))
        f.unlink()
    with pytest.raises(DataError, match=r"found .*train-images-idx3-ubyte\.gz but not train-images-idx3-ubyte; unpack it there \(gunzip -k"):
        load_split(_spec(source="torchvision:MNIST", root=str(tmp_path)), "train", tmp_path)


def test_fashion_mnist_request_end_to_end(tmp_path):
    """A torchvision-format data set through the real CLI: train, validate, forget a class."""
    import yaml

    _mnist_like(tmp_path, "FashionMNIST", n_train=200, n_test=50, size=12)
    req = {
        "version": 1, "id": "fmnist", "seed": 0,
        "model": {"arch": "builtin:mlp", "kwargs": {"in_features": 144, "num_classes": 10}},
        "data": {"train": {"source": "torchvision:FashionMNIST", "root": "."}, "test": {"source": "torchvision:FashionMNIST", "root": "."}},
        "forget": {"classes": [2]},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(req))
    assert invoke("train", "-r", tmp_path / "r.yaml", "-o", tmp_path / "m.safetensors", "--epochs", "200", "--quiet").exit_code == 0
    r = invoke("validate", "-r", tmp_path / "r.yaml", tmp_path / "m.safetensors", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["forget_size"] == 20
    r = invoke("apply", tmp_path / "m.safetensors", "-r", tmp_path / "r.yaml", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["before"]["forget_acc"] > 0.9  # random pixels: memorised
    assert out["after"]["forget_acc"] <= 0.05


# ---------------------------------------------------------------- the data-loading attack report (stop 28)

def test_mnist_never_loads_processed_pickles_and_reads_the_idx_files(tmp_path, monkeypatch):
    """torchvision's MNIST class loaded root/MNIST/processed/*.pt with torch.load (an unpickler) when they existed, and
    served their 5 samples instead of the 40 in the idx files."""
    _mnist_like(tmp_path, "MNIST")
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir()
    for f in ("training.pt", "test.pt"):
        torch.save((torch.zeros(5, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1, 0])), processed / f)

    def no_unpickling(*_a, **_k):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    assert len(load_split(_spec(source="torchvision:MNIST", root=str(tmp_path)), "train", tmp_path)) == 40


@pytest.mark.parametrize("damage, fragment", [
    (lambda p: p.write_bytes(b"\x00\x00\x08\x01" + p.read_bytes()[4:]), "is not an idx file of 3-dimensional 8-bit data"),
    (lambda p: p.write_bytes(b"\x00\x00"), "is not an idx file"),
    (lambda p: p.write_bytes(p.read_bytes()[:-7]), "the file is truncated or damaged"),
    (lambda p: p.write_bytes(p.read_bytes()[:8] + (2**31).to_bytes(4, "big") + p.read_bytes()[12:]), "the file is truncated or damaged"),
    # dims whose product wraps int64 to 0, and no data: the check passed and reshape failed (ValueError)
    (lambda p: p.write_bytes(b"\x00\x00\x08\x03" + (2**31).to_bytes(4, "big") * 2 + (4).to_bytes(4, "big")),
     "train-images-idx3-ubyte holds 0 values, its header says 2147483648 x 2147483648 x 4; the file is truncated or damaged"),
])
def test_a_damaged_idx_file_is_named(tmp_path, damage, fragment):
    """Wrong magic, a 2-byte file: "unexpected AssertionError" / ValueError (exit 1); a header of 2^31 images: "not found"."""
    _mnist_like(tmp_path, "MNIST")
    damage(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte")
    with pytest.raises(DataError, match=fragment):
        load_split(_spec(source="torchvision:MNIST", root=str(tmp_path)), "train", tmp_path)


def _image_folder(tmp_path, odd: dict) -> Path:
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 30 * i, dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    for name, make in odd.items():
        make(tmp_path / "imgs" / "b" / name)
    return tmp_path / "imgs"


def _truncated_png(p):
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[:40])


@pytest.mark.parametrize("odd, fragment", [
    ({"9.png": _truncated_png}, "cannot be read"),
    ({"9.png": lambda p: p.write_bytes(b"")}, "cannot be read"),
    ({"9.png": lambda p: p.write_text("not an image")}, "cannot be read"),
    ({"9.png": lambda p: os.mkfifo(p)}, "is not a regular file"),
    ({"9.png": lambda p: Image.fromarray(np.zeros((12, 9, 3), dtype=np.uint8)).save(p)}, "the images differ in size"),
])
def test_an_unreadable_or_odd_image_is_a_data_error_not_a_crash_or_a_hang(tmp_path, odd, fragment):
    """Each exited 1 "unexpected ... (please report this)", and a FIFO named .png hung the read for ever."""
    _image_folder(tmp_path, odd)
    data = load_split(_spec(source="imagefolder", path="imgs"), "train", tmp_path)
    with pytest.raises(DataError, match=fragment):
        for _ in data.batches(16):
            pass


@pytest.mark.parametrize("label", ["\u00b9", "99999999999999999999"])
def test_a_csv_label_that_is_not_a_small_ascii_number_is_refused(tmp_path, label):
    """'¹' passes str.isdigit but not int(); a 20-digit label overflowed the tensor: both exited 1 "unexpected"."""
    _image_folder(tmp_path, {})
    (tmp_path / "m.csv").write_text(f"path,label\nimgs/a/0.png,0\nimgs/b/0.png,{label}\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 3: the label is not a whole number"):
        load_split(_spec(source="csv", path="m.csv"), "train", tmp_path)


def test_a_readers_own_error_on_malformed_tensors_is_a_data_error(tmp_path):
    """Complex record IDs: "unexpected TypeError ... (please report this)", exit 1."""
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3), np.float32), y=np.arange(4) % 2, ids=np.arange(4) + 0j)
    with pytest.raises(DataError, match="data.train: d.npz cannot be read as tensors data"):
        load_split(_spec(source="tensors", path="d.npz"), "train", tmp_path)


def _apply_to_a_name_that_is_not_utf8(tmp_path, *options: str):
    """Train a small CNN on an image folder holding b/\xff.png, then apply a request forgetting it (index 6); returns
    (the apply result, the data spec)."""
    from conftest import write_request

    folder = _image_folder(tmp_path, {os.fsdecode(b"\xff.png"): lambda p: Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(p)})
    images = {"source": "imagefolder", "path": folder.name}
    req = write_request(tmp_path, {"indices": [6]}, arch="builtin:small_cnn", kwargs={"in_channels": 3, "num_classes": 2, "width": 4},
                        method={"name": "finetune", "params": {"epochs": 1}}, extra={"data": {"train": images, "test": dict(images)}})
    assert invoke("train", "-r", req, "-o", tmp_path / "m.safetensors", "--epochs", "1", "--device", "cpu", "--quiet").exit_code == 0
    return invoke("apply", tmp_path / "m.safetensors", "-r", req, "-o", tmp_path / "u.safetensors", "--device", "cpu", "--quiet", *options), images


def test_forgetting_an_image_whose_name_is_not_utf8(tmp_path):
    """The record ID's hash encoded the name as UTF-8 and apply crashed: "unexpected UnicodeEncodeError"."""
    r, images = _apply_to_a_name_that_is_not_utf8(tmp_path, "--json")
    assert r.exit_code == 0, r.stderr
    assert load_split(_spec(**images), "train", tmp_path).ids[6] == os.fsdecode(b"b/\xff.png")  # the one forgotten


def test_a_csv_header_with_spaces_reads_and_a_listed_folder_or_fifo_is_named(tmp_path):
    """Header "path, label" read as "has no label column"; a folder or FIFO listed as an image as "does not exist"."""
    (tmp_path / "img").mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "m.csv").write_text("path, label\nimg/0.png, 0\nimg/1.png, 1\n")
    assert load_split(_spec(source="csv", path="m.csv"), "train", tmp_path).targets.tolist() == [0, 1]
    (tmp_path / "img" / "sub").mkdir()
    os.mkfifo(tmp_path / "img" / "pipe.png")
    for odd in ("img/sub", "img/pipe.png"):
        (tmp_path / "m.csv").write_text(f"path,label\nimg/0.png,0\n{odd},1\n")
        with pytest.raises(DataError, match=r"m\.csv line 3: the image path is not a regular file \(a folder, FIFO or device\)"):
            load_split(_spec(source="csv", path="m.csv"), "train", tmp_path)


def test_a_csv_saved_with_a_utf8_bom_reads(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark: it was told it had no path column."""
    _image_folder(tmp_path, {})
    (tmp_path / "m.csv").write_text("\ufeffpath,label\nimgs/a/0.png,0\nimgs/b/0.png,1\n", encoding="utf-8")
    data = load_split(_spec(source="csv", path="m.csv"), "train", tmp_path)
    assert len(data) == 2 and data.targets.tolist() == [0, 1]


def test_imagefolder_skips_hidden_names_and_walks_a_symlink_loop_once(tmp_path):
    """torchvision's walk made `.ipynb_checkpoints` a class, read macOS `._0.png` resource forks as images, and followed a
    link to a parent folder round and round: the data grew with every lap."""
    folder = _image_folder(tmp_path, {})
    plain = load_split(_spec(source="imagefolder", path="imgs"), "train", tmp_path)
    (folder / ".ipynb_checkpoints").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(folder / ".ipynb_checkpoints" / "0.png")
    (folder / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (folder / "b" / ".cache").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(folder / "b" / ".cache" / "0.png")
    os.symlink(folder / "a", folder / "a" / "loop")
    data = load_split(_spec(source="imagefolder", path="imgs"), "train", tmp_path)
    assert data.ids == plain.ids and data.targets.tolist() == plain.targets.tolist()
    assert sum(1 for _ in data.batches(64)) == 1  # every image reads


def test_imagefolder_order_is_torchvisions(tmp_path):
    """Sample indices in earlier requests index torchvision's ImageFolder order: nested folders, upper-case suffixes."""
    import torchvision

    for c in ("cat", "dog"):
        for sub in ("", "s", "s/t"):
            (tmp_path / "imgs" / c / sub).mkdir(parents=True, exist_ok=True)
            for i, suffix in enumerate((".png", ".PNG", ".jpg")):
                Image.fromarray(np.full((8, 8, 3), 9 * i, dtype=np.uint8)).save(tmp_path / "imgs" / c / sub / f"{i}{suffix}")
    data = load_split(_spec(source="imagefolder", path="imgs"), "train", tmp_path)
    assert data.dataset.samples == torchvision.datasets.ImageFolder(str(tmp_path / "imgs")).samples


def test_an_imagefolder_class_without_images_is_named(tmp_path):
    folder = _image_folder(tmp_path, {})
    (folder / "c").mkdir()
    (folder / "c" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"class folder\(s\) c hold no image files"):
        load_split(_spec(source="imagefolder", path="imgs"), "train", tmp_path)


def test_complex_inputs_are_refused_and_wide_integer_inputs_noted(tmp_path):
    """Complex x lost its imaginary part behind a numpy warning; int16 x was cast to float without a word."""
    from conftest import write_request

    np.savez(tmp_path / "c.npz", x=np.ones((4, 3), np.complex64) * 1j, y=np.arange(4) % 2)
    with pytest.raises(DataError, match=r"x is complex \(torch.complex64\); give real inputs"):
        load_split(_spec(source="tensors", path="c.npz"), "train", tmp_path)
    np.savez(tmp_path / "i.npz", x=np.arange(40 * 3, dtype=np.int16).reshape(40, 3), y=np.arange(40) % 2)
    data = {"source": "tensors", "path": "i.npz"}
    req = write_request(tmp_path, {"classes": [1]}, arch="builtin:mlp", kwargs={"in_features": 3, "hidden": [4], "num_classes": 2},
                        extra={"data": {"train": data, "test": dict(data)}})
    result = invoke("validate", "-r", req, "--json")
    assert result.exit_code == 0, result.stderr
    notes = json.loads(result.stdout)["notes"]
    assert "data.train: x of int16 read as float values, unscaled (only uint8 is scaled to [0, 1])" in notes


@pytest.mark.parametrize("pixels", [100, 60])  # 144 pixels: over PIL's limit (it warns), over twice it (it raises)
def test_an_image_over_pils_decompression_bomb_limit_is_refused_in_one_line(tmp_path, monkeypatch, pixels):
    """Between the limit and twice it PIL only warned: a raw DecompressionBombWarning on stderr, and the image was read."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels)
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "a" / "0.png")
    data = load_split(_spec(source="imagefolder", path="imgs"), "train", tmp_path)
    with pytest.raises(DataError, match=r"is too large to read safely \(Image size \(144 pixels\) exceeds limit of \d+ pixels"):
        next(data.batches(4))


@pytest.mark.parametrize("link, fragment", [
    (("..", "a/up"), "a/up links out of class folder a"),  # the other classes' images came again, labelled a
    (("a", "c"), "class folders a and c are the same folder"),
])
def test_an_imagefolder_link_that_would_relabel_images_is_refused(tmp_path, link, fragment):
    folder = _image_folder(tmp_path, {})
    os.symlink(link[0], folder / link[1])
    with pytest.raises(DataError, match=fragment):
        load_split(_spec(source="imagefolder", path="imgs"), "train", tmp_path)


def test_an_unreadable_imagefolder_subfolder_is_named_not_skipped(tmp_path, monkeypatch):
    """os.walk dropped the PermissionError: a subfolder's images went missing from the data without a word."""
    folder = _image_folder(tmp_path, {})
    (folder / "b" / "sub").mkdir()
    real_scandir = os.scandir

    def scandir(p="."):
        if str(p).endswith("sub"):
            raise PermissionError(13, "Permission denied", str(p))
        return real_scandir(p)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=r"folder .*sub cannot be read \(Permission denied\)"):
        load_split(_spec(source="imagefolder", path="imgs"), "train", tmp_path)


def test_record_ids_from_a_name_that_is_not_utf8_reach_the_ledger_and_verify(tmp_path):
    """apply --record-ids exited 1 "unexpected UnicodeEncodeError ... surrogates not allowed" writing the ledger."""
    r, _ = _apply_to_a_name_that_is_not_utf8(tmp_path, "--record-ids")
    assert r.exit_code == 0, r.stderr
    assert b"\xff.png" in (tmp_path / "u.ledger.jsonl").read_bytes()  # the name's own bytes
    r = invoke("ledger", "verify", tmp_path / "u.safetensors", "--original", tmp_path / "m.safetensors")
    assert r.exit_code == 0 and "verified: 1 step(s)" in r.stdout, r.stderr


def test_an_npz_bomb_is_refused_before_it_is_unpacked(tmp_path):
    """A 2 MB .npz whose x unpacks to 2 GiB was unpacked whole (a 525 KB one took 8.9 GB of memory), every key of it,
    used or not. The member's recorded sizes are read first."""
    import numpy as np

    from unlearn_tool.data import load_split
    from unlearn_tool.errors import DataError
    from unlearn_tool.request import DataSpec

    np.savez_compressed(tmp_path / "bomb.npz", x=np.zeros((2, 1, 1 << 14, 1 << 14), dtype=np.float32), y=np.zeros(2, dtype=np.int64))
    with pytest.raises(DataError, match=r"x unpacks to 2\.0 GiB from \d+ KiB"):
        load_split(DataSpec(source="tensors", path="bomb.npz"), "train", tmp_path)
    # a header that promises more than memory holds (here with no data behind it): refused from the header alone
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 3, 512, 512)})
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("x.npy", header.getvalue())
        z.writestr("y.npy", header.getvalue())
    with pytest.raises(DataError, match=r"x \(1000000, 3, 512, 512\): the data would need .* GiB in memory"):
        load_split(DataSpec(source="tensors", path="huge.npz"), "train", tmp_path)
    np.savez_compressed(tmp_path / "ok.npz", x=np.zeros((4, 1, 8, 8), dtype=np.float32), y=np.arange(4), junk=np.zeros((1 << 12, 1 << 12)))
    data = load_split(DataSpec(source="tensors", path="ok.npz"), "train", tmp_path)
    assert len(data) == 4 and data.targets.tolist() == [0, 1, 2, 3]
