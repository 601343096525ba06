"""The data assignment and slice orders: seeded, balanced, recorded; BMS puts the least likely deleted slices first."""

from __future__ import annotations

import numpy as np
import pytest

from unlearn_tool.errors import MethodError, UnlearnError
from unlearn_tool.exact import assign
from unlearn_tool.exact.params import SISAParams, parse_exact_params, stage_epochs


def test_assignment_is_seeded_balanced_and_complete():
    shard, slc = assign.assign(1437, 5, 4, seed=0)
    again = assign.assign(1437, 5, 4, seed=0)
    other = assign.assign(1437, 5, 4, seed=1)
    assert np.array_equal(shard, again[0]) and np.array_equal(slc, again[1])
    assert not np.array_equal(shard, other[0])
    counts = np.bincount(shard * 4 + slc, minlength=20)
    assert counts.sum() == 1437 and counts.max() - counts.min() <= 1
    assert assign.digest(shard, slc) == assign.digest(*again) != assign.digest(*other)


def test_too_few_samples_for_the_parts_is_an_input_error():
    with pytest.raises(MethodError, match="need at least 20"):
        assign.assign(10, 5, 4, seed=0)


def test_cyclic_orders_are_rotations_with_distinct_first_slices():
    orders = assign.cyclic_orders(4, 3)
    assert orders == [[0, 1, 2, 3], [1, 2, 3, 0], [2, 3, 0, 1]]


def _hazards(probs: list[float]) -> list[float]:
    """A slice's expected deletions -log(1 - p) from its probability of being hit."""
    return [float(-np.log1p(-p)) for p in probs]


def test_bms_puts_the_least_likely_deleted_slices_first_and_never_repeats_a_slice():
    probs = [0.5, 0.1, 0.9, 0.2, 0.3]
    orders = assign.bms_orders(_hazards(probs), 3)
    assert sorted(o[0] for o in orders) == [1, 3, 4]  # the three least likely slices open the three sequences
    for o in orders:
        assert sorted(o) == list(range(5))
    assert all(o[-1] in (0, 2) for o in orders)  # the most likely deleted slices come last


def test_slice_probabilities_and_weights_file(tmp_path):
    shard, slc = assign.assign(8, 2, 2, seed=0)
    w = np.zeros(8)
    w[(shard == 0) & (slc == 1)] = 0.5
    hazards = assign.slice_hazards(w, shard, slc, 0, 2)
    assert hazards[0] == 0 and hazards[1] == pytest.approx(2 * np.log(2))  # two samples at 0.5: P(hit) = 0.75 = 1 - exp(-2 log 2)
    f = tmp_path / "w.txt"
    f.write_text("# weights\n" + "\n".join(["0.1"] * 8) + "\n")
    assert assign.read_weights(f, 8).tolist() == [0.1] * 8
    with pytest.raises(UnlearnError, match="holds 8 probabilities"):
        assign.read_weights(f, 9)
    f.write_text("1.5\n" * 8)
    with pytest.raises(UnlearnError, match="not a probability"):
        assign.read_weights(f, 8)


def test_sisa_schedule_spends_about_the_epoch_budget():
    epochs = stage_epochs(SISAParams(epochs=40, slices=4), 4)
    assert epochs == [16, 16, 16, 16]  # 16 * (1+2+3+4) slice-passes = 40 passes over the shard
    with pytest.raises(MethodError, match="sequences"):
        parse_exact_params("s3t", {"sequences": 5, "slices": 4})
    with pytest.raises(MethodError, match="unknown parameter"):
        parse_exact_params("sisa", {"sequences": 2})


def _hot_weights(n: int, hot: float = 0.1, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A seeded `hot` share of the samples at deletion probability 0.5, the rest at 0.005 (ratio 100)."""
    w = np.full(n, 0.005)
    flagged = np.random.default_rng(seed).choice(n, int(hot * n), replace=False)
    w[flagged] = 0.5
    return w, np.sort(flagged)


def test_by_weight_assignment_puts_the_likeliest_deleted_samples_in_the_last_slices():
    w, flagged = _hot_weights(600)
    shard, slc = assign.assign(600, 3, 5, seed=0, weights=w)
    uniform_shard, _ = assign.assign(600, 3, 5, seed=0)
    assert np.array_equal(shard, uniform_shard)  # shards: the same seeded round-robin rule
    counts = np.bincount(shard * 5 + slc, minlength=15)
    assert counts.min() == counts.max() == 40
    assert set(slc[flagged].tolist()) == {4}  # 60 flagged samples, about 20 per shard: all in each shard's last slice
    for k in range(3):  # slices hold increasing weights: nothing in slice s is likelier deleted than anything in s + 1
        for s in range(4):
            assert w[(shard == k) & (slc == s)].max() <= w[(shard == k) & (slc == s + 1)].min()
    again = assign.assign(600, 3, 5, seed=0, weights=w)
    other = assign.assign(600, 3, 5, seed=1, weights=w)
    assert np.array_equal(slc, again[1]) and not np.array_equal(slc, other[1])  # ties broken by the seeded permutation
    odd_shard, odd_slc = assign.assign(601, 3, 5, seed=0, weights=np.append(w, 0.5))
    sizes = np.bincount(odd_shard * 5 + odd_slc, minlength=15)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 601


def test_bms_closes_every_sequence_with_the_hot_slice_and_opens_none_with_it():
    w, flagged = _hot_weights(1000)
    for slices, sequences in ((10, 5), (5, 5), (10, 10)):
        shard, slc = assign.assign(1000, 5, slices, seed=0, weights=w)
        for k, orders in enumerate(assign.shard_orders("bms", slices, sequences, w, shard, slc, 5)):
            hot = set(slc[flagged[shard[flagged] == k]].tolist())  # about 20 flagged per shard: the last slice or two
            assert hot == set(range(slices - len(hot), slices)) and len(hot) <= 2, (slices, k, hot)
            for o in orders:  # every sequence ends with the hot slices, so a flagged deletion cuts only its last stage(s)
                assert set(o[-len(hot):]) == hot, (slices, sequences, k, orders)
            firsts = [o[0] for o in orders]
            assert not hot & set(firsts)
            assert len(set(firsts)) == min(sequences, slices - len(hot))  # distinct first slices among the cold ones


def test_bms_does_not_saturate_near_certain_slices():
    """Cold slices at p = 0.37 (50 samples at w = 0.009) against two near-certain ones: 2.7x in probability (under the
    4x first-position sharing price), 45x in expected deletions; 10 sequences of 10 slices share cold first slices
    rather than open with a hot one."""
    orders = assign.bms_orders(_hazards([0.37] * 8 + [1 - 1e-9] * 2), 10)
    for o in orders:
        assert sorted(o) == list(range(10)) and set(o[-2:]) == {8, 9}
    assert set(o[0] for o in orders) == set(range(8))


def test_bms_orders_slices_by_expected_deletions_beyond_certainty():
    """Two hot slices expecting 30 and 60 deletions (30 and 60 samples at w = 1 - 1/e, one expected deletion each):
    both are hit almost surely (1 - e^-30), but the 60 one is twice as hot and must close every sequence. A
    probability round trip saturated both at ~27.6 expected deletions and could not tell them apart."""
    w1 = float(-np.expm1(-1.0))
    slc = np.repeat([0, 1, 2, 3], [50, 50, 30, 60])
    w = np.concatenate([np.full(100, 0.001), np.full(90, w1)])
    hazards = assign.slice_hazards(w, np.zeros(len(slc), dtype=np.int64), slc, 0, 4)
    assert hazards[2] == pytest.approx(30) and hazards[3] == pytest.approx(60)
    for sequences in (1, 2, 4):
        orders = assign.shard_orders("bms", 4, sequences, w, np.zeros(len(slc), dtype=np.int64), slc, 1)[0]
        for o in orders:
            assert o[-2:] == [2, 3], (sequences, orders)
    certain = assign.slice_hazards(np.array([1.0, 1.0, 0.5]), np.zeros(3, dtype=np.int64), np.array([0, 0, 1]), 0, 2)
    assert certain == [2 * assign.CERTAIN_HAZARD, pytest.approx(np.log(2))] and np.isfinite(certain[0])  # w = 1: large, finite


def test_bms_with_uniform_weights_is_a_latin_square():
    orders = assign.bms_orders(_hazards([0.05] * 5), 5)
    for position in range(5):
        assert sorted(o[position] for o in orders) == list(range(5))
    for o in orders:
        assert sorted(o) == list(range(5))


def test_by_weight_needs_deletion_weights():
    with pytest.raises(MethodError, match="assignment: by_weight .* deletion_weights"):
        parse_exact_params("s3t", {"assignment": "by_weight"})
    with pytest.raises(MethodError, match="assignment: by_weight .* deletion_weights"):
        parse_exact_params("sisa", {"assignment": "by_weight"})
    assert parse_exact_params("sisa", {}).assignment == "uniform"
    assert parse_exact_params("sisa", {"deletion_weights": "w.txt"}).assignment == "by_weight"
    assert parse_exact_params("s3t", {}).assignment == "uniform"
    assert parse_exact_params("s3t", {"order": "bms", "deletion_weights": "w.txt"}).assignment == "by_weight"
    assert parse_exact_params("s3t", {"order": "bms", "deletion_weights": "w.txt", "assignment": "uniform"}).assignment == "uniform"


def _components(m: dict) -> list[tuple[int, int, int]]:
    return [(sh["shard"], seq["sequence"], st["stage"]) for sh in m["shards"] for seq in sh["sequences"] for st in seq["stages"]
            if st["status"] == "active"]


def test_weighted_artifact_deletes_a_hot_sample_by_deactivating_only_last_stages(exact_dir, tmp_path):
    """Train with skewed weights (by_weight + BMS), delete a flagged sample with the real `apply`: only the last stage
    of each sequence of its shard goes; a retrain from scratch without it has the same assignment and components."""
    import json

    import torch
    from safetensors.torch import load_file

    from conftest import invoke, write_request
    from unlearn_tool.checkpoint import sha256_file

    from .conftest import assignment

    n = len(assignment(exact_dir / "s3t")[0])
    w, flagged = _hot_weights(n, hot=0.05)
    weights = tmp_path / "w.txt"
    weights.write_text("\n".join(map(str, w)) + "\n")
    args = ["--exact", "s3t", "--init", exact_dir / "base.safetensors", "--param", "shards=2", "--param", "slices=3", "--param", "sequences=2",
            "--param", "epochs=1", "--param", "order=bms", "--param", f"deletion_weights={weights}", "--quiet"]
    r = invoke("train", "-r", exact_dir / "train.yaml", "-o", tmp_path / "art", *args)
    assert r.exit_code == 0, r.stderr
    m = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert m["params"]["assignment"] == "by_weight" and m["assignment"]["rule"] == assign.WEIGHTED_ASSIGNMENT_RULE
    assert m["assignment"]["order"] == "bms" and m["assignment"]["deletion_weights_sha256"] == sha256_file(weights)
    shard, slc = assignment(tmp_path / "art")
    assert set(slc[flagged].tolist()) == {2}  # the flagged samples share each shard's last slice
    for sh in m["shards"]:
        orders = [s["order"] for s in sh["sequences"]]
        assert all(o[-1] == 2 for o in orders) and orders[0][0] != orders[1][0]

    hot = int(flagged[0])
    req = write_request(tmp_path, {"indices": [hot]}, name="hot.yaml")
    r = invoke("apply", tmp_path / "art", "-r", req, "-o", tmp_path / "art.d1", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    after = json.loads((tmp_path / "art.d1" / "manifest.json").read_text())
    gone = set(_components(m)) - set(_components(after))
    assert gone == {(int(shard[hot]), b, 2) for b in range(2)}  # 2 of 12 components: the last stage of each sequence of one shard
    assert json.loads(r.stdout)["info"]["deactivated_count"] == 2
    for k, b, i in _components(after):  # no active component's recorded data holds the deleted sample
        st = after["shards"][k]["sequences"][b]["stages"][i]
        assert not (shard[hot] == k and slc[hot] in st["slices"])

    r = invoke("train", "-r", req, "-o", tmp_path / "retrain", "--exclude-forget", *args)
    assert r.exit_code == 0, r.stderr
    again = json.loads((tmp_path / "retrain" / "manifest.json").read_text())
    assert again["assignment"]["digest"] == after["assignment"]["digest"]  # the weights, not the forget set, place samples
    for k, b, i in _components(after):
        f1 = after["shards"][k]["sequences"][b]["stages"][i]["file"]
        f2 = again["shards"][k]["sequences"][b]["stages"][i]["file"]
        a, c = load_file(str(tmp_path / "art.d1" / f1)), load_file(str(tmp_path / "retrain" / f2))
        assert a.keys() == c.keys() and all(torch.equal(a[t], c[t]) for t in a), (k, b, i)
    r = invoke("train", "-r", exact_dir / "train.yaml", "-o", tmp_path / "uniform", *args, "--param", "assignment=uniform")
    assert r.exit_code == 0, r.stderr
    u = json.loads((tmp_path / "uniform" / "manifest.json").read_text())
    assert u["assignment"]["rule"] == assign.ASSIGNMENT_RULE
    assert u["assignment"]["digest"] == json.loads((exact_dir / "s3t" / "manifest.json").read_text())["assignment"]["digest"]
