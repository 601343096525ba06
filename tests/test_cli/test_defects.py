"""Defects a review of main found (issue 8), each a test that failed before its fix."""

from __future__ import annotations

import json

import pytest

from conftest import invoke, write_request
from helpers import rejected


def test_train_option_error_is_one_line_not_a_python_list(digits_dir, tmp_path):
    line = rejected(invoke("train", "-r", digits_dir / "class.yaml", "-o", tmp_path / "m.safetensors", "--lr", "-1"), "--lr")
    assert "[" not in line and "greater than 0" in line
    rejected(invoke("train", "-r", digits_dir / "class.yaml", "-o", tmp_path / "m.safetensors", "--optimizer", "rmsprop"), "--optimizer")
    assert not (tmp_path / "m.safetensors").exists()


def test_validate_json_reports_failure_too(digits_dir, tmp_path):
    r = invoke("validate", "-r", digits_dir / "class.yaml", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"] is True
    bad = write_request(tmp_path, {"classes": [42]})
    r = invoke("validate", "-r", bad, "--json")
    assert r.exit_code == 2
    out = json.loads(r.stdout)
    assert out["ok"] is False and "class 42" in out["error"] and out["exit_code"] == 2


def test_method_parameters_are_checked_before_data_is_loaded(digits_dir, tmp_path):
    req = write_request(tmp_path, {"classes": [3]}, extra={"data": {"train": {"source": "tensors", "path": "missing.safetensors"},
                                                                     "test": {"source": "sklearn:digits"}}})
    rejected(invoke("apply", digits_dir / "mlp.safetensors", "-r", req, "-o", tmp_path / "o.safetensors", "--param", "rank=0", "--quiet"),
             "method.params.rank")


def test_merged_flag_overrides_an_adapter_request(digits_dir, tmp_path):
    req = write_request(tmp_path, {"classes": [3]}, extra={"output": {"mode": "adapter"}},
                        method={"name": "rfa", "params": {"epochs": 1, "stop": "epochs"}})
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", req, "-o", tmp_path / "m.safetensors", "--merged", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["output_mode"] == "merged" and (tmp_path / "m.safetensors").is_file()
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", req, "-o", tmp_path / "a", "--json", "--quiet")
    assert json.loads(r.stdout)["output_mode"] == "adapter" and (tmp_path / "a").is_dir()


def test_audit_is_repeatable_including_the_random_model_of_zrf(digits_dir, tmp_path):
    args = ["audit", "-r", digits_dir / "class.yaml", "--original", digits_dir / "mlp.safetensors",
            "--unlearned", digits_dir / "mlp.retrain_class.safetensors", "--json", "--quiet"]
    a = json.loads(invoke(*args, "--report-dir", tmp_path / "a").stdout)
    b = json.loads(invoke(*args, "--report-dir", tmp_path / "b").stdout)
    assert a["models"] == b["models"]
    c = json.loads(invoke(*args, "--report-dir", tmp_path / "c", "--seed", "7").stdout)
    assert c["models"]["unlearned"]["zrf"] != a["models"]["unlearned"]["zrf"]  # the seed does reach the random model


def test_report_dir_never_lands_among_foreign_files(digits_dir, tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    rejected(invoke("audit", "-r", digits_dir / "class.yaml", "--original", digits_dir / "mlp.safetensors",
                    "--unlearned", digits_dir / "mlp.retrain_class.safetensors", "--report-dir", tmp_path, "--quiet"), "did not write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


def test_methods_listing_shows_tasks_and_choices(digits_dir):
    r = invoke("methods", "rfa")
    assert r.exit_code == 0 and "PydanticUndefined" not in r.stdout
    assert "one of 'criterion', 'epochs'" in r.stdout and "tasks: classification" in r.stdout
    listing = json.loads(invoke("methods", "--json").stdout)
    assert {"name", "summary", "adapter", "tasks", "label_free"} <= set(listing[0])


def test_methods_json_listing_marks_the_methods_whose_batches_torchrun_splits():
    """README ("Several GPUs or machines"): the data-parallel methods are marked in `unlearn methods --json`."""
    listing = json.loads(invoke("methods", "--json").stdout)
    marked = {e["name"] for e in listing if e["data_parallel"]}
    assert marked == {"retrain", "finetune", "l1-sparse", "neggrad", "neggrad+"}


def test_methods_answer_without_importing_torch_once_cached(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "UNLEARN_CACHE_DIR": str(tmp_path)}
    root = Path(__file__).resolve().parents[2]
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom cli.main import app\n"
            "r = CliRunner().invoke(app, ['methods', 'rfa'])\nassert r.exit_code == 0 and 'rank' in r.stdout, r.output\n"
            "r = CliRunner().invoke(app, ['methods', 'nope'])\nassert r.exit_code == 2 and 'known methods' in r.stderr\n"
            "print('torch' in sys.modules)\n")
    first = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr  # the first call fills the cache (it may import torch)
    second = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert second.stdout.strip() == "False", second.stderr


def test_cli_lets_torch_threads_sleep_unless_the_user_chose_a_wait_policy():
    """libgomp's default spin made every step 10-70x slower when another process held a core (benchmarks/cpu_threads.py):
    the CLI sets OMP_WAIT_POLICY=PASSIVE before torch loads, and leaves a user's own choice alone."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = ("import os, sys\nimport cli.main\nassert 'torch' not in sys.modules\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def seen(**extra: str) -> str:
        r = subprocess.run([sys.executable, "-c", code], cwd=root, env={**clean, **extra}, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    assert seen() == "PASSIVE None"
    assert seen(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE None"
    assert seen(GOMP_SPINCOUNT="10000") == "None 10000"


# ---------------------------------------------------------------- the report-folder attack report (stop 28)

def _audit(digits_dir, report_dir, **kw):
    return invoke("audit", "-r", digits_dir / "class.yaml", "--original", digits_dir / "mlp.safetensors",
                  "--unlearned", digits_dir / "mlp.retrain_class.safetensors", "--report-dir", report_dir, "--quiet", **kw)


def test_a_users_file_named_like_a_report_is_never_replaced(digits_dir, tmp_path):
    """The folder check went by name: notes/report.md of the user's was overwritten by the audit (and bench.md by bench)."""
    from helpers import tree

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "report.md").write_text("my precious notes")
    before = tree(tmp_path / "notes")
    rejected(_audit(digits_dir, tmp_path / "notes"), "did not write (report.md)")
    assert tree(tmp_path / "notes") == before
    assert _audit(digits_dir, tmp_path / "ours").exit_code == 0
    assert _audit(digits_dir, tmp_path / "ours").exit_code == 0  # a folder an earlier report wrote is reused


def test_a_dangling_link_as_report_dir_is_refused_before_any_work(digits_dir, tmp_path, monkeypatch):
    """It ran to the end, then said "cannot create report dir (File exists)"."""
    import unlearn_tool.audit.core as core

    def no_work(*_a, **_k):
        raise AssertionError("the audit started its work")

    monkeypatch.setattr(core, "finite_outputs", no_work)
    (tmp_path / "dl").symlink_to(tmp_path / "nowhere")
    rejected(_audit(digits_dir, tmp_path / "dl"), "is a link to nothing")


@pytest.mark.parametrize("keep", [[], ["--no-keep-on-fail"]])
def test_apply_audit_refuses_a_report_dir_at_the_outputs_path_before_any_work(digits_dir, tmp_path, keep):
    """--report-dir equal to -o: the output was published, then the audit failed (exit 2); with --no-keep-on-fail the
    reports took the output's path as a folder and the unlearned model was lost."""
    from helpers import tree

    out = tmp_path / "u.safetensors"
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", out, "--audit", *keep,
               "--report-dir", out, "--quiet")
    rejected(r, f"report dir {out} is the output")
    assert tree(tmp_path) == {}


def test_a_signal_while_the_reports_are_written_leaves_all_of_one_report_or_the_earlier_one(digits_dir, tmp_path, monkeypatch):
    """report.json and report.md were renamed into place before report.html was rendered: a SIGTERM between left the
    new JSON beside the earlier HTML. Now the three are rendered first, then renamed together with the signal held."""
    import os
    import signal

    import unlearn_tool.audit.report as report
    import unlearn_tool.reporting as reporting
    from helpers import tree

    assert _audit(digits_dir, tmp_path / "rep").exit_code == 0
    earlier = tree(tmp_path / "rep")
    again = ["audit", "-r", digits_dir / "class.yaml", "--original", digits_dir / "mlp.safetensors",
             "--unlearned", digits_dir / "mlp.safetensors", "--report-dir", tmp_path / "rep", "--quiet"]
    real_render, real_replace = report.render_html, os.replace

    def render_then_sigterm(rep):  # while rendering: nothing is replaced
        html = real_render(rep)
        os.kill(os.getpid(), signal.SIGTERM)
        return html

    monkeypatch.setattr(report, "render_html", render_then_sigterm)
    r = invoke(*again)
    assert r.exit_code == 143 and "no output was written" in r.stderr, r.stderr
    assert tree(tmp_path / "rep") == earlier
    monkeypatch.setattr(report, "render_html", real_render)

    def replace_after_a_sigterm(src, dst):  # between the renames: all of them happen, then the signal
        os.kill(os.getpid(), signal.SIGTERM)
        return real_replace(src, dst)

    monkeypatch.setattr(reporting.os, "replace", replace_after_a_sigterm)
    r = invoke(*again)
    monkeypatch.setattr(reporting.os, "replace", real_replace)
    assert r.exit_code == 143 and f"{tmp_path / 'rep'} was written before that" in r.stderr, r.stderr
    now = tree(tmp_path / "rep")
    assert set(now) == set(earlier) and all(now[f] != earlier[f] for f in now), (now, earlier)
    assert not [p.name for p in (tmp_path / "rep").iterdir() if p.name.startswith(".")]


def test_hostile_text_stays_text_in_the_markdown_and_html_reports(digits_dir, tmp_path):
    """A request id (or metadata) with a newline, an ANSI escape, raw HTML and a `|`: the Markdown title gained a second
    heading, table rows split, raw ESC bytes and a `<img onerror>` went into report.md and report.html."""
    import yaml

    req = yaml.safe_load((digits_dir / "class.yaml").read_text())
    req["id"] = "x\n# H1 <img src=x onerror=alert(1)> | y \x1b[31mRED"
    (tmp_path / "h.yaml").write_text(yaml.safe_dump(req))
    r = invoke("audit", "-r", tmp_path / "h.yaml", "--original", digits_dir / "mlp.safetensors",
               "--unlearned", digits_dir / "mlp.retrain_class.safetensors", "--report-dir", tmp_path / "rep", "--quiet")
    assert r.exit_code == 0, r.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    page = (tmp_path / "rep" / "report.html").read_text()
    assert [line for line in md.splitlines() if line.startswith("# ")] == [md.splitlines()[0]]
    assert "\\<img" in md.splitlines()[0] and "\\x0a" in md.splitlines()[0]
    import re

    for text in (md, page):
        assert "\x1b" not in text and not re.search(r"(?<!\\)<img src=x", text)


def test_a_gate_number_is_an_ascii_decimal(digits_dir, tmp_path):
    """'١' (Arabic-Indic one) matched \\d and float() read it as 1.0: the gate passed."""
    rejected(invoke("audit", "-r", digits_dir / "class.yaml", "--original", digits_dir / "mlp.safetensors",
                    "--unlearned", digits_dir / "mlp.retrain_class.safetensors", "--gate", "forget_acc <= \u0661",
                    "--report-dir", tmp_path / "rep", "--quiet"), "gate")


def test_a_reference_that_is_the_original_is_named_in_the_warnings(digits_dir, tmp_path):
    """Accepted without comment: every gap was measured against the model that still knows the forget set."""
    r = invoke("audit", "-r", digits_dir / "class.yaml", "--original", digits_dir / "mlp.safetensors",
               "--unlearned", digits_dir / "mlp.retrain_class.safetensors", "--reference", digits_dir / "mlp.safetensors",
               "--report-dir", tmp_path / "rep", "--json", "--quiet")
    assert any("the reference is the original model itself" in w for w in json.loads(r.stdout)["warnings"]), r.stdout


def test_a_negative_retraining_time_in_the_references_metadata_is_not_used(digits_dir, tmp_path):
    """`unlearn.wall_time_s: -5` became "Retraining time: -5.00 s" and negative time fractions (NaN and Inf were ignored)."""
    from safetensors.torch import load_file, save_file

    from unlearn_tool.checkpoint import read_checkpoint

    _, meta = read_checkpoint(digits_dir / "mlp.retrain_class.safetensors")
    save_file(load_file(str(digits_dir / "mlp.retrain_class.safetensors")), str(tmp_path / "ref.safetensors"),
              metadata={**meta, "unlearn.wall_time_s": "-5"})
    r = invoke("bench", "-r", digits_dir / "class.yaml", digits_dir / "mlp.safetensors", "--methods", "finetune", "--seeds", "1",
               "--param", "finetune.epochs=1", "--reference", tmp_path / "ref.safetensors", "--report-dir", tmp_path / "b", "--quiet")
    assert r.exit_code == 0, r.stderr
    bench = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert bench["retrain_time_s"] is None
    assert bench["methods"]["finetune"]["metrics"]["time_fraction"]["mean"] is None
