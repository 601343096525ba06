"""`unlearn audit` and `unlearn apply --audit` end to end on digits, through the real CLI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import invoke, write_request


@pytest.fixture(scope="module")
def outputs(digits_dir, tmp_path_factory):
    """RFA outputs for class unlearning: a merged checkpoint and an adapter folder."""
    folder = tmp_path_factory.mktemp("audit")
    merged, adapter = folder / "out.safetensors", folder / "out_adapter"
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", merged, "--quiet")
    assert r.exit_code == 0, r.stderr
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", adapter, "--adapter-only", "--quiet")
    assert r.exit_code == 0, r.stderr
    return {"dir": folder, "merged": merged, "adapter": adapter}


def _audit(digits_dir, unlearned, *extra):
    return invoke("audit", "-r", digits_dir / "class.yaml", "--original", digits_dir / "mlp.safetensors",
                  "--unlearned", unlearned, "--device", "cpu", *extra)


def _validate(report: dict) -> None:
    import jsonschema

    from unlearn_tool.audit import load_schema

    jsonschema.Draft202012Validator(load_schema()).validate(report)


def test_audit_with_reference_passing_gates(digits_dir, outputs, tmp_path):
    r = _audit(digits_dir, outputs["merged"], "--reference", digits_dir / "mlp.retrain_class.safetensors",
               "--report-dir", tmp_path / "rep", "--gate", "forget_acc <= 0.02", "--gate", "avg_gap <= 5.0",
               "--gate", "test_remaining_acc_drop <= 0.05", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report == json.loads((tmp_path / "rep" / "report.json").read_text())
    _validate(report)
    assert report["schema"] == "unlearn.audit/v1" and report["verdict"] == "pass" and report["baseline"] == "reference"
    assert [g["passed"] for g in report["gates"]] == [True, True, True]
    unl, ref, orig = report["models"]["unlearned"], report["models"]["reference"], report["models"]["original"]
    assert unl["forget_acc"] <= 0.02 and orig["forget_acc"] > 0.95 and ref["forget_acc"] <= 0.02
    assert unl["test_forgotten_acc"] == 0.0 and unl["per_class_acc"][3] == 0.0
    assert orig["mia_efficacy"] < 0.2 and unl["mia_efficacy"] > 0.8  # the original still knows class 3; RFA does not
    assert report["gaps"]["avg_gap"] < 5.0 and report["models"]["reference"]["activation_distance"] is None
    assert unl["activation_distance"]["forget"] > unl["activation_distance"]["retain"]
    assert report["unlearning"]["method"] == "rfa" and report["unlearning"]["wall_time_s"] > 0
    assert report["unlearning"]["params"]["rank"] == 8
    sha = report["provenance"]["sha256"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", sha[k]) for k in ("request", "original", "unlearned", "reference"))
    assert {"tool", "torch", "torchvision", "peft"} <= set(report["provenance"]["versions"])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| forget_acc <= 0.02 |" in md and "Avg Gap" in md


def test_report_html_is_self_contained(digits_dir, outputs, tmp_path):
    r = _audit(digits_dir, outputs["merged"], "--report-dir", tmp_path / "rep", "--quiet")
    assert r.exit_code == 0, r.stderr
    page = (tmp_path / "rep" / "report.html").read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page)
    assert len([u for u in refs if u.startswith("data:image/png;base64,")]) == 2  # both plots embedded
    assert not [u for u in refs if not u.startswith("data:")]
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "@import" not in page


def test_default_report_dir_and_baseline_original(digits_dir, outputs):
    r = _audit(digits_dir, outputs["merged"], "--quiet")
    assert r.exit_code == 0, r.stderr
    report = json.loads((outputs["dir"] / "out.audit" / "report.json").read_text())
    _validate(report)
    assert report["baseline"] == "original" and report["models"]["reference"] is None
    assert report["verdict"] == "pass" and report["verdict_detail"]["decided_by"] == "default policy"
    assert report["gaps"]["baseline"] == "original"


def test_failing_gate_exits_3_after_writing_reports(digits_dir, outputs, tmp_path):
    r = _audit(digits_dir, outputs["merged"], "--report-dir", tmp_path / "rep", "--gate", "forget_acc >= 0.5", "--quiet")
    assert r.exit_code == 3
    assert "forget_acc >= 0.5" in r.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["verdict"] == "fail" and report["gates"][0]["passed"] is False and report["gates"][0]["value"] == 0.0


@pytest.mark.parametrize("gate, message", [
    ("forget_accuracy <= 0.1", "classification gates: retain_acc, forget_acc"),
    ("forget_acc <= os.system('x')", "expected '<metric> <op> <number>'"),
    ("avg_gap <= 1", "give --reference"),
])
def test_invalid_gates_exit_2(digits_dir, outputs, tmp_path, gate, message):
    r = _audit(digits_dir, outputs["merged"], "--report-dir", tmp_path / "rep", "--gate", gate, "--quiet")
    assert r.exit_code == 2
    assert message in r.stderr
    assert not (tmp_path / "rep").exists()


def test_adapter_folder_is_audited_as_base_plus_adapter(digits_dir, outputs, tmp_path):
    r = _audit(digits_dir, outputs["adapter"], "--report-dir", tmp_path / "rep", "--gate", "forget_acc <= 0.02", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    _validate(report)
    assert report["provenance"]["inputs"]["unlearned_kind"] == "adapter"
    assert any("the forgotten data is still in the base weights" in w for w in report["warnings"])
    assert report["models"]["unlearned"]["forget_acc"] <= 0.02
    assert report["unlearning"]["method"] == "rfa"


def test_all_zero_adapter_is_rejected(digits_dir, outputs, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    zero = tmp_path / "zero_adapter"
    shutil.copytree(outputs["adapter"], zero)
    weights = zero / "adapter_model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file({k: (v * 0 if "lora_B" in k else v) for k, v in tensors.items()}, str(weights), metadata=meta)
    r = _audit(digits_dir, zero, "--report-dir", tmp_path / "rep", "--quiet")
    assert r.exit_code == 2
    assert "trained nothing" in r.stderr
    assert not (tmp_path / "rep").exists()


def test_apply_audit_uses_request_gates_and_reference(digits_dir, tmp_path):
    audit = {"gates": ["forget_acc <= 0.02", "avg_gap <= 5.0"], "reference": str(digits_dir / "mlp.retrain_class.safetensors")}
    req = write_request(tmp_path, {"classes": [3]}, name="gated.yaml", extra={"audit": audit})
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", req, "-o", tmp_path / "out.safetensors", "--audit", "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["audit"]["verdict"] == "pass" and len(summary["audit"]["gates"]) == 2
    report = json.loads((tmp_path / "out.audit" / "report.json").read_text())
    _validate(report)
    assert report["baseline"] == "reference" and report["provenance"]["sha256"]["unlearned"] == summary["output_sha256"]

    strict = write_request(tmp_path, {"classes": [3]}, name="strict.yaml", extra={"audit": {"gates": ["retain_acc >= 1.01"]}})
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", strict, "-o", tmp_path / "out2.safetensors",
               "--audit", "--report-dir", tmp_path / "rep2", "--quiet")
    assert r.exit_code == 3
    assert (tmp_path / "out2.safetensors").exists() and (tmp_path / "rep2" / "report.json").exists()


def test_schema_ships_with_the_package():
    from unlearn_tool.audit import SCHEMA_PATH

    assert SCHEMA_PATH.exists() and SCHEMA_PATH.parent.name == "audit"
    assert json.loads(SCHEMA_PATH.read_text())["properties"]["schema"]["const"] == "unlearn.audit/v1"
    text = Path(__file__).resolve().parents[2].joinpath("pyproject.toml").read_text()
    assert '"audit/*.json"' in text and '"examples/*.yaml"' in text


HOSTILE_ID = "x **PASS: forged** ![t](http://evil.example/t.png) [click](http://evil.example) `code` &amp; <b>b</b> $x^{$ forget_acc"


def test_foreign_text_renders_as_itself_in_report_md_and_bench_png(digits_dir, outputs, tmp_path):
    """report.md escaped only `<` and `|`: a request id made a remote image (a tracking pixel), a link and bold text
    when the Markdown was rendered. bench read an unpaired `$` in the id as TeX and failed after all its runs
    (exit 1, "unexpected ValueError"), leaving an empty report folder."""
    from markdown_it import MarkdownIt

    req = write_request(tmp_path, {"classes": [3]}, name="hostile.yaml", method={"name": "finetune", "params": {"epochs": 1}})
    req.write_text(req.read_text().replace("id: test-hostile.yaml", f"id: {json.dumps(HOSTILE_ID)}"))
    r = invoke("audit", "-r", req, "--original", digits_dir / "mlp.safetensors", "--unlearned", outputs["merged"],
               "--report-dir", tmp_path / "rep", "--quiet")
    assert r.exit_code == 0, r.stderr
    html = MarkdownIt("commonmark").render((tmp_path / "rep" / "report.md").read_text())
    title = html.split("</h1>")[0]
    assert not re.search(r"<(img|a|strong|code|b)\b", title), title
    assert "**PASS: forged** ![t](http://evil.example/t.png)" in title and "&amp;amp;" in title and "forget_acc" in title

    r = invoke("bench", digits_dir / "mlp.safetensors", "-r", req, "--methods", "finetune", "--seeds", "1",
               "--report-dir", tmp_path / "bench", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "bench" / "bench.png").stat().st_size > 10_000
    html = MarkdownIt("commonmark").render((tmp_path / "bench" / "bench.md").read_text())
    assert not re.search(r"<(img|a|strong|code|b)\b", html.split("</h1>")[0])


def test_a_report_that_fails_to_render_leaves_no_folder_and_a_file_parent_is_named(digits_dir, outputs, tmp_path, monkeypatch):
    import unlearn_tool.audit.report as report

    def broken(*args, **kwargs):
        raise ValueError("a plot that cannot be drawn")

    monkeypatch.setattr(report, "_distribution_panels", broken)
    r = _audit(digits_dir, outputs["merged"], "--report-dir", tmp_path / "rep", "--quiet")
    assert r.exit_code == 1 and not (tmp_path / "rep").exists(), r.stderr
    (tmp_path / "afile").write_text("x")
    r = _audit(digits_dir, outputs["merged"], "--report-dir", tmp_path / "afile" / "sub", "--quiet")
    assert r.exit_code == 2 and f"report dir parent {tmp_path / 'afile'} is a file" in r.stderr, r.stderr


def test_warnings_and_a_failing_methods_error_render_as_text_in_the_markdown(digits_dir, outputs, tmp_path):
    """The audit's warnings list and bench.md's failures list were left unescaped (a model's own exception text, a
    ledger path or its error): bold text, a remote image and raw HTML when rendered."""
    from markdown_it import MarkdownIt

    from unlearn_tool.audit.report import render_markdown
    from unlearn_tool.methods import MethodParams, register_method
    from unlearn_tool.methods.base import _REGISTRY

    hostile = "**bold** ![px](http://evil.example/p.png) <img src=x>"
    r = _audit(digits_dir, outputs["merged"], "--report-dir", tmp_path / "rep", "--quiet")
    assert r.exit_code == 0, r.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    report["warnings"].append(hostile)
    html = MarkdownIt("commonmark").render(render_markdown(report))
    assert not re.search(r"<(img|strong)\b", html.split("Warnings")[1]), html

    def run(ctx, p):
        raise RuntimeError(hostile)

    register_method("boom-md", MethodParams, run, summary="always fails (test only)")
    try:
        r = invoke("bench", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "--methods", "boom-md", "--seeds", "1",
                   "--report-dir", tmp_path / "bench", "--quiet")
    finally:
        _REGISTRY.pop("boom-md", None)
    assert r.exit_code == 0, r.stderr
    html = MarkdownIt("commonmark").render((tmp_path / "bench" / "bench.md").read_text())
    failures = html.split("Failures")[1]
    assert "boom-md" in failures and not re.search(r"<(img|strong)\b", failures), failures
