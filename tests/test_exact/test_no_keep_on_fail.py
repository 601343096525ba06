"""apply --audit --no-keep-on-fail on an exact artifact: a failing audit leaves an earlier output folder (--force) as it was."""

from __future__ import annotations

import yaml

from conftest import invoke
from helpers import tree


def test_a_failing_audit_leaves_an_earlier_exact_output_as_it_was(exact_dir, tmp_path):
    """The new artifact folder replaced the earlier one (--force) and the failing verdict then deleted it: the earlier
    artifact, with every deletion it recorded, was lost."""
    out = tmp_path / "work" / "deleted"
    out.parent.mkdir()
    assert invoke("apply", exact_dir / "s3t", "-r", exact_dir / "delete.yaml", "-o", out, "--quiet").exit_code == 0
    before = tree(out.parent)
    request = yaml.safe_load((exact_dir / "delete.yaml").read_text())
    request["audit"] = {"gates": ["test_acc <= 0.01"]}  # a gate no useful model passes
    (tmp_path / "failing.yaml").write_text(yaml.safe_dump(request))
    r = invoke("apply", exact_dir / "s3t", "-r", tmp_path / "failing.yaml", "-o", out, "--force", "--audit", "--no-keep-on-fail",
               "--report-dir", tmp_path / "rep", "--quiet")
    assert r.exit_code == 3, r.stderr
    assert tree(out.parent) == before
    assert (tmp_path / "rep" / "report.json").is_file()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
