"""A second round of hostile and careless inputs (our own design, beyond the issue's list).

Each row is an input a user or an attacker could give; each must end in exit 2 with one line naming the
problem and the fix, write nothing, and leave every input as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import invoke, write_request
from helpers import rejected, tree

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def work(digits_dir, tmp_path):
    shutil.copy(digits_dir / "mlp.safetensors", tmp_path / "model.safetensors")
    write_request(tmp_path, {"classes": [3]}, name="req.yaml", method={"name": "rfa", "params": {"epochs": 1, "stop": "epochs"}})
    return tmp_path


def _req(work: Path) -> dict:
    return yaml.safe_load((work / "req.yaml").read_text())


def _write(work: Path, data: dict, name: str = "h.yaml") -> Path:
    (work / name).write_text(yaml.safe_dump(data, sort_keys=False))
    return work / name


def _text(work: Path, text: str, name: str = "h.yaml") -> Path:
    (work / name).write_text(text)
    return work / name


# Each case: (name, build(work) -> request path, extra CLI args, expected fragment of the one-line error)
def _set(path: str, value) -> Callable[[Path], Path]:
    def build(work: Path) -> Path:
        req = _req(work)
        node = req
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
        return _write(work, req)
    return build


def _file(name: str, content: bytes) -> Callable[[Path], Path]:
    def build(work: Path) -> Path:
        (work / name).write_bytes(content)
        return work / "req.yaml"
    return build


def _indices_file(content: bytes) -> Callable[[Path], Path]:
    def build(work: Path) -> Path:
        (work / "idx.txt").write_bytes(content)
        req = _req(work)
        req["forget"] = {"indices_file": "idx.txt"}
        return _write(work, req)
    return build


def _tensors(x: np.ndarray, y: np.ndarray, fmt: str = "safetensors") -> Callable[[Path], Path]:
    def build(work: Path) -> Path:
        if fmt == "safetensors":
            save_file({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, str(work / "d.safetensors"))
            name = "d.safetensors"
        else:
            np.savez(work / "d.npz", x=x, y=y)
            name = "d.npz"
        req = _req(work)
        req["data"]["train"] = {"source": "tensors", "path": name}
        return _write(work, req)
    return build


def _alias_bomb(work: Path) -> Path:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    return _text(work, "\n".join(lines) + "\n")


def _special(kind: str) -> Callable[[Path], Path]:
    def build(work: Path) -> Path:
        target = work / "special"
        if kind == "dir":
            target.mkdir()
        elif kind == "fifo":
            os.mkfifo(target)
        return target
    return build


def _same(work: Path) -> Path:
    return work / "req.yaml"


OBJ = np.array([{"a": 1}, {"b": 2}], dtype=object)
X = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
Y = np.arange(20, dtype=np.int64) % 10

CASES = [
    # --- the request file itself
    ("request is a folder", lambda w: _special("dir")(w), [], "not a regular file"),
    ("request is a FIFO", lambda w: _special("fifo")(w), [], "not a regular file"),
    ("request over 1 MiB", lambda w: _text(w, "# " + "x" * (1 << 20) + "\n"), [], "bytes, more than"),
    ("request not UTF-8", lambda w: (w / "h.yaml").write_bytes(b"version: 1\nid: \xff\xfe\n") and w / "h.yaml", [], "not UTF-8"),
    ("empty request", lambda w: _text(w, ""), [], "expected a mapping"),
    ("YAML alias bomb", _alias_bomb, [], "aliases"),
    ("python object tag", lambda w: _text(w, "version: 1\nid: !!python/object/apply:os.system ['touch pwned']\n"), [], "tags"),
    ("merge key alias", lambda w: _text(w, "base: &b {x: 1}\nversion: 1\nid: y\nmodel:\n  <<: *b\n"), [], "aliases"),
    # --- types and ranges
    ("id is a number", _set("id", 12), [], "id"),
    # "\ud800" in YAML is a lone surrogate: it passed the schema and every write failed (exit 1 "unexpected UnicodeEncodeError")
    ("id with a lone surrogate", _set("id", "a\ud800b"), [], "id: holds a lone surrogate escape (\\ud800)"),
    ("key with a lone surrogate", _set("method.params", {"x\udc80": 1}), [], "method.params (a key): holds a lone surrogate"),
    ("seed negative", _set("seed", -5), [], "seed"),
    ("seed fractional", _set("seed", 1.5), [], "seed"),
    ("batch_size zero", _set("data.batch_size", 0), [], "batch_size"),
    ("batch_size enormous", _set("data.batch_size", 10**9), [], "batch_size"),
    ("fractional index", _set("forget", {"indices": [1.5]}), [], "forget.indices.0"),
    ("negative index", _set("forget", {"indices": [-1]}), [], "negative"),
    ("empty indices", _set("forget", {"indices": []}), [], "empty"),
    ("huge index", _set("forget", {"indices": [10**30]}), [], "out of range"),
    ("class as string", _set("forget", {"classes": ["3"]}), [], "forget.classes.0"),
    ("normalize std zero", _set("data.train.preprocess", {"normalize": {"mean": [0.5], "std": [0.0]}}), [], "std"),
    # each made every input NaN, 0 or Inf, and validate said ok
    ("normalize mean NaN", _set("data.train.preprocess", {"normalize": {"mean": [float("nan")], "std": [0.5]}}), [], "finite numbers"),
    ("normalize std Inf", _set("data.train.preprocess", {"normalize": {"mean": [0.5], "std": [float("inf")]}}), [], "finite numbers"),
    ("normalize std 1e-45", _set("data.train.preprocess", {"normalize": {"mean": [0.5], "std": [1e-45]}}), [], "at least 1e-06"),
    ("split extra on digits", _set("data.train.split", "extra"), [], "split 'extra' exists for torchvision:SVHN only"),  # read test as train
    ("grayscale on a built-in source", _set("data.train.preprocess", {"grayscale": True}), [], "converts image files"),  # was ignored
    ("split on a tensors file", _set("data.train", {"source": "tensors", "path": "d.safetensors", "split": "test"}), [],
     "split is for sources that hold several splits"),  # was ignored
    ("download as string", _set("data.train.download", "yes please"), [], "download"),
    # ignored on a built-in source, after which forget.ids said "give ... ids_path" though it was given
    ("ids_path on a built-in source", _set("data.train.ids_path", "ids.txt"), [], "ids_path is read for source 'tensors' only"),
    ("unknown output mode", _set("output.mode", "zip"), [], "output.mode"),
    # --- files the request points at
    ("indices file with 100-digit number", _indices_file(b"1\n" + b"9" * 100 + b"\n"), [], "line 2"),
    ("indices file is /dev/zero", _set("forget", {"indices_file": "/dev/zero"}), [], "not a regular file"),
    ("indices file is a folder", _set("forget", {"indices_file": "."}), [], "not a regular file"),
    ("indices file empty", _indices_file(b"# nothing\n"), [], "no indices"),
    ("data file is a FIFO", lambda w: (os.mkfifo(w / "d.safetensors"), _set("data.train", {"source": "tensors", "path": "d.safetensors"})(w))[1], [], "not a regular file"),
    ("data with NaN inputs", _tensors(np.where(X > 0.5, np.nan, X).astype(np.float32), Y), [], "NaN"),
    ("data labels are floats", _tensors(X, Y.astype(np.float32)), [], "integers"),
    ("npz with pickled objects", _tensors(X, OBJ, fmt="npz"), [], "not numbers"),  # y, read from its header: never unpickled
    ("data file truncated", lambda w: ((w / "d.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"x\":"), _set("data.train", {"source": "tensors", "path": "d.safetensors"})(w))[1], [], "not a readable"),
    # --- model sources
    ("module name with dots up", _set("model.arch", "python:..evil:build"), [], "model.arch"),
    ("module not beside the request", _set("model.arch", "python:json:loads"), [], "--trust-code"),
    ("torchvision model unknown", _set("model.arch", "torchvision:resnet9000"), [], "no classification model"),
    ("torchvision kwargs wrong", lambda w: _set("model", {"arch": "torchvision:resnet18", "kwargs": {"num_classes": "ten"}})(w), [], "model."),
    # --- command-line values
    ("--param lr=nan", _same, ["--param", "lr=.nan"], "method.params.lr"),
    ("--param epochs huge", _same, ["--param", "epochs=1e9"], "method.params.epochs"),
    ("--param rank=0", _same, ["--param", "rank=0"], "method.params.rank"),
    ("--param without key", _same, ["--param", "=5"], "--param"),
    ("--param key with spaces", _same, ["--param", "l r=5"], "--param"),
    ("--device cuda:abc", _same, ["--device", "cuda:abc"], "--device"),
    ("--seed abc", _same, ["--seed", "abc"], "--seed"),
    ("unknown option", _same, ["--colour", "red"], "No such option"),
    ("--code-path not a folder", _same, ["--code-path", "/nonexistent/dir"], "--code-path"),
    ("--method unknown", _same, ["--method", "../../etc/passwd"], "unknown method"),
    ("checkpoint is a folder", _same, ["CKPT=."], "is a folder"),
    ("checkpoint is a FIFO", lambda w: (os.mkfifo(w / "fifo.safetensors"), w / "req.yaml")[1], ["CKPT=fifo.safetensors"], "not a regular file"),
    ("checkpoint truncated", lambda w: ((w / "t.safetensors").write_bytes((w / "model.safetensors").read_bytes()[:100]), w / "req.yaml")[1], ["CKPT=t.safetensors"], "not a valid safetensors"),
    ("checkpoint has an extra tensor", lambda w: (save_file({**load_file(str(w / "model.safetensors")), "extra": torch.ones(1)}, str(w / "x.safetensors")), w / "req.yaml")[1], ["CKPT=x.safetensors"], "unexpected extra"),
    ("output is the request", _same, ["-o", "req.yaml", "--force"], "is the request"),
    ("output is the checkpoint via the request", _set("output.path", "model.safetensors"), ["--force"], "input checkpoint"),
    ("output folder is the working folder", _set("output", {"mode": "adapter", "path": "."}), ["--force"], "holds the"),
]


@pytest.mark.parametrize("name, build, extra, fragment", CASES, ids=[c[0] for c in CASES])
def test_hostile_input(work, name, build, extra, fragment):
    req = build(work)
    ckpt = work / "model.safetensors"
    args = []
    for a in extra:
        if a.startswith("CKPT="):
            ckpt = work / a[len("CKPT="):]
        else:
            args.append(str(work / a) if a in ("req.yaml",) else a)
    if "-o" not in args and "output" not in name:
        args += ["-o", str(work / "o.safetensors")]
    snapshot = {p: s for p, s in tree(work).items() if not p.startswith("special")}
    result = invoke("apply", ckpt, "-r", req, "--quiet", *args)
    rejected(result, fragment)
    assert "Traceback" not in result.stderr
    assert {p: s for p, s in tree(work).items() if not p.startswith("special")} == snapshot  # nothing written, nothing changed
    assert not (work / "pwned").exists()


def test_gate_values_that_are_not_numbers(work):
    for gate in ("forget_acc <= inf", "forget_acc <= nan", "forget_acc <= 1e999999", "__import__('os') <= 1"):
        rejected(invoke("audit", "-r", work / "req.yaml", "--original", work / "model.safetensors", "--unlearned", work / "model.safetensors",
                        "--gate", gate, "--quiet"), "gate")


def test_terminal_escapes_in_a_gate_are_not_echoed_raw(work):
    r = invoke("audit", "-r", work / "req.yaml", "--original", work / "model.safetensors", "--unlearned", work / "model.safetensors",
               "--gate", "\x1b[2Jforget_acc <= 1", "--quiet")
    line = rejected(r, "gate")
    assert "\x1b" not in line and "\\x1b" in line


def test_output_symlink_to_the_input_is_refused(work):
    (work / "link.safetensors").symlink_to(work / "model.safetensors")
    before = tree(work)
    rejected(invoke("apply", work / "model.safetensors", "-r", work / "req.yaml", "-o", work / "link.safetensors", "--force", "--quiet"),
             "link to the input checkpoint")
    assert tree(work) == before and (work / "link.safetensors").is_symlink()


def test_bench_seeds_zero_and_report_dir_that_is_a_file(work):
    rejected(invoke("bench", work / "model.safetensors", "-r", work / "req.yaml", "--methods", "rfa", "--seeds", "0", "--quiet"), "--seeds")
    (work / "rep").write_text("x")
    rejected(invoke("bench", work / "model.safetensors", "-r", work / "req.yaml", "--methods", "rfa", "--report-dir", work / "rep", "--quiet"),
             "is a file")


def test_audit_unlearned_is_a_fifo_does_not_hang(work):
    os.mkfifo(work / "u.safetensors")
    code = ("from typer.testing import CliRunner\nfrom cli.main import app\n"
            f"r = CliRunner().invoke(app, ['audit', '-r', {str(work / 'req.yaml')!r}, '--original', {str(work / 'model.safetensors')!r}, "
            f"'--unlearned', {str(work / 'u.safetensors')!r}, '--quiet'])\nprint(r.exit_code, r.stderr.strip())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert out.stdout.startswith("2 "), out
