"""Proof, not promise: after a deletion no active component saw a forgotten sample, every active component is the
one trained at that stage byte for byte, and it equals the component a retrain from scratch without the forgotten
samples (same seed and assignment) produces."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import invoke
from helpers import tree
from unlearn_tool.checkpoint import sha256_file

from .conftest import assignment


def manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def active(m):
    """(shard, sequence, stage) -> stage entry, for every active stage."""
    return {(sh["shard"], seq["sequence"], st["stage"]): st for sh in m["shards"] for seq in sh["sequences"]
            for st in seq["stages"] if st["status"] == "active"}


def forget_indices(exact_dir):
    import yaml

    return yaml.safe_load((exact_dir / "delete.yaml").read_text())["forget"]["indices"]


@pytest.fixture(scope="module", params=["s3t", "sisa"])
def deleted(request, exact_dir, tmp_path_factory):
    """(method, input artifact, the artifact after `apply -r delete.yaml`, the --json summary)."""
    name = request.param
    out = tmp_path_factory.mktemp(f"del-{name}") / f"{name}.d1"
    before = tree(exact_dir / name)
    r = invoke("apply", exact_dir / name, "-r", exact_dir / "delete.yaml", "-o", out, "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert tree(exact_dir / name) == before  # the input artifact is untouched
    return name, exact_dir / name, out, json.loads(r.stdout)


def test_no_active_component_was_trained_on_a_forgotten_sample(deleted, exact_dir):
    _, _, out, summary = deleted
    m = manifest(out)
    shard, slc = assignment(out)
    forget = set(forget_indices(exact_dir))
    assert {i for d in m["deletions"] for i in d["indices"]} == forget
    for (k, _, _), st in active(m).items():
        data = {int(i) for i in np.nonzero((shard == k) & np.isin(slc, st["slices"]))[0]} - set(st["excluded"])
        assert not data & forget, (k, st)
    assert summary["info"]["deactivated_count"] > 0 and not summary["info"]["gradient_steps"]
    assert summary["info"]["deletion_latency_s"] < 1.0  # digits: well under a second, no training
    on_disk = {f"components/{p.name}" for p in (out / "components").iterdir()}
    assert on_disk == {st["file"] for st in active(m).values()}  # deactivated components are not carried over


def test_active_components_are_byte_identical_to_the_stage_checkpoints(deleted):
    _, original, out, _ = deleted
    trained, now = active(manifest(original)), active(manifest(out))
    assert now and set(now) < set(trained)
    for key, st in now.items():
        assert st["sha256"] == trained[key]["sha256"] == sha256_file(out / st["file"]) == sha256_file(original / trained[key]["file"])


def test_served_model_uses_exactly_the_stage_weights(deleted, exact_dir):
    name, _, out, _ = deleted
    from unlearn_tool.artifacts import EnsembleArtifact
    from unlearn_tool.job import prepare

    job = prepare(exact_dir / "delete.yaml", None, device="cpu")
    artifact = EnsembleArtifact(out)
    ensemble = artifact.load(job.load_context())
    served = artifact.manifest.served()
    x = job.splits.test.x[:4]
    ensemble(x).sum().backward()  # an ordinary module: a copy can be fine-tuned (audit --tier strong's relearn time)
    for member, k in zip(ensemble.members, ensemble.shards):
        b, p = served[k]
        stages = artifact.manifest.shards[k].sequences[b].stages[:p]
        state = member.state_dict()
        for st in stages:
            tensors = load_file(str(out / st.file))
            for key, t in tensors.items():
                if (name == "sisa" or key.startswith("head.")) and st.stage != p - 1:
                    continue  # S3T: every stage's LoRA, the last stage's head; SISA: the last stage's whole model
                assert torch.equal(state[key], t), (k, st.stage, key)


def test_surviving_components_equal_a_retrain_from_scratch_without_the_samples(deleted, exact_dir):
    name, _, out, _ = deleted
    retrain = exact_dir / f"{name}.retrain"
    now, again = active(manifest(out)), active(manifest(retrain))
    assert manifest(retrain)["assignment"]["digest"] == manifest(out)["assignment"]["digest"]
    for key, st in now.items():
        a, b = load_file(str(out / st["file"])), load_file(str(retrain / again[key]["file"]))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), key


def test_retrain_affected_equals_the_retrain_from_scratch_everywhere(deleted, exact_dir, tmp_path):
    name, original, _, _ = deleted
    out = tmp_path / "retrained"
    r = invoke("apply", original, "-r", exact_dir / "delete.yaml", "-o", out, "--retrain-affected", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)["info"]
    assert info["gradient_steps"] and 0 < info["retrain"]["fraction_of_full_retrain"] < 1
    now, again = active(manifest(out)), active(manifest(exact_dir / f"{name}.retrain"))
    assert set(now) == set(again)  # every sequence is whole again
    for key, st in now.items():
        a, b = load_file(str(out / st["file"])), load_file(str(exact_dir / f"{name}.retrain" / again[key]["file"]))
        assert all(torch.equal(a[k], b[k]) for k in a), key


def test_audit_states_the_guarantee_and_its_basis(deleted, exact_dir, tmp_path):
    _, original, out, _ = deleted
    r = invoke("audit", "-r", exact_dir / "delete.yaml", "--original", original, "--unlearned", out,
               "--report-dir", tmp_path / "rep", "--json", "--quiet")
    assert r.exit_code in (0, 3), r.stderr  # 3: the default verdict may fail on utility (a tiny test artifact loses stages)
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    line = next(w for w in report["warnings"] if w.startswith("exact unlearning"))
    assert "manifest's lineage" in line and "2 samples in the deletion log" in line
    assert report["provenance"]["inputs"]["unlearned_kind"] == "exact"
    assert report["models"]["unlearned"]["forget_acc"] is not None


def test_audit_of_a_request_the_artifact_never_received_fails_and_states_no_guarantee(deleted, exact_dir, tmp_path):
    """The audit printed "none of the active components was trained on any of the samples in the deletion log" for a
    request whose sample was never deleted (it is still in served components), and let the statistics decide."""
    from conftest import write_request

    _, original, out, _ = deleted
    shard, slc = assignment(out)
    gone = set(manifest(out)["deletions"][0]["indices"])
    other = next(i for i in range(len(shard)) if i not in gone)
    req = write_request(tmp_path, {"indices": [other, *sorted(gone)]}, name="other.yaml")
    r = invoke("audit", "-r", req, "--original", original, "--unlearned", out, "--report-dir", tmp_path / "rep",
               "--gate", "forget_acc <= 1.0", "--quiet")
    assert r.exit_code == 3 and "1 of 3 forget samples not deleted by this exact artifact" in r.stderr, r.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["verdict"] == "fail" and report["verdict_detail"]["checks"][0]["passed"] is False
    assert not any("none of the" in w for w in report["warnings"])
    assert any(f"train positions {other})" in w and "does not cover this request" in w for w in report["warnings"])


def test_a_second_deletion_chains_the_log(deleted, exact_dir, tmp_path):
    from conftest import write_request

    from unlearn_tool.artifacts import EnsembleArtifact

    _, _, out, _ = deleted
    m = EnsembleArtifact(out).manifest
    shard, slc = assignment(out)
    k, (b, p) = next((k, bp) for k, bp in m.served().items() if bp[1] > 1)
    seq = m.shards[k].sequences[b]
    last = seq.order[p - 1]  # a sample of the served sequence's last active slice
    idx = next(int(i) for i in np.nonzero((shard == k) & (slc == last))[0] if int(i) not in m.deleted())
    req = write_request(tmp_path, {"indices": [idx]}, name="second.yaml")
    r = invoke("apply", out, "-r", req, "-o", tmp_path / "d2", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    m2 = manifest(tmp_path / "d2")
    assert [d["id"] for d in m2["deletions"]] == [1, 2]
    assert m2["deletions"][1]["parent_manifest_sha256"] == sha256_file(out / "manifest.json")
    assert m2["shards"][k]["sequences"][b]["prefix"] == p - 1


def test_inspect_and_validate_an_exact_artifact(deleted, exact_dir):
    method, original, out, _ = deleted
    r = invoke("inspect", out, "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["kind"] == "exact" and info["budget"]["active_components"] < info["budget"]["components"]
    assert len(info["deletions"]) == 1 and info["shards"][0]["sequences"][0]["stages"][0]["slices"]
    order = "cyclic" if method == "s3t" else "single"
    assert info["layout"] == {"assignment": "uniform", "order": order, "deletion_weights": False, "deletion_weights_sha256": None}
    r = invoke("inspect", out)
    assert r.exit_code == 0 and "deletion budget" in r.stdout
    assert f"layout: assignment uniform; slice order {order}; deletion weights none" in " ".join(r.stdout.split())
    r = invoke("validate", "-r", exact_dir / "delete.yaml", original)
    assert r.exit_code == 0, r.stderr
    assert "would deactivate" in r.stdout


def test_force_replaces_an_exact_artifact_but_never_a_foreign_folder(deleted, exact_dir, tmp_path):
    _, original, out, _ = deleted
    target = tmp_path / "again"
    shutil.copytree(out, target)
    r = invoke("apply", original, "-r", exact_dir / "delete.yaml", "-o", target, "--force", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert manifest(target)["deletions"][0]["indices"] == sorted(forget_indices(exact_dir))
    (target / "thesis.tex").write_text("years of work")
    r = invoke("apply", original, "-r", exact_dir / "delete.yaml", "-o", target, "--force", "--quiet")
    assert r.exit_code == 2 and "did not write" in r.stderr
    assert (target / "thesis.tex").read_text() == "years of work"


def test_apply_audit_on_an_exact_artifact(exact_dir, tmp_path):
    out = tmp_path / "audited"
    r = invoke("apply", exact_dir / "s3t", "-r", exact_dir / "delete.yaml", "-o", out, "--audit", "--report-dir", tmp_path / "rep",
               "--quiet")
    assert r.exit_code in (0, 3), r.stderr  # the verdict is the audit's business; the guarantee line is ours
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["provenance"]["sha256"]["original"] == sha256_file(exact_dir / "s3t" / "manifest.json")
    assert report["provenance"]["sha256"]["unlearned"] == sha256_file(out / "manifest.json")
    assert any(w.startswith("exact unlearning (s3t)") for w in report["warnings"])


def test_weighted_aggregation_weights_shards_by_the_samples_of_their_served_prefix(deleted, exact_dir):
    """aggregation=weighted (set here on the deleted artifact's manifest: aggregation does not change training): each
    served shard's weight is the samples of its served prefix's slices, counted from the recorded assignment, and
    the output is the weighted mean of the members' logits."""
    _, _, out, _ = deleted
    from unlearn_tool.artifacts import EnsembleArtifact
    from unlearn_tool.exact.ensemble import build_ensemble
    from unlearn_tool.job import prepare

    job = prepare(exact_dir / "delete.yaml", None, device="cpu")
    artifact = EnsembleArtifact(out)
    m = artifact.manifest.model_copy(deep=True)
    m.aggregation = "weighted"
    ensemble = build_ensemble(m, out, job.load_context())
    shard, slc = assignment(out)
    expected = []
    for k in ensemble.shards:
        b, p = m.served()[k]
        expected.append(int(((shard == k) & np.isin(slc, m.shards[k].sequences[b].order[:p])).sum()))
    assert ensemble.weights == expected
    assert len(set(expected)) > 1  # the deletion cut the shards back to prefixes of different sizes
    x = job.splits.test.x[:8]
    with torch.no_grad():
        logits = torch.stack([member(x) for member in ensemble.members])
        w = torch.tensor(expected, dtype=logits.dtype)
        assert torch.allclose(ensemble(x), (logits * (w / w.sum())[:, None, None]).sum(0), atol=1e-6)
        assert not torch.allclose(ensemble(x), logits.mean(0), atol=1e-4)
