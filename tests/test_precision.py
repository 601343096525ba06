"""--precision: checked up front, fp32 wherever there is no CUDA, bf16 autocast on a CUDA card that supports it, fp16 with
loss scaling in the loops that scale on one that does not (issue 9)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import invoke
from helpers import rejected


def test_an_unknown_precision_is_refused_before_any_work(digits_dir, tmp_path):
    out = tmp_path / "o.safetensors"
    rejected(invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", out, "--precision", "fp8"),
             "--precision fp8", "auto, bf16, fp16, fp32")
    assert not out.exists()


def test_on_cpu_every_choice_runs_fp32_and_gives_the_same_weights(digits_dir, tmp_path):
    """CPU never autocasts: asking for bf16 there must not change a single weight, and the JSON says fp32."""
    runs = {}
    for choice in ("fp32", "bf16", "fp16"):
        out = tmp_path / f"{choice}.safetensors"
        r = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", out, "--device", "cpu",
                   "--precision", choice, "--json", "--quiet")
        assert r.exit_code == 0, r.stderr
        summary = json.loads(r.stdout)
        assert summary["precision"] == "fp32" and "peak_gpu_memory_mb" not in summary
        runs[choice] = load_file(str(out))
    assert all(torch.equal(runs["fp32"][k], runs[c][k]) for c in ("bf16", "fp16") for k in runs["fp32"])


@pytest.mark.parametrize("half", ["bf16", "fp16"])
def test_a_whole_pass_under_the_tools_autocast_still_learns(digits_dir, tmp_path, monkeypatch, half):
    """`unlearn train` and a method's run each step many times inside ONE autocast context. With autocast's weight
    cache on, every forward of the pass reused the bf16 weights cast at the first step: on an H100, `unlearn train`
    left the digits MLP at chance (10%) and no method moved (docs/benchmarks.md "On a GPU"). CPU autocast caches the
    same way, so the tool's own context is run here on CPU in bf16, and in fp16 with its loss scaling (a card without
    bf16), the precision forced: the model must learn."""
    from unlearn_tool import precision

    monkeypatch.setattr(precision, "resolved", lambda device: half)
    r = invoke("train", "-r", digits_dir / "class.yaml", "-o", tmp_path / "m.safetensors", "--device", "cpu", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    trained = json.loads(r.stdout)
    assert trained["precision"] == half and trained["test_acc"] > 0.9, trained
    r = invoke("apply", tmp_path / "m.safetensors", "-r", digits_dir / "class.yaml", "-o", tmp_path / "u.safetensors",
               "--device", "cpu", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    after = json.loads(r.stdout)["after"]
    assert after["forget_acc"] < 0.1 and after["test_remaining_acc"] > 0.85, after


def test_inside_a_bf16_pass_merges_and_evaluations_run_in_the_weights_precision(digits_job, monkeypatch):
    """A method merges its adapters and reads outputs (teacher targets, stopping checks) inside its pass's autocast.
    In bf16 the merge folded in a bf16-rounded B @ A (merged logits 6e-3 from the adapter's, 4e-6 in fp32) and the
    evaluations gave bf16 figures. Both now run in the weights' precision (precision.full_precision)."""
    from unlearn_tool import precision
    from unlearn_tool.evaluate import predict_logits
    from unlearn_tool.methods import parse_params, run_method

    job = digits_job
    exact, _ = predict_logits(job.original, job.splits.forget, torch.device("cpu"))
    monkeypatch.setattr(precision, "resolved", lambda device: "bf16")
    with precision.training_autocast(torch.device("cpu")):
        inside, _ = predict_logits(job.original, job.splits.forget, torch.device("cpu"))
    assert torch.equal(inside, exact)

    out, _ = run_method("rfa", job.context(), parse_params("rfa", {"epochs": 3}))
    x, _ = job.splits.forget.take(torch.arange(64))
    with torch.no_grad():
        gap = float((out.model(x) - out.adapter_model.eval()(x)).abs().max())
    assert gap < 1e-4, gap


def test_auto_is_fp32_for_regression_on_a_card(monkeypatch):
    """bf16 outputs come in steps of 8 near 2000: a regression model's outputs would be rounded to a few values."""
    from unlearn_tool import precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    card = torch.device("cuda")
    try:
        precision.configure("auto", card, task="regression")
        assert precision.resolved(card) == "fp32"
        precision.configure("bf16", card, task="regression")  # asked for: honoured
        assert precision.resolved(card) == "bf16"
        precision.configure("auto", card, task="classification")
        assert precision.resolved(card) == "bf16"
        with precision.for_task("regression"):  # what run_method enters for a regression job (library callers too)
            assert precision.resolved(card) == "fp32"
        assert precision.resolved(card) == "bf16"
    finally:
        precision.configure("auto", None)


def test_gradient_restriction_training_stays_fp32_on_a_card_without_bf16(digits_dir, tmp_path, monkeypatch):
    """The penalty differentiates the unscaled loss (autograd.grad), which fp16 would underflow: with it, `unlearn
    train` on an fp16 card runs fp32 (here: fp16 forced on CPU gives the fp32 run's weights exactly)."""
    from unlearn_tool import precision

    args = ["-r", digits_dir / "class.yaml", "--device", "cpu", "--epochs", "2", "--regularizer", "gradient-restriction", "--quiet"]
    assert invoke("train", *args, "-o", tmp_path / "fp32.safetensors").exit_code == 0
    monkeypatch.setattr(precision, "resolved", lambda device: "fp16")
    assert invoke("train", *args, "-o", tmp_path / "fp16.safetensors").exit_code == 0
    a, b = load_file(str(tmp_path / "fp32.safetensors")), load_file(str(tmp_path / "fp16.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_support_is_asked_of_the_card_named_not_the_current_one(monkeypatch):
    """A machine with an Ampere card as cuda:1 beside an older cuda:0: `--device cuda:1` gets bf16, cuda:0 fp16."""
    import contextlib

    from unlearn_tool import precision

    current = [0]

    @contextlib.contextmanager
    def on_card(index):
        before, current[0] = current[0], index
        try:
            yield
        finally:
            current[0] = before

    monkeypatch.setattr(torch.cuda, "device", on_card)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: current[0] == 1)
    try:
        precision.configure("auto", torch.device("cuda:1"))
        assert precision.resolved(torch.device("cuda:1")) == "bf16"
        assert precision.resolved(torch.device("cuda:0")) == "fp16"
    finally:
        precision.configure("auto", None)


def test_ssd_cache_keeps_bf16_importances_apart_and_fp32_keys_unchanged():
    from unlearn_tool.methods import ssd

    assert ssd.cache_key("w", "d", 64) == ssd.cache_key("w", "d", 64, precision="fp32")
    assert ssd.cache_key("w", "d", 64, precision="bf16") != ssd.cache_key("w", "d", 64)


@pytest.mark.skipif(not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(), reason="needs a CUDA card with bfloat16")
def test_on_cuda_training_passes_run_in_bf16_and_still_train(digits_dir, tmp_path):
    from unlearn_tool.precision import configure, training_autocast

    device = torch.device("cuda")
    configure("auto", device)
    layer = torch.nn.Linear(8, 2).to(device)
    with training_autocast(device):
        assert layer(torch.randn(4, 8, device=device)).dtype == torch.bfloat16
    configure("fp32", device)
    with training_autocast(device):
        assert layer(torch.randn(4, 8, device=device)).dtype == torch.float32
    configure("auto", None)
    # and they train: the whole CLI on the card, in bf16
    r = invoke("train", "-r", digits_dir / "class.yaml", "-o", tmp_path / "m.safetensors", "--device", "cuda", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    trained = json.loads(r.stdout)
    assert trained["precision"] == "bf16" and trained["test_acc"] > 0.9, trained
    r = invoke("apply", tmp_path / "m.safetensors", "-r", digits_dir / "class.yaml", "-o", tmp_path / "u.safetensors",
               "--device", "cuda", "--json", "--quiet")
    assert r.exit_code == 0, r.stderr
    after = json.loads(r.stdout)["after"]
    assert after["forget_acc"] < 0.1 and after["test_remaining_acc"] > 0.85, after


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_on_a_card_without_bf16_auto_means_fp16_only_where_the_loop_scales_the_loss(monkeypatch):
    """The resolution a pre-Ampere card gets (its bf16 query mocked: no card here); the autocast contexts are built, not run."""
    from unlearn_tool import precision

    device = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    try:
        precision.configure("auto", device)
        assert precision.resolved(device) == "fp16"
        assert isinstance(precision.training_autocast(device, scaled=True), torch.autocast)
        assert not isinstance(precision.training_autocast(device), torch.autocast)  # unscaled loops stay fp32
        precision.configure("bf16", device)
        with pytest.raises(Exception, match="no bfloat16 support"):
            precision.resolved(device)
        precision.configure("fp32", device)
        assert precision.resolved(device) == "fp32"
    finally:
        precision.configure("auto", None)


@pytest.mark.parametrize("make_optimizer", [lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
                                            lambda ps: __import__("unlearn_tool.optim", fromlist=["Adam"]).Adam(ps, 1e-2)])
def test_loss_scaled_steps_equal_plain_steps_and_skip_overflow(make_optimizer):
    """ScaledSteps (the scaler the fp16 path uses, run on CPU here): scaling by a power of two and unscaling before the
    step gives the plain step's weights; a step whose gradients overflow is skipped and the scale lowered."""
    from unlearn_tool.precision import ScaledSteps

    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    nets = [torch.nn.Linear(6, 3) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    runs = [(nets[0], ScaledSteps(torch.device("cpu"), enabled=False)), (nets[1], ScaledSteps(torch.device("cpu"), enabled=True))]
    for net, steps in runs:
        opt = make_optimizer(list(net.parameters()))
        for _ in range(10):
            opt.zero_grad()
            steps.backward_and_step(torch.nn.functional.cross_entropy(net(x), y), opt)
    assert runs[1][1].scaler is not None and runs[0][1].scaler is None
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    net, steps = runs[1]
    before, scale = [p.detach().clone() for p in net.parameters()], steps.scaler.get_scale()
    opt = make_optimizer(list(net.parameters()))
    opt.zero_grad()
    steps.backward_and_step(net(x).sum() * float("inf"), opt)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert steps.scaler.get_scale() < scale
