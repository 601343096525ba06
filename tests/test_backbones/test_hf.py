"""A Hugging Face image classifier (hf:<folder>) through train -> apply (merged folder, file, adapter) -> audit -> bench.

The user's model is a save_pretrained folder; every output must load back with transformers' from_pretrained.
"""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch
from safetensors import safe_open

from conftest import invoke
from helpers import rejected, tree


def keys_of(path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def apply_json(*args) -> dict:
    r = invoke("apply", *args, "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_the_model_speaks_save_pretrained_keys(hf_work):
    """state_dict() and load_state_dict() use the keys save_pretrained writes (transformers 5 renames some in memory)."""
    from unlearn_tool.models import build_model
    from unlearn_tool.request import load_request

    req = load_request(hf_work / "req.yaml")
    model = build_model(req.model, req.base_dir)
    assert set(model.state_dict()) == keys_of(hf_work / "vit" / "model.safetensors")
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)  # logits, not an output object
    copy = build_model(req.model, req.base_dir)
    copy.load_state_dict(model.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), copy.parameters()))


def test_train_writes_a_save_pretrained_folder(hf_work):
    from transformers import AutoModelForImageClassification

    out = hf_work / "trained"
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "unlearn_metadata.json"}
    assert keys_of(out / "model.safetensors") == keys_of(hf_work / "vit" / "model.safetensors")
    assert (out / "config.json").read_bytes() == (hf_work / "vit" / "config.json").read_bytes()
    assert stat.S_IMODE(os.stat(out / "model.safetensors").st_mode) == 0o666 & ~_umask()
    AutoModelForImageClassification.from_pretrained(str(out))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_apply_merged_folder_loads_with_from_pretrained(hf_work):
    from transformers import AutoModelForImageClassification

    from unlearn_tool.job import prepare

    summary = apply_json(hf_work / "trained", "-r", hf_work / "req.yaml")
    out = hf_work / "trained.unlearned"
    assert summary["output"] == str(out) and summary["output_mode"] == "merged"
    assert summary["after"]["forget_acc"] < summary["before"]["forget_acc"]
    assert keys_of(out / "model.safetensors") == keys_of(hf_work / "trained" / "model.safetensors")
    hf = AutoModelForImageClassification.from_pretrained(str(out)).eval()
    job = prepare(hf_work / "req.yaml", hf_work / "trained", device="cpu")
    ours, info = job.load_artifact(out)
    assert info["kind"] == "merged" and info["metadata"]["method"] == "rfa"
    x = job.splits.test.x[:32]
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).logits, ours(x))
    # the forgetting is in the weights transformers loads
    with torch.no_grad():
        forget_x = job.splits.forget.x
        assert (hf(pixel_values=forget_x).logits.argmax(1) == 3).float().mean() <= summary["after"]["forget_acc"] + 1e-9


def test_apply_file_output_keeps_the_keys_and_loads_into_our_class(hf_work):
    from unlearn_tool.job import prepare

    apply_json(hf_work / "trained", "-r", hf_work / "req.yaml", "-o", hf_work / "u.safetensors")
    assert keys_of(hf_work / "u.safetensors") == keys_of(hf_work / "trained" / "model.safetensors")
    job = prepare(hf_work / "req.yaml", hf_work / "u.safetensors", device="cpu")
    assert job.original(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_every_layer_selection_runs_on_a_vit_including_its_patch_projection(hf_work, tmp_path):
    """target_layers=all also wraps the patch-embedding Conv2d, whose weight the ViT's own forward reads (its dtype): that
    failed with AttributeError until the LoRA layer answered for its base layer's attributes."""
    for selection in ("all", "mlp", "blocks:1", "head"):
        out = tmp_path / f"{selection.replace(':', '_')}.safetensors"
        summary = apply_json(hf_work / "trained", "-r", hf_work / "req.yaml", "--param", f"target_layers={selection}", "-o", out,
                             "--device", "cpu")  # "all" is compared below with a second run: CPU runs repeat exactly
        assert summary["after"]["forget_acc"] < summary["before"]["forget_acc"], selection
    summary = apply_json(hf_work / "trained", "-r", hf_work / "req.yaml", "--param", "target_layers=all", "--adapter-only", "--device", "cpu",
                         "-o", tmp_path / "adapter_all")
    config = json.loads((tmp_path / "adapter_all" / "adapter_config.json").read_text())
    assert "patch_embeddings" in str(config["target_modules"]), config["target_modules"]
    r = invoke("merge", tmp_path / "adapter_all", "--base", hf_work / "trained", "-o", tmp_path / "merged_all.safetensors")
    assert r.exit_code == 0, r.stderr
    from safetensors.torch import load_file

    merged, direct = load_file(str(tmp_path / "merged_all.safetensors")), load_file(str(tmp_path / "all.safetensors"))
    assert merged.keys() == direct.keys()
    for k in merged:  # the adapter folder, merged, is the merged output (the patch projection included)
        torch.testing.assert_close(merged[k], direct[k], rtol=1e-5, atol=1e-6)


def test_adapter_output_and_audits(hf_work):
    apply_json(hf_work / "trained", "-r", hf_work / "req.yaml", "--adapter-only", "-o", hf_work / "adapter")
    for unlearned in ("adapter", "trained.unlearned"):
        if not (hf_work / unlearned).exists():
            apply_json(hf_work / "trained", "-r", hf_work / "req.yaml")
        r = invoke("audit", "-r", hf_work / "req.yaml", "--original", hf_work / "trained", "--unlearned", hf_work / unlearned,
                   "--reference", hf_work / "trained", "--report-dir", hf_work / f"{unlearned}.audit", "--json", "--quiet")
        assert r.exit_code in (0, 3), r.stderr  # 3: the default verdict judges a tiny model; the report is written either way
        report = json.loads(r.stdout)
        assert report["models"]["unlearned"]["forget_acc"] < report["models"]["original"]["forget_acc"]


def test_bench_on_a_folder(hf_work):
    r = invoke("bench", hf_work / "trained", "-r", hf_work / "req.yaml", "--methods", "rfa", "--seeds", "1",
               "--reference", hf_work / "trained", "--report-dir", hf_work / "bench", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert (hf_work / "bench" / "bench.json").is_file()


def test_force_replaces_only_a_folder_this_tool_wrote(hf_work, tmp_path):
    out = hf_work / "trained.forced"
    apply_json(hf_work / "trained", "-r", hf_work / "req.yaml", "-o", out)
    apply_json(hf_work / "trained", "-r", hf_work / "req.yaml", "-o", out, "--force", "--seed", "1")
    shutil.copytree(hf_work / "vit", tmp_path / "foreign")  # a save_pretrained folder this tool did not write
    before, foreign = tree(hf_work / "vit"), tree(tmp_path / "foreign")
    rejected(invoke("apply", hf_work / "trained", "-r", hf_work / "req.yaml", "-o", tmp_path / "foreign", "--force", "--quiet"),
             "did not write")
    rejected(invoke("apply", hf_work / "trained", "-r", hf_work / "req.yaml", "-o", hf_work / "vit", "--force", "--quiet"),
             "is the request's hf: model folder")  # an input, whoever wrote it
    assert tree(hf_work / "vit") == before and tree(tmp_path / "foreign") == foreign


@pytest.mark.parametrize("labels", [0, -1])
def test_num_labels_below_one_is_refused_not_a_headless_model(hf_work, tmp_path, labels):
    """transformers puts an Identity where the head is: validate said ok with the hidden width as the class count, and
    train wrote a headless model."""
    from conftest import write_request

    shutil.copytree(hf_work / "vit", tmp_path / "vit")
    req = write_request(tmp_path, {"classes": [3]}, arch="hf:vit", kwargs={"num_labels": labels}, name="req.yaml")
    rejected(invoke("validate", "-r", req), "num_labels is", "at least 1 output")


@pytest.mark.parametrize("kwargs, fragment", [
    ({"subfolder": "sub"}, "subfolder is not a field of the 'vit' config"),
    ({"revision": "main"}, "revision is not a field"),
    ({"num_labels": "ten"}, "model.kwargs.num_labels: 'ten' is not accepted"),
    ({"id2label": 5}, "model.kwargs.id2label: give a mapping"),  # was exit 1 "unexpected TypeError"
    ({"num_labels": 100000000}, "is more than 1,000,000 classes"),  # built a 1e8-entry id2label: killed for memory
    ({"to_dict": 1}, "to_dict is not a field"),  # replaced a config method with an int, and said ok
])
def test_loader_options_in_model_kwargs_are_refused(hf_work, tmp_path, kwargs, fragment):
    """kwargs went to from_pretrained, which took `subfolder` as a loader option: the model was built from sub/config.json,
    which carried an auto_map (custom code) that the check on the folder's own config.json never saw."""
    from conftest import write_request

    shutil.copytree(hf_work / "vit", tmp_path / "vit")
    shutil.copytree(hf_work / "vit", tmp_path / "vit" / "sub")
    config = json.loads((tmp_path / "vit" / "sub" / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.Config", "AutoModelForImageClassification": "custom.Model"}
    (tmp_path / "vit" / "sub" / "config.json").write_text(json.dumps(config))
    req = write_request(tmp_path, {"classes": [3]}, arch="hf:vit", kwargs=kwargs, name="req.yaml")
    rejected(invoke("validate", "-r", req), fragment)


def test_outputs_of_a_model_built_with_num_labels_in_kwargs_load_with_from_pretrained(hf_work, tmp_path):
    """The output folder copied the source config.json (10 labels) next to 12-class weights: from_pretrained on it failed
    with a size mismatch. It now carries the config the model was built with; without kwargs the source bytes stay."""
    from transformers import AutoModelForImageClassification

    from conftest import write_request

    shutil.copytree(hf_work / "vit", tmp_path / "vit")
    labels = {i: f"digit {i}" for i in range(12)}
    req = write_request(tmp_path, {"classes": [3]}, arch="hf:vit", kwargs={"num_labels": 12, "id2label": labels},
                        name="req.yaml", method={"name": "finetune", "params": {"epochs": 1}})
    r = invoke("train", "-r", req, "-o", tmp_path / "trained", "--epochs", "1", "--quiet")
    assert r.exit_code == 0, r.stderr
    apply_json(tmp_path / "trained", "-r", req, "-o", tmp_path / "forgot")
    for out in ("trained", "forgot"):
        hf = AutoModelForImageClassification.from_pretrained(str(tmp_path / out)).eval()
        assert hf.config.num_labels == 12 and hf.config.id2label[11] == "digit 11"
        assert hf(pixel_values=torch.zeros(1, 1, 8, 8)).logits.shape == (1, 12)
    assert tree(tmp_path / "vit") == tree(hf_work / "vit")  # the source folder is untouched


def test_adapter_config_names_the_checkpoint_it_was_trained_on(hf_work, tmp_path):
    """base_model_name_or_path named the hf:<folder> the architecture came from (untrained weights): PEFT's own loading
    (from_pretrained of that base, then the adapter) gave a random model. It names the checkpoint folder given to apply;
    a .safetensors checkpoint, which from_pretrained cannot load, is named as none."""
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    from unlearn_tool.job import prepare

    apply_json(hf_work / "trained", "-r", hf_work / "req.yaml", "--adapter-only", "-o", tmp_path / "ad")
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((hf_work / "trained").resolve())
    assert str(hf_work / "vit") not in (tmp_path / "ad" / "README.md").read_text()  # peft's model card names the same base
    base = AutoModelForImageClassification.from_pretrained(config["base_model_name_or_path"])
    peft = PeftModel.from_pretrained(base, str(tmp_path / "ad")).eval()
    job = prepare(hf_work / "req.yaml", hf_work / "trained", device="cpu")
    ours, _ = job.load_artifact(tmp_path / "ad")
    x = job.splits.forget.x[:16]
    with torch.no_grad():
        torch.testing.assert_close(peft(pixel_values=x).logits, ours(x), rtol=1e-4, atol=1e-5)
    r = invoke("merge", tmp_path / "ad", "--base", hf_work / "trained", "-o", tmp_path / "merged.safetensors")
    assert r.exit_code == 0, r.stderr  # merge still checks the base by sha256 and takes the folder

    shutil.copy(hf_work / "trained" / "model.safetensors", tmp_path / "file.safetensors")
    apply_json(tmp_path / "file.safetensors", "-r", hf_work / "req.yaml", "--adapter-only", "-o", tmp_path / "ad_file")
    assert json.loads((tmp_path / "ad_file" / "adapter_config.json").read_text())["base_model_name_or_path"] is None


def test_merge_of_an_hf_adapter_writes_a_save_pretrained_folder(hf_work, tmp_path):
    """merge wrote a bare safetensors file named like a folder (no config.json), which from_pretrained cannot load; it
    writes the folder apply writes (the base folder's config.json), and a file only when OUT is named *.safetensors."""
    from transformers import AutoModelForImageClassification

    from unlearn_tool.job import prepare

    apply_json(hf_work / "trained", "-r", hf_work / "req.yaml", "--adapter-only", "-o", tmp_path / "ad")
    r = invoke("merge", tmp_path / "ad", "--base", hf_work / "trained", "-o", tmp_path / "merged")
    assert r.exit_code == 0, r.stderr
    out = tmp_path / "merged"
    assert out.is_dir() and {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "unlearn_metadata.json"}
    assert "(save_pretrained folder)" in r.stderr
    assert (out / "config.json").read_bytes() == (hf_work / "trained" / "config.json").read_bytes()
    assert keys_of(out / "model.safetensors") == keys_of(hf_work / "trained" / "model.safetensors")
    hf = AutoModelForImageClassification.from_pretrained(str(out)).eval()
    job = prepare(hf_work / "req.yaml", hf_work / "trained", device="cpu")
    ours, _ = job.load_artifact(tmp_path / "ad")
    x = job.splits.forget.x[:16]
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).logits, ours(x), rtol=1e-4, atol=1e-5)
    r = invoke("merge", tmp_path / "ad", "--base", hf_work / "trained", "-o", tmp_path / "merged.safetensors", "--json")
    assert r.exit_code == 0 and (tmp_path / "merged.safetensors").is_file(), r.stderr
    assert json.loads(r.stdout)["output_kind"] == "safetensors file"


def test_a_folder_holding_only_pytorch_model_bin_says_pickle_is_never_read_and_how_to_convert(hf_work, tmp_path):
    """It said 'has no model.safetensors; give a save_pretrained folder': it is one, written with pickle weights."""
    (tmp_path / "bin").mkdir()
    shutil.copy(hf_work / "trained" / "config.json", tmp_path / "bin" / "config.json")
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"not read")
    for command in (("validate", "-r", hf_work / "req.yaml", tmp_path / "bin"),
                    ("apply", tmp_path / "bin", "-r", hf_work / "req.yaml", "-o", tmp_path / "out", "--quiet")):
        rejected(invoke(*command), "holds pytorch_model.bin, a pickle file", "never reads",
                 "model.save_pretrained(folder, safe_serialization=True)")
    assert not (tmp_path / "out").exists()
