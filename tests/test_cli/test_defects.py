"""Defects a review of main found (issue 8), each a test that failed before its fix."""

from __future__ import annotations

import json

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
