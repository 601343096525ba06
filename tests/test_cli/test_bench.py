"""`unlearn bench` end to end on digits, through the real CLI: table, files, a failing method, bad input."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import invoke

FILES = ("bench.json", "bench.csv", "bench.md", "bench.png")


def _bench(digits_dir, *extra):
    return invoke("bench", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "--device", "cpu", *extra)


def test_bench_two_methods_with_reference(digits_dir, tmp_path):
    rep = tmp_path / "rep"
    r = _bench(digits_dir, "--methods", "rfa,finetune", "--param", "finetune.epochs=1", "--seeds", "2",
               "--reference", digits_dir / "mlp.retrain_class.safetensors", "--report-dir", rep, "--json")
    assert r.exit_code == 0, r.stderr
    bench = json.loads(r.stdout)
    assert bench == json.loads((rep / "bench.json").read_text())
    assert all((rep / f).is_file() and (rep / f).stat().st_size > 0 for f in FILES)
    assert (rep / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in rep.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temporaries

    assert bench["schema"] == "unlearn.bench/v1" and bench["baseline"] == "reference" and bench["seeds"] == [0, 1]
    assert list(bench["methods"]) == ["rfa", "finetune"]
    assert bench["methods"]["finetune"]["params"]["epochs"] == 1
    ref = bench["reference"]["metrics"]
    assert ref["forget_acc"]["mean"] <= 0.02 and bench["retrain_time_s"]["mean"] > 0  # from `unlearn train` metadata
    for name, entry in bench["methods"].items():
        assert entry["status"] == "ok" and entry["error"] is None and entry["seeds"] == [0, 1]
        m = entry["metrics"]
        for key in ("forget_acc", "retain_acc", "test_acc", "test_remaining_acc", "test_forgotten_acc",
                    "mia_efficacy", "mia_loss_auc", "avg_gap", "wall_time_s", "time_fraction"):
            assert m[key]["mean"] is not None and m[key]["std"] is not None and len(m[key]["values"]) == 2, (name, key)
        assert all(v > 0 for v in m["wall_time_s"]["values"])
        assert m["time_fraction"]["mean"] == pytest.approx(m["wall_time_s"]["mean"] / bench["retrain_time_s"]["mean"])
        assert [run["seed"] for run in entry["runs"]] == [0, 1]
    rfa, ft = bench["methods"]["rfa"]["metrics"], bench["methods"]["finetune"]["metrics"]
    assert rfa["forget_acc"]["mean"] <= 0.05 and rfa["avg_gap"]["mean"] < ft["avg_gap"]["mean"]  # one epoch of FT forgets little
    assert bench["original"]["metrics"]["avg_gap"]["mean"] > 40  # doing nothing: far from the retrained model

    rows = list(csv.DictReader((rep / "bench.csv").read_text().splitlines()))
    assert [row["method"] for row in rows] == ["original", "reference", "rfa", "finetune"]
    assert float(rows[2]["avg_gap_mean"]) == pytest.approx(rfa["avg_gap"]["mean"], rel=1e-4)
    md = (rep / "bench.md").read_text()
    assert "| rfa |" in md and "| finetune |" in md and "Avg Gap to reference" in md and "Lowest Avg Gap to reference: **rfa**" in md
    assert "rfa" in bench["pareto_front"]


def test_bench_without_a_reference_publishes_no_pareto_front(digits_dir, tmp_path):
    """bench.json and bench.png ranked closeness to the original: a finetune that forgot nothing (gap 0 to the original)
    was on the front, drawn red. The terminal already named no front there."""
    r = _bench(digits_dir, "--methods", "rfa,finetune", "--param", "finetune.lr=1e-9", "--param", "finetune.epochs=1",
               "--seeds", "1", "--report-dir", tmp_path / "rep", "--json")
    assert r.exit_code == 0, r.stderr
    bench = json.loads(r.stdout)
    assert bench["baseline"] == "original" and bench["methods"]["finetune"]["metrics"]["avg_gap"]["mean"] < 0.5
    assert bench["pareto_front"] == []


@pytest.fixture
def failing_method():
    """A registered method that always raises; removed from the registry afterwards."""
    from pydantic import Field

    from unlearn_tool.methods import MethodParams, register_method
    from unlearn_tool.methods.base import _REGISTRY

    class BoomParams(MethodParams):
        x: int = Field(1, description="unused")

    def run(ctx, p):
        raise RuntimeError("boom: deliberately broken\nsecond line")

    register_method("boom-test", BoomParams, run, summary="always fails (test only)")
    yield "boom-test"
    _REGISTRY.pop("boom-test", None)


def test_bench_survives_a_failing_method(digits_dir, tmp_path, failing_method):
    rep = tmp_path / "rep"
    r = _bench(digits_dir, "--methods", f"{failing_method},rfa", "--seeds", "1", "--report-dir", rep)
    assert r.exit_code == 0, r.stderr  # the bench completed; the failure is a row of the table
    assert "FAILED: RuntimeError: boom: deliberately broken" in r.stderr and "second line" not in r.stderr
    assert "Avg Gap to original" in r.stderr
    bench = json.loads((rep / "bench.json").read_text())
    assert bench["baseline"] == "original" and bench["reference"] is None and bench["retrain_time_s"] is None
    boom, rfa = bench["methods"][failing_method], bench["methods"]["rfa"]
    assert boom["status"] == "failed" and boom["error"] == "RuntimeError: boom: deliberately broken"
    assert boom["metrics"]["forget_acc"]["mean"] is None and boom["runs"][0]["error"] == boom["error"]
    assert rfa["status"] == "ok" and rfa["error"] is None
    assert rfa["metrics"]["forget_acc"]["mean"] <= 0.05 and rfa["metrics"]["avg_gap"]["mean"] > 10
    assert rfa["metrics"]["time_fraction"]["mean"] is None  # no retraining time known
    assert "boom-test (failed): RuntimeError: boom" in (rep / "bench.md").read_text()
    assert all((rep / f).is_file() for f in FILES)


def test_bench_retrain_baseline(digits_dir, tmp_path):
    rep = tmp_path / "rep"
    r = _bench(digits_dir, "--methods", "rfa", "--seeds", "1", "--retrain", "--param", "retrain.epochs=3",
               "--report-dir", rep, "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    bench = json.loads(r.stdout)
    assert bench["baseline"] == "retrain" and bench["reference"]["method"] == "retrain"
    assert bench["reference"]["params"]["epochs"] == 3 and bench["retrain_time_s"]["mean"] > 0
    m = bench["methods"]["rfa"]["metrics"]
    assert m["avg_gap"]["mean"] is not None and m["time_fraction"]["mean"] > 0


@pytest.mark.parametrize("extra, message", [
    (("--methods", "rfa,nope"), "unknown method(s) nope; known methods:"),
    (("--methods", "rfa", "--param", "finetune.epochs=1"), "not among the benched methods"),
    (("--methods", "finetune", "--param", "finetune.epochs=0"), "finetune: method.params.epochs"),
    (("--methods", "rfa", "--param", "epochs=1"), "expected METHOD.key=value"),
    (("--methods", "rfa", "--retrain", "--reference", "x.safetensors"), "not both"),
])
def test_bench_bad_input_exits_2_and_writes_nothing(digits_dir, tmp_path, extra, message):
    rep = tmp_path / "rep"
    r = _bench(digits_dir, *extra, "--report-dir", rep)
    assert r.exit_code == 2, r.stderr
    assert message in r.stderr and r.stderr.count("\n") == 1
    assert not rep.exists()
    if "nope" in extra[1]:
        assert "rfa" in r.stderr and "finetune" in r.stderr and "retrain" in r.stderr  # lists the known names
