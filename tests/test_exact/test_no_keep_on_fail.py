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


def test_a_signal_during_the_audit_publishes_the_exact_output(exact_dir, tmp_path, monkeypatch):
    """No verdict, so the staged folder is published as without --no-keep-on-fail (and nothing staged is left behind)."""
    import unlearn_tool.audit as audit
    from unlearn_tool.errors import Terminated

    def cut_short(*_args, **_kwargs):
        raise Terminated(15)

    monkeypatch.setattr(audit, "audit_fresh_model", cut_short)
    out = tmp_path / "deleted"
    r = invoke("apply", exact_dir / "s3t", "-r", exact_dir / "delete.yaml", "-o", out, "--audit", "--no-keep-on-fail",
               "--report-dir", tmp_path / "rep", "--quiet")
    assert r.exit_code == 143 and f"{out} was written before that" in r.stderr, r.stderr
    assert invoke("inspect", out, "--json").exit_code == 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_audit_that_refuses_the_exact_result_for_nan_outputs_does_not_publish_it(exact_dir, tmp_path, monkeypatch):
    """The audit refusing the result itself (NaN/Inf outputs; here an ensemble made to give them) is a verdict against
    it, not an audit cut short: under --no-keep-on-fail the earlier folder stays, as for a failing verdict."""
    import unlearn_tool.exact.run as run

    out = tmp_path / "work" / "deleted"
    out.parent.mkdir()
    assert invoke("apply", exact_dir / "s3t", "-r", exact_dir / "delete.yaml", "-o", out, "--quiet").exit_code == 0
    before = tree(out.parent)

    class Diverged(run.EnsembleArtifact):
        def load(self, *args, **kwargs):
            model = super().load(*args, **kwargs)
            if ".staged" in str(self.path):  # the new result only: the input artifact is fine
                model.register_forward_hook(lambda _m, _a, y: y * float("nan"))
            return model

    monkeypatch.setattr(run, "EnsembleArtifact", Diverged)
    r = invoke("apply", exact_dir / "s3t", "-r", exact_dir / "delete.yaml", "-o", out, "--force", "--audit", "--no-keep-on-fail",
               "--report-dir", tmp_path / "rep", "--quiet")
    assert r.exit_code == 2 and "gives NaN/Inf outputs" in r.stderr and f"{out} was not published" in r.stderr, r.stderr
    assert tree(out.parent) == before
