"""The pieces that make RFA-LoRA cheap (issue 9): fused adapters, the frozen-prefix cut, layer choice, fast merge,
the retain pool and guard, and what the stopping rule promises — each checked against the plain computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearn_tool import lora
from unlearn_tool.methods import parse_params, run_method


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.short(x))


class TinyResNet(nn.Module):
    """Skip connections inside blocks, BatchNorm, a functional tail: what a cut must respect."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.layer1 = Block(8, 8, 1)
        self.layer2 = Block(8, 16, 2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = self.layer2(self.layer1(F.relu(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _randomise(peft_model):
    torch.manual_seed(1)
    for p in lora.adapter_parameters(peft_model):
        p.data.normal_(0, 0.1)
    for m in peft_model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    return peft_model


def test_fused_adapters_compute_what_peft_computes():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 5)).eval()
    pm = _randomise(lora.inject(base, lora.select_layers(base, "all"), 2, 4).eval())
    x = torch.rand(6, 3, 8, 8)
    with torch.no_grad(), lora.capture_residuals(pm) as res:
        ref = pm(x)
    with torch.no_grad(), lora.fused_adapters(pm) as fused:
        fused.rows = slice(2, 5)
        out = pm(x)
        got = dict(fused.residuals)
        fused.rows, fused.disabled = None, True
        plain = pm(x)
    assert torch.allclose(out, ref, atol=1e-5)
    assert set(got) == set(res)
    for name, r in got.items():
        assert torch.allclose(r, res[name][2:5], atol=1e-5)
    assert torch.allclose(plain, base(x), atol=1e-6)  # disabled: the original model
    with torch.no_grad():
        assert torch.equal(pm(x), ref)  # two branches again after the block
        assert torch.allclose(lora.to_peft(pm)(x), ref, atol=1e-5)  # peft's own LoRA layers, same adapters: same function


def test_fused_residuals_train_the_adapters_as_the_two_branches_do():
    """The fused pass computes the chosen rows' residuals with the delta weight it already built (one op per layer):
    the zero-residual term's gradients on A and B equal those of the two-branch residual s * B(A(x))."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 5)).eval()
    pm = _randomise(lora.inject(base, lora.select_layers(base, "all"), 2, 4).eval())
    params = lora.adapter_parameters(pm)
    x = torch.rand(6, 3, 8, 8)
    with lora.capture_residuals(pm) as res:
        pm(x)
        sum(r[2:5].pow(2).mean() for r in res.values()).backward()
    two_branch = [q.grad.clone() for q in params]
    pm.zero_grad(set_to_none=True)
    with lora.fused_adapters(pm) as fused:
        fused.rows = slice(2, 5)
        pm(x)
        sum(r.pow(2).mean() for r in fused.residuals.values()).backward()
    assert all(g.abs().sum() > 0 for g in two_branch)
    for q, g in zip(params, two_branch):
        assert torch.allclose(q.grad, g, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("make, shape, adapted", [
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)), (1, 4, 4), ["3"]),
    (TinyResNet, (1, 8, 8), ["layer2.conv1", "layer2.conv2", "layer2.short", "fc"]),
    (TinyResNet, (1, 8, 8), ["layer2.conv2", "fc"]),  # the cut comes before layer2.conv1, which then runs unadapted
])
def test_frozen_prefix_cut_reproduces_the_model(make, shape, adapted):
    torch.manual_seed(0)
    base = make().eval()
    pm = _randomise(lora.inject(base, adapted, 2, 4).eval())
    inner = pm
    x = torch.rand(5, *shape)
    with lora.fused_adapters(pm):
        split = lora.split_frozen_prefix(inner, adapted, x[:2])
        assert split is not None
        with torch.no_grad():
            assert torch.allclose(split.suffix(split.prefix(x)), pm(x), atol=1e-5)
        # the suffix trains the peft model's own adapters; the prefix holds none
        suffix_params = {id(p) for p in split.suffix.parameters()}
        assert all(id(p) in suffix_params for p in lora.adapter_parameters(pm))
        assert not any("lora_" in n for n, _ in split.prefix.named_parameters())
        out = split.suffix(split.prefix(x)).sum()
        out.backward()
    assert all(p.grad is not None for p in lora.adapter_parameters(pm))


def test_no_cut_when_the_first_layer_is_adapted_or_the_model_does_not_trace():
    base = TinyResNet().eval()
    pm = lora.inject(base, ["stem", "fc"], 2, 4).eval()
    assert lora.split_frozen_prefix(pm, ["stem", "fc"], torch.rand(2, 1, 8, 8)) is None

    class Branchy(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.a(x) if x.sum() > 0 else -self.a(x))

    pm = lora.inject(Branchy(), ["b"], 2, 4).eval()
    assert lora.split_frozen_prefix(pm, ["b"], torch.rand(2, 4)) is None


def test_auto_layers_adapt_after_the_expensive_part_or_everything():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    assert lora.auto_layers(mlp, torch.rand(2, 1, 8, 8)) == ["1", "3", "5"]  # no cut leaves half the work before it
    assert lora.auto_layers(TinyResNet(), torch.rand(2, 1, 8, 8)) == ["layer2.conv1", "layer2.conv2", "layer2.short", "fc"]


def test_fast_merge_equals_peft_merge():
    torch.manual_seed(0)
    base = TinyResNet().eval()
    for m in base.modules():  # non-trivial BatchNorm statistics in the model the adapters are injected into
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    pm = lora.inject(base, lora.select_layers(base, "all"), 2, 4).eval()
    for p in lora.adapter_parameters(pm):
        p.data.normal_(0, 0.1)
    a, b = lora.merged_copy(pm).state_dict(), lora.merged_copy(pm, base).state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], v) for k, v in base.state_dict().items())  # the adapters did change the weights


def test_rfa_is_repeatable_keeps_batchnorm_statistics_and_stops_on_its_promise(digits_job):
    params = parse_params("rfa", {})
    first, _ = run_method("rfa", digits_job.context(), params)
    second, _ = run_method("rfa", digits_job.context(), params)
    s1, s2 = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)  # same seed, same CPU output
    assert first.info["stop_reason"] == "criterion" and first.info["guard"] == "boundary"
    # class unlearning stops only when the checked forget samples (all of them here: |Df| <= eval_forget) are forgotten
    forget = digits_job.splits.forget
    with torch.no_grad():
        assert (first.model(forget.x).argmax(1) == forget.targets).sum() == 0


def test_batchnorm_buffers_are_the_originals(tmp_path):
    torch.manual_seed(0)
    base = TinyResNet()
    base.train()
    with torch.no_grad():
        for _ in range(3):
            base(torch.rand(16, 1, 8, 8))  # running statistics away from their initial values
    base.eval()
    from unlearn_tool.data import LabelledData, Splits
    from unlearn_tool.methods import UnlearnContext

    y = torch.arange(60) % 3
    x = torch.rand(60, 1, 8, 8) + y.view(-1, 1, 1, 1) * 0.5
    train = LabelledData.from_tensors(x, y)
    forget_idx = torch.nonzero(y == 1).squeeze(1)
    retain_idx = torch.nonzero(y != 1).squeeze(1)
    splits = Splits(train, LabelledData.from_tensors(x[:12], y[:12]), forget_idx, retain_idx, "class", [1])
    ctx = UnlearnContext(original=base, make_model=TinyResNet, splits=splits, num_classes=3, device=torch.device("cpu"), seed=0)
    out, _ = run_method("rfa", ctx, parse_params("rfa", {"epochs": 2}))
    merged, orig = out.model.state_dict(), base.state_dict()
    for k in orig:
        if "running_" in k or "num_batches" in k:
            assert torch.equal(merged[k], orig[k]), k
    assert out.info["frozen_prefix"] is not None  # the layers after the cut train on cached prefix outputs


def test_adapter_adam_is_torch_adam():
    """unlearn_tool.optim.Adam (no torch.optim, so no torch._dynamo import) takes the steps torch.optim.Adam takes,
    including parameters that get no gradient on some steps."""
    from unlearn_tool.optim import Adam

    torch.manual_seed(0)
    ours = [nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(2, 1, 3, 3))]
    theirs = [nn.Parameter(p.detach().clone()) for p in ours]
    start = [p.detach().clone() for p in ours]
    opts = Adam(ours, 1e-2, (0.5, 0.999)), torch.optim.Adam(theirs, 1e-2, betas=(0.5, 0.999))
    for step in range(25):
        for params, opt in zip((ours, theirs), opts):
            opt.zero_grad()
            loss = params[0].pow(3).sum() + step * params[1].sin().sum()
            if step % 3:  # the third tensor is left out of every third step's graph
                loss = loss + params[2].abs().sum()
            loss.backward()
            opt.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert all((a - s).abs().max() > 0.05 for a, s in zip(ours, start))  # they moved: the comparison is not vacuous


def test_class_unlearning_of_a_weak_teacher_stops_when_retained_agreement_plateaus(digits_dir, tmp_path):
    """A briefly trained model's boundary samples flip at any change, so 99 % agreement is never reached: without the
    plateau rule RFA runs all 30 passes; with it, it stops early, keeps the best check's adapters and the utility."""
    from conftest import invoke
    from unlearn_tool.pipeline import prepare

    weak = tmp_path / "weak.safetensors"
    assert invoke("train", "-r", digits_dir / "class.yaml", "-o", weak, "--epochs", "3", "--device", "cpu", "--quiet").exit_code == 0
    job = prepare(digits_dir / "class.yaml", weak, device="cpu")
    test = job.splits.test
    kept = test.targets != 3

    def remaining_acc(model) -> float:
        with torch.no_grad():
            return float((model(test.x[kept]).argmax(1) == test.targets[kept]).float().mean())

    capped, _ = run_method("rfa", job.context(), parse_params("rfa", {"agreement_patience": None}))
    out, _ = run_method("rfa", job.context(), parse_params("rfa", {}))
    assert capped.info["stop_reason"] == "epochs"  # the 99 % agreement never came
    assert out.info["stop_reason"] == "plateau" and out.info["steps"] * 3 <= capped.info["steps"]
    assert out.info["retain_agreement"] < 0.99
    forget = job.splits.forget
    with torch.no_grad():
        assert (out.model(forget.x).argmax(1) == forget.targets).sum() == 0  # the forget target still holds
    assert remaining_acc(out.model) >= remaining_acc(job.original) - 0.01
