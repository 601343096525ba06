"""Two runs publishing to the same place: an output and its ledger are published under a lock on their folders, and
the ledger's chain is checked again inside it, so a run never publishes beside another's record or cuts it."""

from __future__ import annotations

import os

import pytest

from conftest import invoke, write_request
from helpers import rejected

QUICK = ["--param", "epochs=1", "--param", "stop=epochs"]


def _apply(src, req, out, *args):
    return invoke("apply", src, "-r", req, "-o", out, "--quiet", *QUICK, *args)


def test_the_output_folder_is_locked_while_output_and_ledger_are_published(digits_dir, tmp_path, monkeypatch):
    """Without the lock two runs over one output (--force) could interleave: the output of one, then the other's
    output and ledger, then the first's ledger, describing a file that is not there."""
    fcntl = pytest.importorskip("fcntl")
    import unlearn_tool.ledger as ledger

    seen: list[bool] = []
    real = ledger.store_forget_set

    def store_while_probing_the_lock(*args, **kwargs):
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append(False)  # another run could have published here now
        except BlockingIOError:
            seen.append(True)
        finally:
            os.close(fd)
        return real(*args, **kwargs)

    monkeypatch.setattr(ledger, "store_forget_set", store_while_probing_the_lock)
    r = _apply(digits_dir / "mlp.safetensors", digits_dir / "class.yaml", tmp_path / "u.safetensors")
    assert r.exit_code == 0, r.stderr
    assert seen == [True]
    fd = os.open(tmp_path, os.O_RDONLY)  # and released afterwards
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_a_branch_published_while_this_run_worked_is_not_cut(digits_dir, tmp_path, monkeypatch):
    """The shared ledger is checked when the run starts and again when it publishes: a branch that another run
    recorded meanwhile makes this one refuse (exit 2) instead of rewriting the ledger without it."""
    import unlearn_tool.pipeline as pipeline

    shared, orig = tmp_path / "shared.ledger.jsonl", digits_dir / "mlp.safetensors"
    first = write_request(tmp_path, {"indices": list(range(0, 200, 7))}, name="a.yaml")
    req = write_request(tmp_path, {"indices": list(range(1, 200, 7))}, name="b.yaml")
    assert _apply(orig, first, tmp_path / "s1.safetensors", "--ledger", shared).exit_code == 0
    real = pipeline.unlearn_step
    other: list = []

    def step_while_another_run_publishes(*args, **kwargs):
        result = real(*args, **kwargs)
        if not other:  # the other run, start to end, while this one is between its work and its publishing
            other.append(None)  # (the other run's own step comes through here too)
            other[0] = _apply(tmp_path / "s1.safetensors", req, tmp_path / "s2b.safetensors", "--ledger", shared)
        return result

    monkeypatch.setattr(pipeline, "unlearn_step", step_while_another_run_publishes)
    r = _apply(tmp_path / "s1.safetensors", req, tmp_path / "s2a.safetensors", "--ledger", shared)
    assert other[0].exit_code == 0, (r.stderr, other[0].stderr)
    rejected(r, f"ledger {shared}", "s2b.safetensors")
    assert not (tmp_path / "s2a.safetensors").exists()
    monkeypatch.setattr(pipeline, "unlearn_step", real)
    assert invoke("ledger", "verify", tmp_path / "s2b.safetensors", "--original", orig, "--ledger", shared).exit_code == 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
