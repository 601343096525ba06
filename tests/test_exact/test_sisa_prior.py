"""SISA with a deletion prior: `--exact sisa --param deletion_weights=FILE` assigns by_weight, so the likeliest
deleted samples sit in the last slices of each shard and deleting one truncates only the tail of its shard."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from conftest import invoke, write_request
from unlearn_tool.checkpoint import sha256_file
from unlearn_tool.exact import assign

from .conftest import SISA, assignment
from .test_assign import _hot_weights


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def test_sisa_deletion_weights_put_flagged_samples_last_and_a_flagged_deletion_keeps_earlier_checkpoints(exact_dir, tmp_path):
    n = len(assignment(exact_dir / "sisa")[0])
    w, flagged = _hot_weights(n, hot=0.05)
    weights = tmp_path / "w.txt"
    weights.write_text("\n".join(map(str, w)) + "\n")
    r = invoke("train", "-r", exact_dir / "train.yaml", "-o", tmp_path / "art", *SISA, "--param", f"deletion_weights={weights}", "--quiet")
    assert r.exit_code == 0, r.stderr
    m = _manifest(tmp_path / "art")
    assert m["params"]["assignment"] == "by_weight" and m["assignment"]["rule"] == assign.WEIGHTED_ASSIGNMENT_RULE
    assert m["assignment"]["order"] == "single" and m["assignment"]["deletion_weights_sha256"] == sha256_file(weights)
    shard, slc = assignment(tmp_path / "art")
    assert set(slc[flagged].tolist()) == {2}  # the flagged samples fill the last slice of each shard (SISA trains it last)

    hot = int(flagged[0])
    k = int(shard[hot])
    req = write_request(tmp_path, {"indices": [hot]}, name="hot.yaml")
    r = invoke("validate", "-r", req, tmp_path / "art")
    assert r.exit_code == 0 and "would deactivate" in r.stdout, r.stderr
    r = invoke("apply", tmp_path / "art", "-r", req, "-o", tmp_path / "art.d1", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["info"]["deactivated_count"] == 1  # only the shard's last stage saw the sample
    after = _manifest(tmp_path / "art.d1")
    seq, before = after["shards"][k]["sequences"][0], m["shards"][k]["sequences"][0]
    assert seq["prefix"] == 2 and [st["status"] for st in seq["stages"]] == ["active", "active", "deactivated"]
    for i in (0, 1):  # the earlier slices' checkpoints stay active, byte for byte the ones trained before the deletion
        st = seq["stages"][i]
        assert st["sha256"] == before["stages"][i]["sha256"] == sha256_file(tmp_path / "art.d1" / st["file"])
    other = after["shards"][1 - k]["sequences"][0]
    assert other["prefix"] == 3 and all(st["status"] == "active" for st in other["stages"])

    r = invoke("inspect", tmp_path / "art.d1", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["layout"] == {"assignment": "by_weight", "order": "single", "deletion_weights": True,
                                             "deletion_weights_sha256": sha256_file(weights)}
    r = invoke("inspect", tmp_path / "art.d1")
    text = " ".join(r.stdout.split())  # rich wraps lines at the terminal width
    assert r.exit_code == 0 and f"layout: assignment by_weight; slice order single; deletion weights given (sha256 {sha256_file(weights)[:12]}" in text
    assert "deletion budget" in text

    r = invoke("train", "-r", req, "-o", tmp_path / "retrain", "--exclude-forget", *SISA, "--param", f"deletion_weights={weights}", "--quiet")
    assert r.exit_code == 0, r.stderr
    again = _manifest(tmp_path / "retrain")
    assert again["assignment"]["digest"] == after["assignment"]["digest"]  # the weights, not the forget set, place samples
    for kk, i in [(k, 0), (k, 1), (1 - k, 0), (1 - k, 1), (1 - k, 2)]:  # every surviving component, tensor for tensor
        f1, f2 = (x["shards"][kk]["sequences"][0]["stages"][i]["file"] for x in (after, again))
        a, c = load_file(str(tmp_path / "art.d1" / f1)), load_file(str(tmp_path / "retrain" / f2))
        assert a.keys() == c.keys() and all(torch.equal(a[t], c[t]) for t in a), (kk, i)
