"""apply --audit --no-keep-on-fail publishes only after the verdict: a failing audit leaves the world as it was before
the command (an earlier output written with --force and its ledger byte-identical), a passing one replaces them."""

from __future__ import annotations

import json

import pytest

from conftest import invoke
from helpers import tree

NO_FORGETTING = ["--param", "epochs=1", "--param", "stop=epochs", "--param", "lr=1e-6"]  # one pass at a tiny lr: the audit fails


def _apply(digits_dir, out, *args):
    return invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", out, "--quiet", *args)


def _outside(files: dict[str, str], *folders: str) -> dict[str, str]:
    return {k: v for k, v in files.items() if not any(k.startswith(f + "/") for f in folders)}


@pytest.mark.parametrize("mode", ["merged", "adapter"])
def test_a_failing_audit_leaves_an_earlier_output_and_its_ledger_as_they_were(digits_dir, tmp_path, mode):
    """The --force write replaced the earlier output before the audit ran, and the failing verdict then removed the
    new one: the earlier output was gone while its ledger stayed behind, describing a file that no longer existed."""
    adapter = ["--adapter-only"] if mode == "adapter" else []
    out = tmp_path / ("u" if adapter else "u.safetensors")
    assert _apply(digits_dir, out, *adapter).exit_code == 0  # the earlier, successful apply: OUT and its ledger
    before = tree(tmp_path)
    assert "u.ledger.jsonl" in before
    r = _apply(digits_dir, out, *adapter, *NO_FORGETTING, "--force", "--audit", "--no-keep-on-fail", "--json", "--report-dir", tmp_path / "r")
    assert r.exit_code == 3, r.stderr
    assert json.loads(r.stdout)["output_removed"] is True and json.loads(r.stdout)["ledger"] is None
    assert _outside(tree(tmp_path), "r") == before  # byte-identical: nothing replaced, nothing added
    assert (tmp_path / "r" / "report.json").is_file()  # the evidence of the failed attempt
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    if not adapter:
        r = invoke("ledger", "verify", out, "--original", digits_dir / "mlp.safetensors")
        assert r.exit_code == 0, r.stdout + r.stderr


def test_a_passing_audit_replaces_the_earlier_output_and_its_ledger(digits_dir, tmp_path):
    out = tmp_path / "u.safetensors"
    assert _apply(digits_dir, out, *NO_FORGETTING).exit_code == 0
    r = _apply(digits_dir, out, "--force", "--audit", "--no-keep-on-fail", "--json", "--report-dir", tmp_path / "r")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["output_removed"] is False
    entries = [json.loads(line) for line in (tmp_path / "u.ledger.jsonl").read_text().splitlines()]
    assert [e["output_sha256"] for e in entries] == [summary["output_sha256"]]
    assert invoke("ledger", "verify", out, "--original", digits_dir / "mlp.safetensors").exit_code == 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failing_audit_leaves_a_shared_ledger_as_it_was(digits_dir, tmp_path):
    out, shared = tmp_path / "u.safetensors", tmp_path / "shared.ledger.jsonl"
    assert _apply(digits_dir, out, "--ledger", shared).exit_code == 0
    before = tree(tmp_path)
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", out, *NO_FORGETTING, "--ledger", shared,
               "--force", "--audit", "--no-keep-on-fail", "--report-dir", tmp_path / "r")
    assert r.exit_code == 3, r.stderr
    assert f"did not publish {out}" in r.stderr and "are as they were" in r.stderr
    assert _outside(tree(tmp_path), "r") == before
    assert invoke("ledger", "verify", out, "--original", digits_dir / "mlp.safetensors", "--ledger", shared).exit_code == 0


def test_a_signal_during_the_audit_over_an_earlier_output_publishes_the_new_one_with_its_ledger(digits_dir, tmp_path, monkeypatch):
    """No verdict, so the output is published as without the flag (--force: over the earlier one), with its ledger entry."""
    import unlearn_tool.audit as audit
    from unlearn_tool.errors import Terminated

    out = tmp_path / "u.safetensors"
    assert _apply(digits_dir, out).exit_code == 0
    earlier = tree(tmp_path)

    def cut_short(*_args, **_kwargs):
        raise Terminated(15)

    monkeypatch.setattr(audit, "audit_fresh_model", cut_short)
    r = _apply(digits_dir, out, "--seed", "1", "--force", "--audit", "--no-keep-on-fail", "--report-dir", tmp_path / "r")
    assert r.exit_code == 143 and f"{out} was written before that" in r.stderr, r.stderr
    now = tree(tmp_path)
    assert now["u.safetensors"] != earlier["u.safetensors"] and now["u.ledger.jsonl"] != earlier["u.ledger.jsonl"]
    assert invoke("ledger", "verify", out, "--original", digits_dir / "mlp.safetensors").exit_code == 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("audit", [[], ["--audit", "--no-keep-on-fail"]])
def test_a_signal_while_the_ledger_is_written_waits_until_output_and_ledger_are_both_there(digits_dir, tmp_path, monkeypatch, audit):
    """SIGTERM between publishing the output and recording its ledger entry left an output no ledger knew (ledger verify
    failed): the signal now waits for the ledger, then exits 143."""
    import os
    import signal

    import unlearn_tool.ledger as ledger

    real = ledger.store_forget_set

    def store_after_a_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(ledger, "store_forget_set", store_after_a_sigterm)
    out = tmp_path / "u.safetensors"
    r = _apply(digits_dir, out, *audit, "--report-dir", tmp_path / "r")
    assert r.exit_code == 143 and "terminated by signal 15" in r.stderr, r.stderr
    monkeypatch.setattr(ledger, "store_forget_set", real)
    assert invoke("ledger", "verify", out, "--original", digits_dir / "mlp.safetensors").exit_code == 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("audit", [[], ["--audit", "--no-keep-on-fail"]])
def test_an_output_that_became_a_folder_of_yours_during_the_run_is_kept(digits_dir, tmp_path, monkeypatch, audit):
    """The output is checked again when it is published (it waited in its staging folder): --force never replaces
    what appeared there meanwhile unless this tool wrote it."""
    import unlearn_tool.pipeline as pipeline

    out = tmp_path / "u.safetensors"
    assert _apply(digits_dir, out).exit_code == 0
    real = pipeline.unlearn_step

    def step_then_the_user_acts(*args, **kwargs):
        result = real(*args, **kwargs)
        out.unlink()
        out.mkdir()
        (out / "thesis.tex").write_text("years of work")
        return result

    monkeypatch.setattr(pipeline, "unlearn_step", step_then_the_user_acts)
    ledger = tree(tmp_path)["u.ledger.jsonl"]
    r = _apply(digits_dir, out, *audit, "--force", "--report-dir", tmp_path / "r")
    assert r.exit_code == 2 and "is a folder" in r.stderr, r.stderr
    assert (out / "thesis.tex").read_text() == "years of work" and tree(tmp_path)["u.ledger.jsonl"] == ledger
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_signals_deferred_holds_a_signal_until_the_block_is_done():
    import os
    import signal

    from unlearn_tool.errors import Terminated
    from unlearn_tool.interrupts import signals_deferred

    def raise_terminated(signum, _frame):
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    done = []
    try:
        with pytest.raises(Terminated):
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("after the signal")
        assert done == ["after the signal"] and signal.getsignal(signal.SIGTERM) is raise_terminated
        with signals_deferred():  # nothing held: nothing raised
            done.append("quiet")
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("ledger, fragment", [
    ("model.safetensors", "is the input checkpoint"),  # it was overwritten with the ledger's JSON lines: the input destroyed
    ("req.yaml", "is the request"),
    ("u.safetensors", "is the output"),
    ("afolder", "is a folder"),  # found only after the output was published: an output no ledger knew, exit 2
    ("notes.txt/l.jsonl", "is not a folder"),  # exit 1 "unexpected NotADirectoryError", after the output was published
    ("notes.txt", "exists and is not a ledger"),  # the user's file, replaced by a ledger
])
def test_a_ledger_that_cannot_or_must_not_be_written_fails_before_any_work(digits_dir, tmp_path, ledger, fragment):
    import shutil

    from helpers import rejected

    shutil.copy(digits_dir / "mlp.safetensors", tmp_path / "model.safetensors")
    shutil.copy(digits_dir / "class.yaml", tmp_path / "req.yaml")
    (tmp_path / "afolder").mkdir()
    (tmp_path / "notes.txt").write_text("the user's notes\n")
    before = tree(tmp_path)
    r = invoke("apply", tmp_path / "model.safetensors", "-r", tmp_path / "req.yaml", "-o", tmp_path / "u.safetensors",
               "--ledger", tmp_path / ledger, "--quiet")
    rejected(r, fragment, "--ledger")
    assert tree(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["afolder", "model.safetensors", "notes.txt", "req.yaml"]


@pytest.fixture
def nan_on_one_retained_sample(digits_dir):
    """A registered method whose result is the original with NaN outputs on one retained sample only (the one with
    the largest pixel sum, which the --summary-samples 1 summary does not read); removed afterwards."""
    from unlearn_tool.methods import MethodOutput, MethodParams, register_method, unregister_method

    def run(ctx, p):
        model = ctx.student()
        x = ctx.retain.take(__import__("torch").arange(len(ctx.retain)))[0]
        brightest = float(x.flatten(1).sum(1).max())

        def nan_there(_module, args, out):
            out = out.clone()
            out[args[0].flatten(1).sum(1) >= brightest] = float("nan")
            return out

        model.register_forward_hook(nan_there)
        return MethodOutput(model=model)

    register_method("test-nan-one", MethodParams, run, summary="test only", tasks=("classification",), scenarios=("class", "sample"))
    yield "test-nan-one"
    unregister_method("test-nan-one")


def test_an_audit_that_refuses_the_result_for_nan_outputs_does_not_publish_it(digits_dir, tmp_path, nan_on_one_retained_sample):
    """The summary reads only some retained samples, so a result with NaN outputs on one of the others is written and
    the audit refuses it (docs/audit.md, "Non-finite outputs"). Under --no-keep-on-fail that refusal was taken for an
    audit cut short and the diverged result was published with --force over the earlier output."""
    out = tmp_path / "u.safetensors"
    assert _apply(digits_dir, out).exit_code == 0
    before = tree(tmp_path)
    r = _apply(digits_dir, out, "--method", nan_on_one_retained_sample, "--summary-samples", "1", "--force", "--audit",
               "--no-keep-on-fail", "--report-dir", tmp_path / "r")
    assert r.exit_code == 2 and "gives NaN/Inf outputs on 1 of" in r.stderr, r.stderr
    assert f"{out} was not published (--no-keep-on-fail)" in r.stderr, r.stderr
    assert tree(tmp_path) == before


def test_a_full_disk_while_the_ledger_is_written_publishes_nothing(digits_dir, tmp_path, monkeypatch):
    """The ledger was written after the output was published: an I/O error there (a full disk) left an output, over the
    earlier one (--force), that no ledger knew. Now the ledger is written first and put in place by a rename once the
    output is: the run fails (exit 2, one line), the earlier output, its ledger and its forgotten sets stay as they were."""
    import errno
    from pathlib import Path

    out = tmp_path / "u.safetensors"
    assert _apply(digits_dir, out).exit_code == 0
    before = tree(tmp_path)
    real = Path.write_text

    def full_disk_for_the_ledger(self, *args, **kwargs):
        if self.name.startswith(".unlearn-") and self.parent == tmp_path:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk_for_the_ledger)
    sample = digits_dir / "sample.yaml"  # another request: its forgotten set would be a new file beside the ledger
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", sample, "-o", out, "--quiet", "--force")
    monkeypatch.setattr(Path, "write_text", real)
    assert tree(tmp_path) == before, r.stderr
    assert r.exit_code == 2 and "cannot write ledger" in r.stderr and "No space left on device" in r.stderr, r.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert invoke("ledger", "verify", out, "--original", digits_dir / "mlp.safetensors").exit_code == 0

    # a new output (no earlier one): nothing is left behind, not even the empty folder its forgotten sets would go in
    monkeypatch.setattr(Path, "write_text", full_disk_for_the_ledger)
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", sample, "-o", tmp_path / "v.safetensors", "--quiet")
    monkeypatch.setattr(Path, "write_text", real)
    assert r.exit_code == 2 and "cannot write ledger" in r.stderr, r.stderr
    assert tree(tmp_path) == before and not (tmp_path / "v.ledger.d").exists()
