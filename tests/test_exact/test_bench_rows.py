"""`unlearn bench --methods rfa,s3t,sisa`: exact rows trained from the request, deleted by deactivation, audited."""

from __future__ import annotations

import csv
import json

import numpy as np

from conftest import invoke, write_request

S3T = ["--param", "s3t.shards=3", "--param", "s3t.slices=3", "--param", "s3t.sequences=2", "--param", "s3t.epochs=2"]
SISA = ["--param", "sisa.shards=3", "--param", "sisa.slices=3", "--param", "sisa.epochs=6"]
FORGET = [5, 300, 900]  # three samples: a few stages each, far from exhausting the budget


def _delete_request(folder):
    return write_request(folder, {"indices": FORGET}, name="delete3.yaml")


def test_bench_has_exact_rows_next_to_rfa_and_retraining(digits_dir, tmp_path):
    req, rep = _delete_request(tmp_path), tmp_path / "rep"
    r = invoke("bench", digits_dir / "mlp.safetensors", "-r", req, "--device", "cpu", "--methods", "rfa,s3t,sisa", "--retrain",
               "--seeds", "1", "--param", "retrain.epochs=10", *S3T, *SISA, "--report-dir", rep, "--json")
    assert r.exit_code == 0, r.stderr
    bench = json.loads(r.stdout)
    assert list(bench["methods"]) == ["rfa", "s3t", "sisa"] and bench["baseline"] == "retrain"
    for name in ("s3t", "sisa"):
        entry = bench["methods"][name]
        assert entry["status"] == "ok", entry["error"]
        m, info = entry["metrics"], entry["runs"][0]["info"]
        for key in ("forget_acc", "retain_acc", "test_acc", "mia_efficacy", "avg_gap", "wall_time_s", "time_fraction", "train_time_s"):
            assert m[key]["mean"] is not None, (name, key)
        assert m["test_acc"]["mean"] > 0.5  # a working ensemble after the deletion
        # the deletion is timed apart from the one-off training, and is a small part of it (no gradient step)
        assert m["wall_time_s"]["mean"] == info["deletion_latency_s"] and m["train_time_s"]["mean"] == info["train_time_s"]
        assert m["train_time_s"]["mean"] > m["wall_time_s"]["mean"] > 0
        assert info["gradient_steps"] is False and info["deleted_samples"] == len(FORGET)
        assert info["deactivated"] > 0 and info["lineage_violations"] == 0 and info["shards_serving_after"] >= 1
        assert entry["params"]["shards"] == 3
    assert bench["methods"]["s3t"]["params"]["init"] == "checkpoint" and bench["methods"]["sisa"]["params"]["init"] == "random"
    assert any("outside the exact guarantee" in w for w in bench["methods"]["s3t"]["runs"][0]["warnings"])
    assert bench["methods"]["rfa"]["metrics"]["train_time_s"]["mean"] is None  # approximate rows have no training cost
    md = (rep / "bench.md").read_text()
    assert "| s3t |" in md and "| sisa |" in md and "train s" in md and "deletion's latency" in md
    rows = {row["method"]: row for row in csv.DictReader((rep / "bench.csv").read_text().splitlines())}
    assert float(rows["sisa"]["train_time_s_mean"]) > 0 and rows["rfa"]["train_time_s_mean"] == ""


def test_forget_set_is_out_of_every_active_component(digits_dir, tmp_path):
    """The kept artifact of an exact row: recompute every active stage's data from the assignment; no forgotten sample."""
    from unlearn_tool.artifacts import EnsembleArtifact
    from unlearn_tool.bench.exact_rows import exact_row_params, run_exact
    from unlearn_tool.job import prepare

    job = prepare(_delete_request(tmp_path), digits_dir / "mlp.safetensors", device="cpu")
    for name, params in (("s3t", {"shards": 2, "slices": 3, "sequences": 2, "epochs": 1}), ("sisa", {"shards": 2, "slices": 3, "epochs": 3})):
        log: list[str] = []
        run, latency = run_exact(job, exact_row_params(name, params), log=log, workdir=tmp_path / name)
        art = EnsembleArtifact(run.info["artifact"])
        m = art.manifest
        shard, slc = art.assignment
        assert m.deleted() == set(FORGET)
        active = m.active_stages()
        assert active and len(active) < sum(len(q.stages) for sh in m.shards for q in sh.sequences)
        for k, b, st in active:
            seen = set(np.nonzero((shard == k) & np.isin(slc, st.slices))[0].tolist()) - set(st.excluded)
            assert not seen & set(FORGET), (name, k, b, st.stage)
        assert latency == run.info["deletion_latency_s"] < run.info["train_time_s"]
        assert (name == "s3t") == any("outside the exact guarantee" in w for w in log)


def test_bad_exact_parameters_are_input_errors(digits_dir, tmp_path):
    req = _delete_request(tmp_path)
    for bad, words in ((["--param", "s3t.shards=0"], "shards"), (["--param", "s3t.bogus=1"], "bogus"),
                       (["--param", "s3t.sequences=5"], "sequences"), (["--param", "sisa.init=missing.safetensors"], "not found"),
                       (["--param", "sisa.init=checkpoint"], "not exact")):
        rep = tmp_path / "rep"
        methods = "s3t" if bad[1].startswith("s3t") else "sisa"
        r = invoke("bench", digits_dir / "mlp.safetensors", "-r", req, "--device", "cpu", "--methods", methods, "--seeds", "1", *bad,
                   "--report-dir", rep)
        assert r.exit_code == 2, (bad, r.stderr)
        assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not rep.exists()


def test_an_exhausting_deletion_is_a_failed_row(digits_dir, tmp_path):
    """A class request deletes a sample from every slice: nothing can serve, the row says retraining is needed."""
    r = invoke("bench", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "--device", "cpu", "--methods", "sisa",
               "--seeds", "1", "--param", "sisa.shards=2", "--param", "sisa.slices=2", "--param", "sisa.epochs=2",
               "--report-dir", tmp_path / "rep", "--json")
    assert r.exit_code == 0, r.stderr
    entry = json.loads(r.stdout)["methods"]["sisa"]
    assert entry["status"] == "failed" and "budget is exhausted" in entry["error"]


def test_methods_lists_the_exact_methods():
    listing = {e["name"]: e for e in json.loads(invoke("methods", "--json").stdout)}
    assert listing["s3t"]["kind"] == listing["sisa"]["kind"] == "exact" and listing["rfa"]["kind"] == "approximate"
    params = {p["name"] for p in json.loads(invoke("methods", "s3t", "--json").stdout)["params"]}
    assert {"shards", "slices", "sequences", "rank"} <= params
    assert "s3t" in invoke("methods").stdout
