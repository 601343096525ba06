"""Bad input to exact training and deletion: exit 2, one line naming the problem and the fix, nothing written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import invoke, write_request
from helpers import rejected, tree
from unlearn_tool.checkpoint import sha256_file

from .conftest import S3T, SISA, assignment, pick


@pytest.fixture
def art(exact_dir, tmp_path):
    """A private copy of the S3T artifact and the deletion request."""
    shutil.copytree(exact_dir / "s3t", tmp_path / "art")
    shutil.copy(exact_dir / "delete.yaml", tmp_path / "delete.yaml")
    return tmp_path / "art"


def _apply(art, *extra, request=None):
    return invoke("apply", art, "-r", request or art.parent / "delete.yaml", "-o", art.parent / "out", "--quiet", *extra)


def _edit_manifest(art, change):
    m = json.loads((art / "manifest.json").read_text())
    change(m)
    (art / "manifest.json").write_text(json.dumps(m))


def _borrow_component(art):
    """Shard 1's first stage names shard 0's file (and its sha256), its own file removed: it would serve shard 0's weights,
    which a deletion in shard 0 deactivates only under shard 0's name. Accepted (and copied on) before names were tied."""
    def borrow(m):
        theirs, mine = m["shards"][0]["sequences"][0]["stages"][0], m["shards"][1]["sequences"][0]["stages"][0]
        (art / mine["file"]).unlink()
        mine.update(file=theirs["file"], sha256=theirs["sha256"])
    _edit_manifest(art, borrow)


@pytest.mark.parametrize("corrupt, fragment", [
    (lambda a: (a / "manifest.json").write_text("{not json"), "not valid JSON"),
    (lambda a: _edit_manifest(a, lambda m: m.pop("shards")), "manifest.json is corrupt (shards"),
    (lambda a: _edit_manifest(a, lambda m: m.update(schema_version=2)), "schema_version 2 is not supported"),
    (lambda a: _edit_manifest(a, lambda m: m["shards"][0]["sequences"][0]["stages"][0].update(file="../../etc/passwd")), "not a component path"),
    (lambda a: _edit_manifest(a, lambda m: m["shards"][0]["sequences"][0].update(prefix=1)), "contradicts prefix"),
    (lambda a: _borrow_component(a), "is not this stage's component"),
    (lambda a: _edit_manifest(a, lambda m: m.update(schema_version="1")), 'schema_version "1" is not supported'),
    (lambda a: _edit_manifest(a, lambda m: m.update(seed=10**30)), "manifest.json is corrupt (seed"),
    (lambda a: _edit_manifest(a, lambda m: m["params"].update(epochs=10**30)), "manifest.json is corrupt (params.epochs"),
    (lambda a: _edit_manifest(a, lambda m: m["params"].update(bogus=1)), "manifest.json is corrupt (params.bogus"),
    (lambda a: _edit_manifest(a, lambda m: m.update(params={})), "manifest.json is corrupt (params.shards: 5"),
    (lambda a: _edit_manifest(a, lambda m: m["params"].update(slices=4)), "the params say 4 and 2"),
    (lambda a: _edit_manifest(a, lambda m: m["params"].update(sequences=3)), "the params say 3 and 3"),
    (lambda a: _edit_manifest(a, lambda m: m["shards"][1].update(slice_sizes=[10**30] * 3)), "slice sizes"),
    (lambda a: _edit_manifest(a, lambda m: m["deletions"].append({"id": 1, "request_id": "x", "request_sha256": "0" * 64, "scenario": "sample",
                                                                  "indices": [-1], "deactivated": [], "parent_manifest_sha256": "0" * 64,
                                                                  "created_utc": "now"})), "manifest.json is corrupt (deletions.0.indices.0"),
    # accepted before: true and 1.0 equal 1 in Python; a string where the tool writes a number; a task exact training
    # refuses; exclusions and sample counts that are not what the assignment gives (weighted aggregation reads them)
    (lambda a: _edit_manifest(a, lambda m: m.update(schema_version=True)), "schema_version true is not supported"),
    (lambda a: _edit_manifest(a, lambda m: m.update(schema_version=1.0)), "schema_version 1.0 is not supported"),
    (lambda a: _edit_manifest(a, lambda m: m["params"].update(shards="2")), "manifest.json is corrupt (params.shards"),
    (lambda a: _edit_manifest(a, lambda m: m.update(task="regression")), "manifest.json is corrupt (task"),
    (lambda a: _edit_manifest(a, lambda m: m["shards"][0]["sequences"][0]["stages"][0].update(excluded=[10**30])), "excluded names a sample beyond the"),
    (lambda a: _edit_manifest(a, lambda m: m["shards"][0]["sequences"][0]["stages"][0].update(samples=999)), "stage 0 records 999 samples, its slices hold"),
    (lambda a: _edit_manifest(a, lambda m: m["shards"][0]["sequences"][0]["stages"][0].update(
        excluded=[int(np.nonzero(assignment(a)[0] == 1)[0][0])])), "which is not in its slices"),
    # a tampered deletion log was accepted and copied into the next artifact
    (lambda a: _edit_manifest(a, lambda m: m["deletions"].append({"id": 1, "request_id": "x", "request_sha256": "0" * 64, "scenario": "sample",
                                                                  "indices": [], "deactivated": [], "parent_manifest_sha256": "0" * 64,
                                                                  "created_utc": "now"})), "deletions.0.indices is empty"),
    (lambda a: _edit_manifest(a, lambda m: m["deletions"].append({"id": 1, "request_id": "x", "request_sha256": "0" * 64, "scenario": "sample",
                                                                  "indices": [0], "deactivated": [[-5, 10**9]], "parent_manifest_sha256": "0" * 64,
                                                                  "created_utc": "now"})), "not a [shard, sequence, stage]"),
    (lambda a: _edit_manifest(a, lambda m: m.update(aggregation="vote")), "contradicts params.aggregation"),
    # 300 levels in data.source: inspect exited 1 "unexpected ValueError: Circular reference detected", validate said ok
    (lambda a: _edit_manifest(a, lambda m: m["data"]["source"].update(x=json.loads("[" * 300 + "]" * 300))), "nested more than 32 levels"),
])
@pytest.mark.parametrize("command", ["apply", "inspect", "audit", "validate"])
def test_a_corrupted_manifest_is_refused(art, corrupt, fragment, command):
    corrupt(art)
    if command == "apply":
        r = _apply(art)
    elif command == "inspect":
        r = invoke("inspect", art)
    elif command == "validate":
        r = invoke("validate", "-r", art.parent / "delete.yaml", art)
    else:
        r = invoke("audit", "-r", art.parent / "delete.yaml", "--original", art, "--unlearned", art, "--report-dir", art.parent / "rep", "--quiet")
    rejected(r, "exact artifact", fragment)
    assert not (art.parent / "out").exists() and not (art.parent / "rep").exists()


def test_a_linked_manifest_and_a_huge_kwargs_value_are_named_in_one_short_line(art, tmp_path):
    """A manifest.json that links elsewhere was read (a symlinked base or component was refused); a 1 MB kwargs value in
    the manifest made a 1 MB "one-line" error."""
    shutil.copytree(art, tmp_path / "linked")
    (tmp_path / "linked" / "manifest.json").unlink()
    (tmp_path / "linked" / "manifest.json").symlink_to(art / "manifest.json")
    rejected(invoke("inspect", tmp_path / "linked"), "manifest", "is a link")
    _edit_manifest(art, lambda m: m["model"]["kwargs"].update(x="A" * 1_000_000))
    line = rejected(invoke("validate", "-r", art.parent / "delete.yaml", art), "was trained with model", "set model.arch/kwargs")
    assert len(line) < 600


def test_components_swapped_with_their_hashes_are_refused(art):
    """Two stages' files swapped, with their sha256s in the manifest: each was served as the other stage (the rule that a
    stage serves only its own file was bypassed). Each component records the stage it was trained as."""
    import os

    def swap(m):
        a, b = m["shards"][0]["sequences"][0]["stages"][0], m["shards"][1]["sequences"][0]["stages"][0]
        os.rename(art / a["file"], art / "tmp")
        os.rename(art / b["file"], art / a["file"])
        os.rename(art / "tmp", art / b["file"])
        a["sha256"], b["sha256"] = b["sha256"], a["sha256"]

    _edit_manifest(art, swap)
    rejected(invoke("inspect", art), "was trained as shard 1", "not as this stage")


def test_a_component_whose_hash_does_not_match_is_refused(art):
    comp = sorted((art / "components").iterdir())[3]
    data = bytearray(comp.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    comp.write_bytes(bytes(data))
    rejected(_apply(art), comp.name, "has sha256", "the manifest records")
    rejected(invoke("validate", "-r", art.parent / "delete.yaml", art), comp.name)
    assert not (art.parent / "out").exists()


def test_a_forged_component_with_a_matching_hash_names_the_artifacts_fix(art):
    """A component replaced by bytes that are not safetensors, its sha256 updated in the manifest: refused with the
    artifact's fix (restore or retrain), not a plain checkpoint's ('convert it with safetensors.torch.save_file')."""
    comp = sorted((art / "components").iterdir())[0]
    comp.write_bytes(b"not a safetensors file")

    def forge(m):
        for sh in m["shards"]:
            for seq in sh["sequences"]:
                for st in seq["stages"]:
                    if st.get("file") == f"components/{comp.name}":
                        st["sha256"] = sha256_file(comp)
    _edit_manifest(art, forge)
    for r in (_apply(art), invoke("audit", "-r", art.parent / "delete.yaml", "--original", art, "--unlearned", art,
                                  "--report-dir", art.parent / "rep", "--quiet")):
        rejected(r, comp.name, "not a readable safetensors file", "restore the artifact")
        assert "convert it" not in r.stderr
    assert not (art.parent / "out").exists() and not (art.parent / "rep").exists()


def test_a_stale_component_is_refused(art, tmp_path):
    r = _apply(art)
    assert r.exit_code == 0, r.stderr
    out = art.parent / "out"
    gone = sorted(set(p.name for p in (art / "components").iterdir()) - set(p.name for p in (out / "components").iterdir()))[0]
    shutil.copy(art / "components" / gone, out / "components" / gone)  # a deactivated component sneaks back in
    rejected(invoke("inspect", out), gone, "may hold deleted data")


def test_a_symlinked_components_folder_is_refused(art, tmp_path):
    """Like a symlinked component file: the components must be the artifact's own files, not a folder elsewhere."""
    shutil.move(art / "components", tmp_path / "elsewhere")
    (art / "components").symlink_to(tmp_path / "elsewhere")
    rejected(invoke("inspect", art), "components", "is not a folder")
    rejected(_apply(art), "components", "is not a folder")
    assert not (art.parent / "out").exists()


def test_samples_no_shard_holds_are_refused(art):
    assert _apply(art).exit_code == 0
    out = art.parent / "out"
    before = tree(out.parent)
    r = invoke("apply", out, "-r", art.parent / "delete.yaml", "-o", art.parent / "out2", "--quiet")
    rejected(r, "already deleted", "drop them from the request")
    assert tree(out.parent) == before


def test_an_exhausted_budget_is_refused_and_nothing_is_written(art):
    shard, slc = assignment(art)
    m = json.loads((art / "manifest.json").read_text())
    firsts = sorted({(sh["shard"], seq["order"][0]) for sh in m["shards"] for seq in sh["sequences"]})
    req = write_request(art.parent, {"indices": pick(shard, slc, firsts)}, name="all.yaml")
    rejected(_apply(art, request=req), "would deactivate every remaining component", "retraining is needed")
    assert not (art.parent / "out").exists()
    r = _apply(art, "--retrain-affected", request=req)  # the SISA way still works
    assert r.exit_code == 0, r.stderr


def test_an_artifact_with_no_active_component_refuses_the_next_request(art):
    for p in (art / "components").iterdir():
        p.unlink()

    def deactivate(m):  # one deletion (of a sample in slice 0, so excluded from nothing trained since) took every stage
        every = [[sh["shard"], seq["sequence"], st["stage"]] for sh in m["shards"] for seq in sh["sequences"] for st in seq["stages"]]
        m["deletions"] = [{"id": 1, "request_id": "all", "request_sha256": "0" * 64, "scenario": "sample", "indices": [0],
                           "deactivated": every, "parent_manifest_sha256": "0" * 64, "created_utc": "now"}]
        for sh in m["shards"]:
            for seq in sh["sequences"]:
                seq["prefix"] = 0
                for st in seq["stages"]:
                    st.update(status="deactivated", file=None, deactivated_by=1)

    _edit_manifest(art, deactivate)
    rejected(_apply(art), "cannot serve", "retraining is needed")
    # --retrain-affected is refused too, so the message must not send the user to it on this artifact (it used to)
    line = rejected(_apply(art, "--retrain-affected"), "cannot serve", "retraining is needed", "on the artifact before it")
    assert "rerun the deletion with unlearn apply --retrain-affected" not in line
    rejected(invoke("validate", "-r", art.parent / "delete.yaml", art), "cannot serve")  # as apply: not "ok"
    rejected(invoke("audit", "-r", art.parent / "delete.yaml", "--original", art, "--unlearned", art,
                    "--report-dir", art.parent / "rep", "--quiet"), "retraining is needed")


def test_class_requests_deactivate_everything_unless_retrained(art):
    req = write_request(art.parent, {"classes": [3]}, name="class.yaml")
    rejected(_apply(art, request=req), "would deactivate every remaining component")
    r = invoke("apply", art, "-r", req, "-o", art.parent / "out", "--retrain-affected", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert any(w.startswith("class deletion") for w in summary["warnings"])
    assert summary["after"]["forget_acc"] < 0.05 and summary["info"]["retrain"]["fraction_of_full_retrain"] == 1.0


@pytest.mark.parametrize("args, fragment", [
    (["--exact", "rfa"], "rfa is an approximate unlearning method"),
    (["--exact", "magic"], "not an exact-unlearning method"),
    (["--exact", "s3t", "--param", "sequences=9"], "sequences"),
    (["--exact", "s3t", "--param", "shards=2000"], "shards"),
    (["--exact", "sisa", "--regularizer", "gradient-restriction"], "--regularizer"),
    (["--exact", "s3t", "--init", "missing.safetensors"], "not found"),
])
def test_bad_exact_training_options(exact_dir, tmp_path, args, fragment):
    rejected(invoke("train", "-r", exact_dir / "train.yaml", "-o", tmp_path / "art", *args, "--quiet"), fragment)
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--method", "rfa"], "is an exact s3t artifact"),
    (["--param", "lr=0.1"], "no parameters"),
    (["--adapter-only"], "--adapter-only"),
    (["--seed", "5"], "replays the artifact's seed"),
    (["--ledger", "x.jsonl"], "its own deletion log"),
    (["--record-ids"], "its own deletion log"),
])
def test_approximate_options_on_an_exact_artifact(art, args, fragment):
    rejected(_apply(art, *args), fragment)
    assert not (art.parent / "out").exists()


def test_output_inside_the_input_artifact_or_over_it(art):
    before = tree(art)
    rejected(invoke("apply", art, "-r", art.parent / "delete.yaml", "-o", art / "sub", "--quiet"), "inside the input artifact")
    rejected(invoke("apply", art, "-r", art.parent / "delete.yaml", "-o", art, "--force", "--quiet"), "is the input artifact")
    (art.parent / "link").symlink_to(art)  # inside it through a link: used to write link/sub, i.e. into the input artifact
    rejected(invoke("apply", art, "-r", art.parent / "delete.yaml", "-o", art.parent / "link" / "sub", "--quiet"), "inside the input artifact")
    assert tree(art) == before and not (art / "sub").exists()


def test_bench_refuses_an_exact_artifact(art):
    rejected(invoke("bench", "-r", art.parent / "delete.yaml", art, "--methods", "rfa", "--report-dir", art.parent / "b"), "is an exact artifact")
    assert not (art.parent / "b").exists()


def test_retrain_affected_needs_an_exact_artifact(exact_dir, tmp_path):
    rejected(invoke("apply", exact_dir / "base.safetensors", "-r", exact_dir / "delete.yaml", "-o", tmp_path / "o.safetensors",
                    "--retrain-affected", "--quiet"), "not an exact artifact")


def test_a_request_for_other_data_or_another_model_is_refused(art):
    req = write_request(art.parent, {"indices": [1]}, name="other.yaml", kwargs={"num_classes": 10, "hidden": [32]})
    rejected(_apply(art, request=req), "was trained with model")


def test_validate_on_an_exact_artifact_checks_the_audit_gates_as_apply_audit_does(art):
    """validate said ok of a request whose audit.gates apply --audit on the artifact refuses (exit 2): the checkpoint path
    checked them, the exact path did not."""
    import yaml

    req = yaml.safe_load((art.parent / "delete.yaml").read_text())
    req["audit"] = {"gates": ["bogus <= 1"]}
    (art.parent / "gated.yaml").write_text(yaml.safe_dump(req))
    rejected(_apply(art, "--audit", request=art.parent / "gated.yaml"), "unknown metric 'bogus'")
    rejected(invoke("validate", "-r", art.parent / "gated.yaml", art), "unknown metric 'bogus'")
    req["audit"] = {"gates": ["forget_acc_gap <= 0.05"]}  # no audit.reference: a note, as for a checkpoint
    (art.parent / "gated.yaml").write_text(yaml.safe_dump(req))
    r = invoke("validate", "-r", art.parent / "gated.yaml", art)
    assert r.exit_code == 0 and "note: the gap gates need a retrained reference" in r.stdout, r.stdout + r.stderr


def test_apply_audit_on_an_exact_artifact_checks_the_report_dir_first(art):
    (art.parent / "afile").write_text("mine")
    rejected(_apply(art, "--audit", "--report-dir", art.parent / "afile"), "is a file")
    assert not (art.parent / "out").exists()


def test_s3t_without_init_warns_in_one_line(exact_dir, tmp_path):
    r = invoke("train", "-r", exact_dir / "train.yaml", "-o", tmp_path / "art", *S3T, "--param", "epochs=1", "--quiet")
    assert r.exit_code == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: no --init") and "random" in lines[0]


def test_exact_training_is_reproducible_to_the_byte(exact_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    for name in ("a", "b"):
        r = invoke("train", "-r", exact_dir / "train.yaml", "-o", tmp_path / name, "--exact", "sisa", "--param", "shards=2",
                   "--param", "slices=2", "--param", "epochs=2", "--quiet")
        assert r.exit_code == 0, r.stderr
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


def test_plain_train_starts_from_init(exact_dir, tmp_path):
    from unlearn_tool.checkpoint import read_checkpoint

    r = invoke("train", "-r", exact_dir / "train.yaml", "-o", tmp_path / "ft.safetensors", "--init", exact_dir / "base.safetensors",
               "--epochs", "1", "--lr", "1e-9", "--quiet")
    assert r.exit_code == 0, r.stderr
    tensors, meta = read_checkpoint(tmp_path / "ft.safetensors")
    base, _ = read_checkpoint(exact_dir / "base.safetensors")
    assert meta["unlearn.init_sha256"] == sha256_file(exact_dir / "base.safetensors")
    assert all(torch.allclose(tensors[k], base[k], atol=1e-6) for k in base)


def _fixed(logits):
    """A member whose logits are `logits` for every input."""
    from torch import nn

    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.logits = torch.tensor([logits])

        def forward(self, x):
            return self.logits.expand(len(x), -1)

    return Fixed()


def test_vote_aggregation_is_a_majority_with_mean_probability_ties():
    from unlearn_tool.exact.train import EnsembleModule

    votes = EnsembleModule([_fixed([2.0, 0.0, 0.0]), _fixed([2.0, 0.0, 0.0]), _fixed([0.0, 9.0, 0.0])], "vote")
    mean = EnsembleModule([_fixed([2.0, 0.0, 0.0]), _fixed([2.0, 0.0, 0.0]), _fixed([0.0, 9.0, 0.0])], "mean")
    x = torch.zeros(2, 1)
    assert votes(x).argmax(1).tolist() == [0, 0] and mean(x).argmax(1).tolist() == [1, 1]
    assert torch.allclose(votes(x).exp().sum(1), torch.ones(2))


def test_weighted_aggregation_weights_each_member_by_its_given_weight():
    from unlearn_tool.errors import MethodError
    from unlearn_tool.exact.params import parse_exact_params
    from unlearn_tool.exact.train import EnsembleModule

    members = [_fixed([3.0, 0.0]), _fixed([0.0, 2.0]), _fixed([0.0, 2.0])]
    x = torch.zeros(2, 1)
    # mean: (1, 4/3) -> class 1; weighted 200:20:20 (a full shard against two cut back to one slice) -> class 0
    assert EnsembleModule(members, "mean")(x).argmax(1).tolist() == [1, 1]
    out = EnsembleModule(members, "weighted", weights=[200, 20, 20])(x)
    assert torch.allclose(out[0], torch.tensor([3.0 * 200 / 240, 2.0 * 40 / 240]))
    assert out.argmax(1).tolist() == [0, 0]
    assert torch.allclose(EnsembleModule(members, "weighted", weights=[5, 5, 5])(x), EnsembleModule(members, "mean")(x))
    for bad in (None, [1, 2], [0, 0, 0], [1, -1, 1]):
        with pytest.raises(MethodError, match="weighted aggregation"):
            EnsembleModule(members, "weighted", weights=bad)
    assert parse_exact_params("s3t", {"aggregation": "weighted"}).aggregation == "weighted"
    assert parse_exact_params("sisa", {"aggregation": "weighted"}).aggregation == "weighted"


def test_weighted_aggregation_end_to_end_is_recorded_and_served_after_a_deletion(exact_dir, tmp_path):
    """`--param aggregation=weighted` is recorded in the manifest; after a deletion the loaded ensemble weights each
    shard by its served prefix's samples (a cut shard counts less) and `inspect` reads the artifact."""
    from unlearn_tool.artifacts import EnsembleArtifact
    from unlearn_tool.job import prepare

    args = ["--exact", "s3t", "--init", exact_dir / "base.safetensors", "--param", "shards=2", "--param", "slices=3",
            "--param", "sequences=1", "--param", "epochs=1", "--param", "aggregation=weighted", "--quiet"]
    r = invoke("train", "-r", exact_dir / "train.yaml", "-o", tmp_path / "art", *args)
    assert r.exit_code == 0, r.stderr
    assert json.loads((tmp_path / "art" / "manifest.json").read_text())["aggregation"] == "weighted"
    shard, slc = assignment(tmp_path / "art")
    m = EnsembleArtifact(tmp_path / "art").manifest
    last = m.shards[0].sequences[0].order[-1]
    req = write_request(tmp_path, {"indices": pick(shard, slc, [(0, last)])}, name="cut.yaml")
    r = invoke("apply", tmp_path / "art", "-r", req, "-o", tmp_path / "art.d1", "--quiet")
    assert r.exit_code == 0, r.stderr
    job = prepare(req, None, device="cpu")
    ensemble = EnsembleArtifact(tmp_path / "art.d1").load(job.load_context())
    assert ensemble.aggregation == "weighted"
    kept = m.shards[0].sequences[0].order[:2]
    assert ensemble.weights == [int(((shard == 0) & np.isin(slc, kept)).sum()), int((shard == 1).sum())]
    assert invoke("inspect", tmp_path / "art.d1").exit_code == 0


def test_an_exact_artifact_as_the_audit_reference_is_refused_by_name(art, exact_dir):
    """It used to say 'a folder without config.json; give a .safetensors file or a save_pretrained folder'."""
    r = invoke("audit", "-r", art.parent / "delete.yaml", "--original", art, "--unlearned", art, "--reference", exact_dir / "s3t.retrain",
               "--report-dir", art.parent / "rep", "--quiet")
    rejected(r, "is an exact artifact", "--exclude-forget")
    r = _apply(art, "--audit", "--report-dir", art.parent / "rep", request=write_request(
        art.parent, {"indices": [1]}, name="ref.yaml", extra={"audit": {"reference": str(exact_dir / "s3t.retrain")}}))
    rejected(r, "is an exact artifact, not a checkpoint", "--exclude-forget")  # apply --audit: it said "not found"
    assert not (art.parent / "rep").exists() and not (art.parent / "out").exists()


def test_a_regression_request_is_refused_by_every_exact_command(art, tmp_path):
    """Stages train with cross-entropy; the message said the ensemble votes (its default is the mean of the logits)."""
    req = write_request(tmp_path, {"indices": [1, 2]}, name="reg.yaml", kwargs={"in_features": 10, "num_outputs": 1},
                        extra={"task": "regression", "data": {"train": {"source": "sklearn:diabetes"}, "test": {"source": "sklearn:diabetes"}}})
    for r in (invoke("train", "-r", req, "-o", tmp_path / "reg_art", "--exact", "sisa", "--quiet"), _apply(art, request=req),
              invoke("validate", "-r", req, art)):
        rejected(r, "task regression", "cross-entropy", "on a checkpoint")
    assert not (tmp_path / "reg_art").exists() and not (art.parent / "out").exists()


def test_a_sample_deleted_twice_is_named_by_its_record_id_too(art):
    """A request naming records by ID was told their train positions only ('sample(s) 3, 17 already deleted'); with
    record IDs the refusal gives both."""
    from unlearn_tool.artifacts import EnsembleArtifact
    from unlearn_tool.errors import DataError
    from unlearn_tool.exact.manifest import Deletion, plan_deletion
    from unlearn_tool.exact.run import apply_plan

    artifact = EnsembleArtifact(art)
    m = artifact.manifest.model_copy(deep=True)
    shard_of, slice_of = artifact.assignment
    ids = [f"rec-{i}" for i in range(len(shard_of))]
    plan = plan_deletion(m, shard_of, slice_of, [5], ids=ids)
    apply_plan(m, plan, 1)
    m.deletions.append(Deletion(id=1, request_id="d1", request_sha256="0" * 64, scenario="sample", indices=plan.indices,
                                deactivated=[list(t) for t in plan.deactivated], parent_manifest_sha256="0" * 64, created_utc=""))
    with pytest.raises(DataError, match=r"sample\(s\) 5 \(ID 'rec-5'\) already deleted"):
        plan_deletion(m, shard_of, slice_of, [5], ids=ids)
    with pytest.raises(DataError, match=r"sample\(s\) 5 already deleted"):
        plan_deletion(m, shard_of, slice_of, [5])


@pytest.fixture
def diverging_stage(monkeypatch):
    """Every stage trained from now on comes back with a NaN in its weights, as a diverged stage does."""
    import unlearn_tool.exact.run as run

    real = run.train_sequence

    def train_sequence(*args, **kwargs):
        results = real(*args, **kwargs)
        for res in results:
            name = next(n for n, t in res.tensors.items() if t.is_floating_point())
            res.tensors[name] = res.tensors[name].clone().fill_(float("nan"))
        return results

    monkeypatch.setattr(run, "train_sequence", train_sequence)


def test_a_stage_that_diverged_is_never_published(exact_dir, tmp_path, diverging_stage):
    """Training, and a deletion with --retrain-affected, published stages whose weights held NaN, then failed reading the
    folder back ("the file is corrupt"), leaving a broken artifact behind. Now both refuse with exit 1, as a diverged
    unlearning method does (a failed run, not bad input), and nothing is written."""
    from .conftest import SISA

    r = invoke("train", "-r", exact_dir / "train.yaml", "-o", tmp_path / "sisa", *SISA, "--param", "lr=0.5", "--quiet")
    rejected(r, "sisa training diverged", "NaN/Inf", "nothing was written", "lower the learning rate (it was 0.5: try --param lr=0.05, or less)", code=1)
    assert not (tmp_path / "sisa").exists()

    shutil.copytree(exact_dir / "sisa", tmp_path / "art")
    before = tree(tmp_path / "art")
    r = invoke("apply", tmp_path / "art", "-r", exact_dir / "delete.yaml", "-o", tmp_path / "out", "--retrain-affected", "--quiet")
    rejected(r, "training diverged", "nothing was written", code=1)
    assert not (tmp_path / "out").exists() and tree(tmp_path / "art") == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("kind", ["folder", "fifo", "link loop"])
def test_a_manifest_that_is_not_a_file_is_named_as_the_artifacts_manifest(art, kind):
    """A manifest.json that is a folder, a FIFO or a link loop made the folder read as an adapter folder ("lacks
    adapter_model.safetensors"): the message named the wrong thing."""
    import os

    (art / "manifest.json").unlink()
    if kind == "folder":
        (art / "manifest.json").mkdir()
    elif kind == "fifo":
        os.mkfifo(art / "manifest.json")
    else:
        (art / "manifest.json").symlink_to("manifest.json")
    for r in (_apply(art), invoke("inspect", art)):
        line = rejected(r, "exact artifact manifest")
        assert "adapter" not in line


def test_an_exact_method_named_in_a_request_for_a_checkpoint_says_what_it_needs(tmp_path, exact_dir):
    """`unlearn methods` lists s3t, so "unknown method 's3t'" sent the user in circles."""
    import yaml

    req = yaml.safe_load((exact_dir / "delete.yaml").read_text())
    req["method"] = {"name": "s3t", "params": {}}
    (tmp_path / "s3t.yaml").write_text(yaml.safe_dump(req))
    for r in (invoke("validate", "-r", tmp_path / "s3t.yaml"),
              invoke("apply", exact_dir / "base.safetensors", "-r", tmp_path / "s3t.yaml", "-o", tmp_path / "o.safetensors", "--quiet")):
        rejected(r, "method 's3t' is exact unlearning", "unlearn train --exact s3t", "rfa")
    assert not (tmp_path / "o.safetensors").exists()


def test_a_stage_whose_finite_weights_overflow_the_outputs_is_never_published(exact_dir, tmp_path, monkeypatch):
    """Weights that are finite but huge (3e38, float32's edge) give Inf logits: training published such an artifact
    (its accuracies then came out empty) and --retrain-affected published such stages. The artifact is now measured
    before it is published: exit 1, nothing written."""
    import unlearn_tool.exact.run as run

    from .conftest import SISA

    real = run.train_sequence

    def train_sequence(*args, **kwargs):
        results = real(*args, **kwargs)
        for res in results:
            res.tensors = {n: t.clone().fill_(3e38) if t.is_floating_point() else t for n, t in res.tensors.items()}
        return results

    monkeypatch.setattr(run, "train_sequence", train_sequence)
    r = invoke("train", "-r", exact_dir / "train.yaml", "-o", tmp_path / "sisa", *SISA, "--quiet")
    rejected(r, "sisa training diverged", "outputs are NaN/Inf on", "weights finite", "nothing was written", "lower the learning rate", code=1)
    assert not (tmp_path / "sisa").exists()

    shutil.copytree(exact_dir / "sisa", tmp_path / "art")
    before = tree(tmp_path / "art")
    r = invoke("apply", tmp_path / "art", "-r", exact_dir / "delete.yaml", "-o", tmp_path / "out", "--retrain-affected", "--quiet")
    rejected(r, "sisa training diverged", "outputs are NaN/Inf on", "nothing was written", code=1)
    assert not (tmp_path / "out").exists() and tree(tmp_path / "art") == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_shard_whose_data_is_all_deleted_serves_nothing(exact_dir, tmp_path):
    """apply --retrain-affected on every sample of a shard "retrained" it on 0 samples: SISA's random initialisation,
    averaged into the ensemble at full weight ("shards serving 2 -> 2", test accuracy down 17 points). A second request
    for the other shard left no train sample at all and still exited 0, serving two untrained members."""
    shutil.copytree(exact_dir / "sisa", tmp_path / "sisa")
    shard, _ = assignment(tmp_path / "sisa")
    reqs = [write_request(tmp_path, {"indices": [int(i) for i in np.nonzero(shard == k)[0]]}, name=f"shard{k}.yaml") for k in (0, 1)]
    r = invoke("apply", tmp_path / "sisa", "-r", reqs[0], "-o", tmp_path / "one", "--retrain-affected", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)["info"]
    assert info["shards_serving_after"] == 1 and list(info["served_after"]) == ["1"]
    assert json.loads(invoke("inspect", tmp_path / "one", "--json").stdout)["budget"]["active_shards"] == 1
    rejected(invoke("apply", tmp_path / "one", "-r", reqs[1], "-o", tmp_path / "two", "--retrain-affected", "--quiet"),
             "no shard", "holds a train sample", "nothing was written")
    assert not (tmp_path / "two").exists()
    # the same at training time: --exclude-forget that empties a shard warns, and counts the samples it trained on
    r = invoke("train", "-r", reqs[0], "-o", tmp_path / "ex", "--exclude-forget", *SISA, "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["train_size"] == int(np.sum(shard == 1)) and summary["budget"]["active_shards"] == 1
    assert any("left shard(s) 0 without a train sample" in w for w in summary["warnings"])
    assert invoke("inspect", tmp_path / "ex").exit_code == 0
