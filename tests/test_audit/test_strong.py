"""The strong tier: per-example U-LiRA and relearn time, on a model built to leak and on one that does not."""

from __future__ import annotations

import json

import numpy as np

from conftest import invoke
from unlearn_tool.audit.strong import roc_summary, ulira_scores


def test_ulira_scores_separate_in_from_out_on_synthetic_statistics():
    rng = np.random.default_rng(0)
    n, m = 16, 200
    members = np.zeros((n, m), bool)
    members[::2] = True  # complementary halves: every example IN for half of the shadows
    members[1::2] = False
    stats = rng.normal(0, 1, (n, m)) + 3.0 * members  # members are much more confident
    leaky, negatives = ulira_scores(stats, members, rng.normal(3.0, 1, m))
    private, _ = ulira_scores(stats, members, rng.normal(0.0, 1, m))
    assert roc_summary(leaky, negatives)["auc"] > 0.9
    assert abs(roc_summary(private, negatives)["auc"] - 0.5) < 0.08
    summary = roc_summary(leaky, negatives)
    assert summary["negatives"] == n // 2 * m and summary["tpr_at_0.1pct_fpr_resolved"]


def _strong(req, original, unlearned, reference, folder, name):
    r = invoke("audit", "-r", req, "--original", original, "--unlearned", unlearned, "--reference", reference,
               "--tier", "strong", "--shadows", "8", "--report-dir", folder / name, "--json", "--quiet")
    return r, json.loads(r.stdout)


def test_strong_tier_finds_a_leak_and_passes_a_retrained_model(leaky, tmp_path):
    folder, req = leaky
    r, report = _strong(req, folder / "m.safetensors", folder / "m.safetensors", folder / "ref.safetensors", tmp_path, "leak")
    assert r.exit_code == 3, r.stderr  # the original, never unlearned: its forget set leaks
    strong = report["strong"]
    unl, ref = strong["models"]["unlearned"], strong["models"]["reference"]
    assert strong["protocol"]["attack"].startswith("LiRA") and strong["protocol"]["shadows"] == 8
    assert unl["auc"] > ref["auc"] + 0.15 and unl["tpr_at_1pct_fpr"] > ref["tpr_at_1pct_fpr"], (unl, ref)
    assert len(unl["per_example"]) == report["request"]["forget_size"]
    assert unl["relearn_steps"] == 0 and strong["ain"] is not None  # the original needs no relearning
    check = next(c for c in report["verdict_detail"]["checks"] if c["name"].startswith("per-example"))
    assert check["passed"] is False
    md = (tmp_path / "leak" / "report.md").read_text()
    assert "## Per-example attack (U-LiRA) and relearn time" in md and "TPR at 0.1% FPR" in md

    r, report = _strong(req, folder / "m.safetensors", folder / "ref.safetensors", folder / "ref.safetensors", tmp_path, "clean")
    assert r.exit_code == 0, r.stderr
    assert report["strong"]["cache_hits"] == 8  # the shadows were cached by the first audit
    u, rr = report["strong"]["models"]["unlearned"], report["strong"]["models"]["reference"]
    assert u["auc"] == rr["auc"]
    assert "per example, it is as private as on the retrained model" in report["verdict_detail"]["sentence"]


def test_an_unlearned_shadow_is_cached_per_forget_set_not_only_per_method():
    """Found by benchmarks/audit_digits.py: a class request and a sample request on the same data and recipe shared
    their RFA-unlearned shadows, so the second audit scored against shadows that had forgotten something else."""
    import torch

    from unlearn_tool.audit.strong import unlearned_shadow_key

    base, params = "shadow-0", {"rank": 8}
    key = unlearned_shadow_key(base, "rfa", params, "class", torch.tensor([1, 5, 9]))
    assert key == unlearned_shadow_key(base, "rfa", params, "class", torch.tensor([1, 5, 9]))
    others = [unlearned_shadow_key(base, "rfa", params, "sample", torch.tensor([1, 5, 9])),
              unlearned_shadow_key(base, "rfa", params, "class", torch.tensor([1, 5, 10])),
              unlearned_shadow_key(base, "rfa", {"rank": 4}, "class", torch.tensor([1, 5, 9])),
              unlearned_shadow_key(base, "finetune", params, "class", torch.tensor([1, 5, 9])),
              unlearned_shadow_key("shadow-1", "rfa", params, "class", torch.tensor([1, 5, 9]))]
    assert len({key, *others}) == 6


def test_a_shadow_cache_entry_holding_nan_is_rebuilt_not_used(tmp_path, monkeypatch):
    """A NaN in a cached shadow made `audit --tier strong` exit 1 ("unexpected ValueError: Input contains NaN") and the
    shadows built on it were cached with NaN too. A non-finite entry is now a miss, and a non-finite shadow is not kept."""
    import torch
    from safetensors.torch import load_file, save_file

    from unlearn_tool.audit import strong

    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path))
    make = lambda: torch.nn.Linear(3, 2)  # noqa: E731
    built = []

    def build():
        built.append(1)
        return make()

    strong._cached("k", build, make)
    path = tmp_path / "shadows" / "k.safetensors"
    state = load_file(str(path))
    state["weight"][0, 0] = float("nan")
    save_file(state, str(path))
    model, hit = strong._cached("k", build, make)
    assert not hit and len(built) == 2 and all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(t).all() for t in load_file(str(path)).values())  # the entry was rebuilt

    def diverged():
        m = make()
        with torch.no_grad():
            m.weight.fill_(float("nan"))
        return m

    strong._cached("d", diverged, make)
    assert not (tmp_path / "shadows" / "d.safetensors").exists()


def test_a_shadow_that_diverges_in_training_is_named_not_fed_to_the_attack(leaky, tmp_path, monkeypatch):
    """A shadow that diverged while it was trained (not a cached one) reached the attack as NaN statistics:
    "unexpected ValueError: Input contains NaN (please report this)", exit 1, and a report half-written in memory only."""
    import torch

    from unlearn_tool.audit import strong

    folder, req = leaky
    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path / "cache"))
    real_fit = strong.fit

    def fit_that_diverges_on_the_third_shadow(model, *args, **kwargs):
        real_fit(model, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("inf"))

    calls: list[int] = []
    monkeypatch.setattr(strong, "fit", fit_that_diverges_on_the_third_shadow)
    r = invoke("audit", "-r", req, "--original", folder / "m.safetensors", "--unlearned", folder / "ref.safetensors",
               "--tier", "strong", "--shadows", "4", "--report-dir", tmp_path / "rep", "--quiet")
    assert r.exit_code == 1, r.stderr
    assert "strong audit: shadow model 3 of 4 gives NaN/Inf outputs on the forget set" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "rep").exists()
    assert len(list((tmp_path / "cache" / "shadows").glob("*.safetensors"))) == 2  # the diverged shadow is not cached
