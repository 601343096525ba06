"""Baselines group B (scrub, bad-teacher, boundary-shrink, ssd, blindspot): real outcomes on digits, SSD exactness and cache.

Figures asserted here were measured on the session's digits MLP (seed 0, CPU):
original forget/retain/test accuracy 0.993/0.997/0.967 (class 3) and a mean
true-class confidence of 0.970 on the 10% random forget set.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from conftest import invoke
from unlearn_tool.data import LabelledData, Splits
from unlearn_tool.evaluate import predict_logits
from unlearn_tool.methods import UnlearnContext, parse_params, run_method
from unlearn_tool.methods import ssd as ssd_mod
from unlearn_tool.pipeline import utility

GROUP_B = ["scrub", "bad-teacher", "boundary-shrink", "ssd", "blindspot"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """SSD never writes into the user's ~/.cache during tests."""
    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path / "cache"))


def make_ctx(job, original=None) -> UnlearnContext:
    """The context pipeline.apply() builds for a job."""
    return job.context(original=original)


def run(name, job, **params):
    out, wall = run_method(name, make_ctx(job), parse_params(name, params))
    return out, wall


def forget_confidence(model, job) -> float:
    logits, y = predict_logits(model, job.splits.forget, job.device)
    return float(logits.softmax(1).gather(1, y[:, None]).mean())


def forget_ce(model, job) -> float:
    logits, y = predict_logits(model, job.splits.forget, job.device)
    return float(nn.functional.cross_entropy(logits, y))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- outcomes on digits

# (max forget accuracy, min retain accuracy, min test accuracy on the remaining classes) after forgetting class 3
CLASS_FLOORS = {
    "scrub": (0.05, 0.97, 0.93),            # measured 0.00 / 0.997 / 0.966
    "bad-teacher": (0.40, 0.93, 0.90),      # measured 0.21 / 0.961 / 0.938
    "boundary-shrink": (0.40, 0.95, 0.92),  # measured 0.15 / 0.978 / 0.954
    "ssd": (0.05, 0.97, 0.95),              # measured 0.007 / 0.997 / 0.963 (seed 0; 0.00-0.01 on seeds 0-3)
    "blindspot": (0.05, 0.97, 0.94),        # measured 0.00 / 0.995 / 0.972
}


@pytest.mark.parametrize("name", GROUP_B)
def test_class_unlearning_forgets_and_keeps_retain(name, digits_job):
    before = snapshot(digits_job.original)
    base = utility(digits_job.original, digits_job)
    assert base["forget_acc"] > 0.95
    out, _ = run(name, digits_job)
    assert same_weights(before, snapshot(digits_job.original)), "the original (teacher) must never be modified"
    assert not out.model.training
    after = utility(out.model, digits_job)
    max_forget, min_retain, min_test_remaining = CLASS_FLOORS[name]
    assert after["forget_acc"] <= max_forget, after
    assert after["test_forgotten_acc"] <= max_forget + 0.1, after
    assert after["retain_acc"] >= min_retain, after
    assert after["test_remaining_acc"] >= min_test_remaining, after


# (min drop of the mean true-class confidence on the forget set, min retain accuracy) on a 10% random forget set
SAMPLE_FLOORS = {
    "scrub": (0.0, 0.99),             # measured 0.970 -> 0.969 (SCRUB's min-steps mostly undo the max-steps here), retain 0.999
    "bad-teacher": (0.10, 0.95),      # measured 0.970 -> 0.748, retain 0.978
    "boundary-shrink": (0.15, 0.65),  # measured 0.970 -> 0.619, retain 0.756: relabelling random samples hurts (a class method)
    "ssd": (0.0, 0.99),               # measured 0.970 -> 0.970, retain 0.998: SSD singles out no weights for random samples here
                                      # (retrained reference: 0.946; benchmarks/ssd_seeds.py)
    "blindspot": (0.01, 0.98),        # measured 0.970 -> 0.945, retain 0.999
}


@pytest.mark.parametrize("name", GROUP_B)
def test_sample_unlearning_lowers_forget_confidence(name, digits_sample_job):
    job = digits_sample_job
    conf0, ce0 = forget_confidence(job.original, job), forget_ce(job.original, job)
    out, _ = run(name, job)
    after = utility(out.model, job)
    min_drop, min_retain = SAMPLE_FLOORS[name]
    conf1, ce1 = forget_confidence(out.model, job), forget_ce(out.model, job)
    assert conf1 < conf0 - min_drop, (conf0, conf1)
    assert ce1 > ce0, (ce0, ce1)  # the forget loss rises for every method
    assert after["retain_acc"] >= min_retain, after


def test_ssd_class_forgetting_does_not_hang_on_how_the_seed_batches_the_forget_set(digits_job):
    """SSD read Df's importance from one pass of batches of 64 (146 samples: 64/64/18): seeds 0-3, which only reshuffle
    those batches, left class 3's forget accuracy at 0.00, 0.99, 0.78 and 0.73 (benchmarks/ssd_seeds.py). Batches of
    even size, read until 48 were, forget it on every seed."""
    for seed in range(4):
        ctx = make_ctx(digits_job)
        ctx.seed = seed
        out, _ = run_method("ssd", ctx, parse_params("ssd", {"use_cache": False}))
        after = utility(out.model, digits_job)
        assert after["forget_acc"] <= 0.05 and after["retain_acc"] >= 0.97, (seed, after)


def test_same_seed_same_weights_on_cpu(digits_sample_job):
    a, _ = run("bad-teacher", digits_sample_job)
    b, _ = run("bad-teacher", digits_sample_job)
    assert same_weights(snapshot(a.model), snapshot(b.model))
    ctx = make_ctx(digits_sample_job)
    ctx.seed = 1
    c, _ = run_method("bad-teacher", ctx, parse_params("bad-teacher", {}))
    assert not same_weights(snapshot(a.model), snapshot(c.model))


# ---------------------------------------------------------------- SSD exactness on a tiny model

def _tiny_ctx(seed: int = 0):
    """A 3-input, 3-class linear model; D = 6 samples, Df = the 2 samples of class 2, one batch each (bs = 6)."""
    torch.manual_seed(seed)
    model = nn.Linear(3, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -0.5, 0.2], [0.3, 0.8, -0.4], [-0.6, 0.1, 0.9]]))
        model.bias.copy_(torch.tensor([0.1, -0.2, 0.05]))
    x = torch.tensor([[1.0, 0.0, 0.5], [0.2, 1.0, 0.1], [0.0, 0.3, 1.0], [0.9, 0.1, 0.0], [0.1, 0.8, 0.3], [0.4, 0.0, 1.2]])
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    train = LabelledData.from_tensors(x, y)
    splits = Splits(train=train, test=train, forget_idx=torch.tensor([2, 5]), retain_idx=torch.tensor([0, 1, 3, 4]),
                    scenario="class", forget_classes=[2])
    ctx = UnlearnContext(original=model.eval(), make_model=lambda: nn.Linear(3, 3), splits=splits, num_classes=3,
                         device=torch.device("cpu"), seed=0)
    return ctx, x, y


def _analytic_grad_sq(model: nn.Linear, x, y):
    """Squared gradient of mean CE for a linear softmax model, by hand: dL/dz = (p - onehot) / n."""
    with torch.no_grad():
        p = (x @ model.weight.T + model.bias).softmax(1)
        g = (p - nn.functional.one_hot(y, 3).float()) / len(y)
        return {"weight": (g.T @ x) ** 2, "bias": g.sum(0) ** 2}


def test_ssd_importances_match_hand_computed_gradients():
    ctx, x, y = _tiny_ctx()
    got = ssd_mod.importances(ctx.original, ctx.splits.train, 6, ctx.device, None)
    want = _analytic_grad_sq(ctx.original, x, y)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-9)
    # two batches of 3: the mean over batches of each batch's squared mean gradient
    got2 = ssd_mod.importances(ctx.original, ctx.splits.train, 3, ctx.device, None)
    a, b = _analytic_grad_sq(ctx.original, x[:3], y[:3]), _analytic_grad_sq(ctx.original, x[3:], y[3:])
    for k in a:
        torch.testing.assert_close(got2[k], (a[k] + b[k]) / 2, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("alpha,dampening", [(2.0, 1.0), (1.0, 0.5)])
def test_ssd_dampens_exactly_the_selected_parameters(alpha, dampening):
    ctx, x, y = _tiny_ctx()
    fidx = ctx.splits.forget_idx
    i_d = _analytic_grad_sq(ctx.original, x, y)
    i_f = _analytic_grad_sq(ctx.original, x[fidx], y[fidx])
    before = snapshot(ctx.original)
    out, _ = run_method("ssd", ctx, parse_params("ssd", {"alpha": alpha, "dampening": dampening, "batch_size": 6, "use_cache": False}))
    after = snapshot(out.model)
    assert same_weights(before, snapshot(ctx.original))
    n_selected = 0
    for k in ("weight", "bias"):
        sel = i_f[k] > alpha * i_d[k]
        beta = torch.clamp(dampening * i_d[k] / i_f[k], max=1.0)
        n_selected += int(sel.sum())
        # untouched entries are bit-identical, dampened ones equal theta * beta
        assert torch.equal(after[k][~sel], before[k][~sel])
        torch.testing.assert_close(after[k][sel], before[k][sel] * beta[sel], rtol=1e-5, atol=0.0)
        assert (after[k][sel].abs() < before[k][sel].abs()).all()
    assert 0 < n_selected < 12, "the fixture must select some but not all of the 12 parameters"
    assert out.info["dampened_params"] == n_selected


def test_ssd_zero_forget_importance_is_never_selected():
    w = torch.tensor([1.0, 2.0, 3.0])
    model = nn.Module()
    model.w = nn.Parameter(w.clone())
    changed, _ = ssd_mod.dampen(model, {"w": torch.tensor([0.0, 0.0, 4.0])}, {"w": torch.tensor([0.0, 1.0, 0.0])}, 10.0, 1.0)
    # 0/0 and 0/x stay untouched (no NaN); I_D = 0 < I_f gives beta = 0
    assert changed == 1
    assert torch.equal(model.w.detach(), torch.tensor([1.0, 2.0, 0.0]))


# ---------------------------------------------------------------- SSD cache

def test_ssd_cache_hit_gives_identical_weights(digits_job, tmp_path):
    cache = tmp_path / "ssd-cache"
    first, _ = run("ssd", digits_job, cache_dir=str(cache))
    assert first.info["cache"] == "miss" and first.info["cache_written"] is True
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    second, _ = run("ssd", digits_job, cache_dir=str(cache))
    assert second.info["cache"] == "hit"
    assert same_weights(snapshot(first.model), snapshot(second.model))
    uncached, _ = run("ssd", digits_job, use_cache=False)
    assert uncached.info["cache"] == "disabled"
    assert same_weights(snapshot(first.model), snapshot(uncached.model))
    # a different batch size is a different key
    other, _ = run("ssd", digits_job, cache_dir=str(cache), batch_size=32)
    assert other.info["cache"] == "miss" and len(list(cache.glob("*.safetensors"))) == 2


def test_ssd_cache_default_folder_follows_env(digits_job, tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_CACHE_DIR", str(tmp_path / "envcache"))
    out, _ = run("ssd", digits_job)
    assert out.info["cache"] == "miss"
    assert list((tmp_path / "envcache" / "ssd").glob("*.safetensors"))


def test_ssd_corrupted_or_mismatched_cache_is_not_trusted(digits_job, digits_sample_job, tmp_path):
    cache = tmp_path / "c"
    ref, _ = run("ssd", digits_job, cache_dir=str(cache))
    (path,) = cache.glob("*.safetensors")
    good = path.read_bytes()
    ref_key = path.name.removesuffix(".safetensors")

    # 1. flipped bytes in the tensor data: the content checksum catches it
    data = bytearray(good)
    data[-8:] = b"\x00\x00\x80\x7f" * 2  # +inf floats
    path.write_bytes(bytes(data))
    out, _ = run("ssd", digits_job, cache_dir=str(cache))
    assert out.info["cache"] != "hit" and out.info["cache"] != "miss"
    assert same_weights(snapshot(ref.model), snapshot(out.model))
    assert ssd_mod.load_cached(path, ref_key, ref.model)[1] == "hit", "the recomputed importances replace the bad file"

    # 2. truncated / garbage file
    path.write_bytes(good[:50])
    out, _ = run("ssd", digits_job, cache_dir=str(cache))
    assert out.info["cache"].startswith("unreadable")
    assert same_weights(snapshot(ref.model), snapshot(out.model))

    # 3. a valid cache file of another data set / batch size copied under this key
    other_dir = tmp_path / "other"
    run("ssd", digits_sample_job, cache_dir=str(other_dir))  # sample scenario: batch size 128, another key
    (other,) = other_dir.glob("*.safetensors")
    shutil.copyfile(other, path)
    out, _ = run("ssd", digits_job, cache_dir=str(cache))
    assert out.info["cache"] == "key mismatch"
    assert same_weights(snapshot(ref.model), snapshot(out.model))

    # 4. a well-formed file with the right key whose values were tampered with (checksum not updated)
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = {k: v * 2 for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata=meta)
    out, _ = run("ssd", digits_job, cache_dir=str(cache))
    assert out.info["cache"] == "content checksum mismatch"
    assert same_weights(snapshot(ref.model), snapshot(out.model))


def test_ssd_cache_key_depends_on_weights_and_data(digits_job):
    w = ssd_mod.weights_fingerprint(digits_job.original)
    d = ssd_mod.data_fingerprint(digits_job.splits.train)
    other = digits_job.make_model()
    assert ssd_mod.weights_fingerprint(other) != w
    x, y = digits_job.splits.train.x.clone(), digits_job.splits.train.targets.clone()
    x[0, 0, 0, 0] += 1e-3
    assert ssd_mod.data_fingerprint(LabelledData.from_tensors(x, y)) != d
    assert ssd_mod.cache_key(w, d, 64) != ssd_mod.cache_key(w, d, 128)


def test_ssd_through_the_cli_reports_cache_hit(digits_dir, tmp_path):
    cache = tmp_path / "cli-cache"
    args = ["apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "--method", "ssd",
            "--param", f"cache_dir={cache}", "--device", "cpu", "--json", "--force"]
    r1 = invoke(*args, "-o", tmp_path / "a.safetensors")
    assert r1.exit_code == 0, r1.output
    r2 = invoke(*args, "-o", tmp_path / "b.safetensors")
    s1, s2 = json.loads(r1.stdout), json.loads(r2.stdout)
    assert (s1["info"]["cache"], s2["info"]["cache"]) == ("miss", "hit")
    assert s1["output_sha256"] != "" and s1["after"] == s2["after"]
    assert s2["after"]["forget_acc"] <= 0.05 and s2["after"]["retain_acc"] >= 0.95
