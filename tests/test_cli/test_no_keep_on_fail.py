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
