"""CLI polish a new user expects: --version, plain help, merge, keep-on-fail, the stop line, examples (issue 11)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from conftest import invoke
from helpers import rejected


def test_version_and_help_read_cleanly():
    from unlearn_tool import __version__

    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"unlearn {__version__}"
    r = invoke("apply", "--help")
    assert r.exit_code == 0 and "<bool>" not in r.stdout and "--force" in r.stdout and "K=V" in r.stdout
    r = invoke("--help")
    assert "--install-completion" in r.stdout and "merge" in r.stdout and "examples" in r.stdout


def test_merge_folds_an_adapter_into_its_base(digits_dir, tmp_path):
    args = ["apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "--device", "cpu", "--quiet"]  # two runs: CPU repeats exactly
    assert invoke(*args, "--adapter-only", "-o", tmp_path / "ad").exit_code == 0
    assert invoke(*args, "-o", tmp_path / "direct.safetensors").exit_code == 0
    r = invoke("merge", tmp_path / "ad", "--base", digits_dir / "mlp.safetensors", "-o", tmp_path / "merged.safetensors", "--json")
    assert r.exit_code == 0, r.stderr
    merged, direct = load_file(str(tmp_path / "merged.safetensors")), load_file(str(tmp_path / "direct.safetensors"))
    assert set(merged) == set(direct) and all(torch.allclose(merged[k], direct[k], atol=1e-6) for k in merged)
    info = json.loads(invoke("inspect", tmp_path / "merged.safetensors", "--json").stdout)["metadata"]
    assert info["method"] == "rfa" and info["merged_from_adapter_sha256"] == json.loads(r.stdout)["adapter_sha256"]
    rejected(invoke("merge", tmp_path / "ad", "--base", digits_dir / "mlp.retrain_class.safetensors", "-o", tmp_path / "x.safetensors"),
             "was made from a base")
    assert not (tmp_path / "x.safetensors").exists()


def test_merge_refuses_an_adapter_config_that_is_not_lora_or_scales_past_float_range(digits_dir, tmp_path):
    """A prompt-tuning config printed peft's multi-line UserWarning before the error; a lora_alpha of 1e308 (finite)
    merged into Inf weights and exited 1 as if a method had diverged. Both are the adapter folder's fault: exit 2."""
    import shutil

    assert invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "--device", "cpu", "--quiet",
                  "--adapter-only", "-o", tmp_path / "ad").exit_code == 0
    for name, change, fragment in (("prompt", {"peft_type": "PROMPT_TUNING"}, "describes a 'PROMPT_TUNING' peft adapter, not LoRA"),
                                   ("huge", {"lora_alpha": 1e308}, "is not the one `unlearn apply` wrote with these weights")):
        shutil.copytree(tmp_path / "ad", tmp_path / name)
        config = json.loads((tmp_path / name / "adapter_config.json").read_text())
        (tmp_path / name / "adapter_config.json").write_text(json.dumps({**config, **change}))
        r = invoke("merge", tmp_path / name, "--base", digits_dir / "mlp.safetensors", "-o", tmp_path / f"{name}.safetensors")
        line = rejected(r, f"adapter {tmp_path / name}", fragment, "unlearn apply --adapter-only")
        assert r.stderr.strip() == line and not (tmp_path / f"{name}.safetensors").exists(), r.stderr


def test_apply_audit_fail_keeps_the_output_unless_asked(digits_dir, tmp_path):
    args = ["apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "--param", "epochs=1", "--param", "stop=epochs",
            "--param", "lr=1e-6", "--audit", "--json", "--quiet"]
    r = invoke(*args, "-o", tmp_path / "keep.safetensors", "--report-dir", tmp_path / "r1")  # one pass at a tiny lr does not forget the class
    assert r.exit_code == 3 and (tmp_path / "keep.safetensors").is_file()
    r = invoke(*args, "-o", tmp_path / "drop.safetensors", "--report-dir", tmp_path / "r2", "--no-keep-on-fail")
    assert r.exit_code == 3 and not (tmp_path / "drop.safetensors").exists()
    assert json.loads(r.stdout)["output_removed"] is True
    assert (tmp_path / "r2" / "report.json").is_file()  # the evidence stays
    # the ledger records outputs that exist: the kept one has its entry, the removed one none (found by the docs audit: its
    # entry and forgotten set were left behind, and a shared --ledger kept a step whose output was gone)
    assert (tmp_path / "keep.ledger.jsonl").is_file()
    assert not (tmp_path / "drop.ledger.jsonl").exists() and not (tmp_path / "drop.ledger.d").exists()
    assert json.loads(r.stdout)["ledger"] is None
    r = invoke(*args, "-o", tmp_path / "drop2.safetensors", "--report-dir", tmp_path / "r3", "--no-keep-on-fail",
               "--ledger", tmp_path / "shared.ledger.jsonl")
    assert r.exit_code == 3 and not (tmp_path / "shared.ledger.jsonl").exists()


def test_apply_no_keep_on_fail_writes_the_ledger_once_the_audit_passes(digits_dir, tmp_path):
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "--audit", "--no-keep-on-fail", "--json",
               "--quiet", "-o", tmp_path / "u.safetensors", "--report-dir", tmp_path / "r")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["output_removed"] is False and out["ledger"] == str(tmp_path / "u.ledger.jsonl")
    entries = [json.loads(line) for line in (tmp_path / "u.ledger.jsonl").read_text().splitlines()]
    assert len(entries) == 1 and entries[0]["output_sha256"] == out["output_sha256"]


def test_apply_says_why_rfa_stopped(digits_dir, tmp_path):
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", tmp_path / "u.safetensors")
    assert r.exit_code == 0, r.stderr
    assert "stopped early: target reached after" in r.stderr and "test_remaining_acc is the utility on the classes kept" in r.stderr


def test_stop_line_says_which_check_was_kept_at_the_cap():
    from unlearn_tool.stop_text import stop_line as _stop_line

    line = _stop_line({"stop_reason": "epochs", "epochs_run": 30, "kept_check": 14}, {"stop": "criterion"})
    assert "not reached" in line and "pass 14" in line
    line = _stop_line({"stop_reason": "epochs", "epochs_run": 8, "kept_check": 0}, {"stop": "criterion"})
    assert "equals the original" in line and "nothing forgotten" in line
    assert "kept" not in _stop_line({"stop_reason": "epochs", "epochs_run": 30, "kept_check": 30}, {"stop": "criterion"})


def test_stop_line_names_the_lr_backoffs():
    from unlearn_tool.stop_text import stop_line as _stop_line

    info = {"stop_reason": "epochs", "epochs_run": 30, "kept_check": 9, "lr_backoffs": 1}
    line = _stop_line(info, {"stop": "criterion"})
    assert "pass 9" in line and "lowered tenfold once" in line, line
    line = _stop_line({**info, "stop_reason": "criterion", "epochs_run": 5, "lr_backoffs": 2}, {"stop": "criterion", "epochs": 30})
    assert "target reached after 5 of 30 passes" in line and "2 times" in line, line
    assert "lowered" not in _stop_line({**info, "lr_backoffs": 0}, {"stop": "criterion"})
    line = _stop_line({**info, "kept_check_drift": 2.46}, {"stop": "criterion", "lr": 0.01})
    assert "moved 2.5 times as far as RFA's bound allows: --param lr=0.001 may hold them" in line, line
    assert "moved" not in _stop_line({**info, "kept_check_drift": 0.8}, {"stop": "criterion", "lr": 0.01})
    # a backoff on the last pass: nothing ran at the lower lr, so the line does not say the lr was lowered for a pass
    line = _stop_line({**info, "last_backoff_pass": 30}, {"stop": "criterion", "epochs": 30})
    assert "the last pass overshot the forget target and was undone" in line and "lowered tenfold" not in line, line
    line = _stop_line({**info, "lr_backoffs": 2, "last_backoff_pass": 30}, {"stop": "criterion", "epochs": 30})
    assert "was undone (the lr had been lowered tenfold once before)" in line, line
    assert "lowered tenfold once" in _stop_line({**info, "last_backoff_pass": 12}, {"stop": "criterion"})


def test_stop_line_names_the_agreement_plateau():
    from unlearn_tool.stop_text import stop_line as _stop_line

    line = _stop_line({"stop_reason": "plateau", "epochs_run": 6, "retain_agreement": 0.836}, {"epochs": 30, "stop": "criterion"})
    assert line.startswith("stopped early after 6 of 30 passes") and "83.6%" in line and "not reached" not in line


def test_apply_no_keep_on_fail_cut_short_during_the_audit_keeps_output_and_ledger_together(digits_dir, tmp_path, monkeypatch):
    """The ledger waits for the verdict under --no-keep-on-fail; a signal during the audit gives none, and the output
    it leaves must still have its ledger entry (as without the flag), not be a lineage step nobody recorded."""
    import unlearn_tool.audit as audit
    from unlearn_tool.errors import Terminated

    def cut_short(*_args, **_kwargs):
        raise Terminated(15)

    monkeypatch.setattr(audit, "audit_fresh_model", cut_short)
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "--audit", "--no-keep-on-fail", "--quiet",
               "-o", tmp_path / "u.safetensors", "--report-dir", tmp_path / "r")
    assert r.exit_code == 143 and "terminated by signal 15" in r.stderr
    assert (tmp_path / "u.safetensors").is_file() and (tmp_path / "u.ledger.jsonl").is_file()
    # the note names the output, not the ledger this recorded only after the signal ("u.ledger.jsonl was written before that")
    assert f"{tmp_path / 'u.safetensors'} was written before that" in r.stderr, r.stderr


def test_apply_audit_checks_the_report_dir_before_writing_anything(digits_dir, tmp_path):
    """A --report-dir that cannot hold the reports (a file, a missing parent) was found only when the audit wrote
    them: exit 2 'bad input' with the output and its ledger already written (under --no-keep-on-fail too)."""
    (tmp_path / "afile").write_text("mine")
    for bad, message in ((tmp_path / "afile", "is a file"), (tmp_path / "nowhere" / "r", "does not exist")):
        r = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "--audit", "--no-keep-on-fail", "--quiet",
                   "-o", tmp_path / "u.safetensors", "--report-dir", bad)
        assert r.exit_code == 2 and message in r.stderr, r.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    assert (tmp_path / "afile").read_text() == "mine"


def test_stop_line_counts_one_pass_in_the_singular():
    """`epochs: 1` read "ran all 1 passes" and "target reached after 1 of 1 passes"."""
    from unlearn_tool.stop_text import stop_line as _stop_line

    assert _stop_line({"stop_reason": "epochs", "epochs_run": 1}, {"stop": "epochs", "epochs": 1}) == "ran its one pass"
    line = _stop_line({"stop_reason": "epochs", "epochs_run": 1, "kept_check": 0}, {"stop": "criterion", "epochs": 1})
    assert line.startswith("ran its one pass without reaching the stopping target"), line
    assert _stop_line({"stop_reason": "criterion", "epochs_run": 1}, {"stop": "criterion", "epochs": 1}).endswith("after 1 of 1 pass")
    assert _stop_line({"stop_reason": "criterion", "epochs_run": 1}, {"stop": "criterion", "epochs": 30}).endswith("after 1 of 30 passes")
    assert _stop_line({"stop_reason": "epochs", "epochs_run": 3}, {"stop": "epochs", "epochs": 3}) == "ran all 3 passes"


def _adapter_variant(src, dst, config=None, tensors=None, keep_record=True):
    """A copy of the adapter folder `src` with its config updated by `config` and its tensors replaced by
    tensors(dict) (metadata kept; without keep_record, as an adapter written before configs were pinned)."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    weights = dst / "adapter_model.safetensors"
    with safe_open(str(weights), "pt") as f:
        meta = f.metadata()
    state = load_file(str(weights))
    if keep_record is not True:  # False: no record anywhere; "marker": only unlearn_metadata.json keeps it
        meta = {k: v for k, v in meta.items() if not k.endswith("adapter_config_sha256")}
        if keep_record is False:
            (dst / "unlearn_metadata.json").write_text(json.dumps(meta))
    save_file(tensors(state) if tensors else state, str(weights), metadata=meta)
    if config:
        (dst / "adapter_config.json").write_text(json.dumps({**json.loads((dst / "adapter_config.json").read_text()), **config}))
    return dst


def test_merge_refuses_an_adapter_whose_merge_would_not_be_the_unlearned_model(digits_dir, tmp_path):
    """Each exited 0 with "the forgotten data is now out of the weights": lora_alpha 0 wrote the base bit for bit,
    -16 reversed the deletion, use_rslora scaled it 2.8-fold, exclude_modules dropped a layer; renamed or missing
    tensors merged as zero behind a raw peft warning; integer tensors merged as garbage."""
    assert invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "--device", "cpu", "--quiet",
                  "--adapter-only", "-o", tmp_path / "ad").exit_code == 0
    pinned = "is not the one `unlearn apply` wrote with these weights"
    first_b = lambda s: sorted(k for k in s if "lora_B" in k)[0]  # noqa: E731
    cases = [
        ("alpha0", {"lora_alpha": 0}, None, True, pinned),
        ("rslora", {"use_rslora": True}, None, True, pinned),
        ("old_alpha0", {"lora_alpha": 0}, None, False, "says lora_alpha 0; it must be a number in (0, 1e+06]"),
        ("old_alphaneg", {"lora_alpha": -16}, None, False, "says lora_alpha -16"),
        ("old_rslora", {"use_rslora": True}, None, False, "sets use_rslora to true, which `unlearn apply` never writes"),
        ("old_exclude", {"exclude_modules": ["head"]}, None, False, 'sets exclude_modules to ["head"]'),
        ("old_bogus", {"bogus_field": 1}, None, False, "has key(s) peft's LoRA config does not know: 'bogus_field'"),
        ("old_rank", {"r": 2000000}, None, False, "says r 2000000, but the adapter's weights have rank 8"),
        ("old_pissa", {"init_lora_weights": "pissa"}, None, False, 'sets init_lora_weights to "pissa"'),  # rewrote the base on load
        ("marker_pin", {"lora_alpha": 1000.0}, None, "marker", pinned),  # the weights' record removed, the marker's kept
        ("renamed", None, lambda s: {k.replace("base_model.model.", ""): v for k, v in s.items()}, True, "lacks tensor(s)"),
        ("missing_b", None, lambda s: {k: v for k, v in s.items() if k != first_b(s)}, True, "lacks tensor(s)"),
        ("ints", None, lambda s: {k: v.to(torch.int32) for k, v in s.items()}, True, "is int32, not floating point"),
        ("tiny_b", None, lambda s: {k: v * 1e-38 if "lora_B" in k else v for k, v in s.items()}, True, "it changes no weight"),
    ]
    for name, config, tensors, record, fragment in cases:
        folder = _adapter_variant(tmp_path / "ad", tmp_path / name, config, tensors, record)
        r = invoke("merge", folder, "--base", digits_dir / "mlp.safetensors", "-o", tmp_path / f"{name}.safetensors")
        assert r.exit_code == 2 and fragment in r.stderr and len(r.stderr.strip().splitlines()) == 1, (name, r.stderr)
        assert not (tmp_path / f"{name}.safetensors").exists()
    r = invoke("merge", _adapter_variant(tmp_path / "ad", tmp_path / "old", keep_record=False), "--base", digits_dir / "mlp.safetensors",
               "-o", tmp_path / "old.safetensors")
    assert r.exit_code == 0, r.stderr  # an adapter written before the config was pinned, untouched, still merges


def test_inspect_shows_an_adapter_whose_config_cannot_be_read(digits_dir, tmp_path, monkeypatch):
    """inspect crashed with "unexpected PermissionError ... (please report this)" on an unreadable adapter_config.json."""
    from pathlib import Path

    assert invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "--device", "cpu", "--quiet",
                  "--adapter-only", "-o", tmp_path / "ad").exit_code == 0
    real = Path.read_text

    def read_text(self, *a, **k):
        if self.name == "adapter_config.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", read_text)
    r = invoke("inspect", tmp_path / "ad", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["adapter_config"] is None


def test_a_json_command_that_fails_answers_with_a_json_error(digits_dir, tmp_path):
    """--json commands printed nothing on stdout when they failed (validate alone answered {"ok": false, ...}), so
    `| jq` read no input. One object now, the same line as on stderr; a command that printed its answer adds none."""
    runs = [
        ("apply", digits_dir / "mlp.safetensors", "-r", tmp_path / "missing.yaml", "-o", tmp_path / "o.safetensors"),
        ("inspect", tmp_path / "missing.safetensors"),
        ("merge", tmp_path / "no-adapter", "--base", digits_dir / "mlp.safetensors", "-o", tmp_path / "m.safetensors"),
    ]
    for args in runs:
        r = invoke(*args, "--json")
        answer = json.loads(r.stdout)
        assert r.exit_code == 2 and answer == {"ok": False, "exit_code": 2, "error": r.stderr.strip()[len("error: "):]}, r.stdout
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "--param", "epochs=1", "--param",
               "stop=epochs", "--param", "lr=1e-6", "--audit", "--json", "--quiet", "-o", tmp_path / "k.safetensors",
               "--report-dir", tmp_path / "r")
    assert r.exit_code == 3 and "output_sha256" in json.loads(r.stdout)  # its answer, and only that


def test_a_usage_error_of_a_json_command_answers_in_json_too():
    """`unlearn apply --json` with a missing argument printed nothing on stdout, though a failing --json command answers
    {"ok": false, ...}; its line also read "Missing argument 'checkpoint'.; see ..."."""
    r = invoke("apply", "--json")
    answer = json.loads(r.stdout)
    assert r.exit_code == 2 and answer == {"ok": False, "exit_code": 2, "error": "Missing argument 'checkpoint'; see `unlearn apply --help`"}
    assert r.stderr.strip() == "error: Missing argument 'checkpoint'; see `unlearn apply --help`"
    assert invoke("apply").stdout == ""  # without --json: stderr only


def test_merge_names_the_adapter_tensor_that_does_not_fit_and_blames_the_adapter(digits_dir, tmp_path):
    """An adapter tensor of the wrong shape said 'does not fit the original model (RuntimeError: Error(s) in loading
    state_dict for PeftModel:); give the base it was trained on': the tensor was cut off, and the base was the right one."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    assert invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "--device", "cpu", "--quiet",
                  "--adapter-only", "-o", tmp_path / "ad").exit_code == 0
    shutil.copytree(tmp_path / "ad", tmp_path / "bad")
    weights = tmp_path / "bad" / "adapter_model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = "base_model.model.head.lora_A.weight"
    tensors[key] = torch.ones(tensors[key].shape[0], 4)  # rank kept: only the layer's input width is wrong
    save_file(tensors, str(weights), metadata=metadata)
    line = rejected(invoke("merge", tmp_path / "bad", "--base", digits_dir / "mlp.safetensors", "-o", tmp_path / "m.safetensors"),
                    f"its tensor {key} has shape (8, 4), the layer it adapts takes (8, 64)", "the adapter folder is the problem",
                    "unlearn apply --adapter-only")
    assert "give the base it was trained on" not in line and not (tmp_path / "m.safetensors").exists()
