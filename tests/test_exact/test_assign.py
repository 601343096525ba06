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


def test_bms_puts_the_least_likely_deleted_slices_first_and_never_repeats_a_slice():
    probs = [0.5, 0.1, 0.9, 0.2, 0.3]
    orders = assign.bms_orders(probs, 3)
    assert sorted(o[0] for o in orders) == [1, 3, 4]  # the three least likely slices open the three sequences
    for o in orders:
        assert sorted(o) == list(range(5))
    assert all(o[-1] in (0, 2) for o in orders)  # the most likely deleted slices come last


def test_slice_probabilities_and_weights_file(tmp_path):
    shard, slc = assign.assign(8, 2, 2, seed=0)
    w = np.zeros(8)
    w[(shard == 0) & (slc == 1)] = 0.5
    probs = assign.slice_deletion_probs(w, shard, slc, 0, 2)
    assert probs[0] == 0 and probs[1] == pytest.approx(0.75)  # two samples at 0.5: 1 - 0.5 * 0.5
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


def test_bms_training_records_its_orders_and_weights(exact_dir, tmp_path):
    import json

    from conftest import invoke
    from unlearn_tool.checkpoint import sha256_file

    from .conftest import assignment

    shard, slc = assignment(exact_dir / "s3t")  # same seed and sizes: the same assignment
    w = np.full(len(shard), 0.001)
    w[(shard == 0) & (slc == 0)] = 0.5  # shard 0's slice 0 is likely to be deleted
    weights = tmp_path / "w.txt"
    weights.write_text("\n".join(map(str, w)) + "\n")
    r = invoke("train", "-r", exact_dir / "train.yaml", "-o", tmp_path / "art", "--init", exact_dir / "base.safetensors",
               "--exact", "s3t", "--param", "shards=2", "--param", "slices=3", "--param", "sequences=2", "--param", "epochs=1",
               "--param", "order=bms", "--param", f"deletion_weights={weights}", "--quiet")
    assert r.exit_code == 0, r.stderr
    m = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert m["assignment"]["order"] == "bms" and m["assignment"]["deletion_weights_sha256"] == sha256_file(weights)
    orders = [s["order"] for s in m["shards"][0]["sequences"]]
    assert all(o[-1] == 0 for o in orders) and orders[0][0] != orders[1][0]
