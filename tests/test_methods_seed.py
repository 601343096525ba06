"""Seed methods (issue 13): iau (+ the gradient-restriction training option), laf / laf+r, concept-poison.

Real computations on the session's digits MLP (conftest: seed 0, original forget/retain/test accuracy
0.993/0.997/0.967 for class 3; mean true-class confidence 0.970 on the 10% random forget set), plus a
torchvision ResNet-18 on small synthetic images. Figures in the comments were measured on 2 shared CPU
cores, one torch thread.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import invoke, random_indices, write_request
from unlearn_tool.data import LabelledData, Splits
from unlearn_tool.errors import MethodError
from unlearn_tool.evaluate import predict_logits
from unlearn_tool.methods import UnlearnContext, get_method, method_names, parse_params, run_method
from unlearn_tool.pipeline import utility
from unlearn_tool.regularizers import (
    checkpoint_regularizer,
    gradient_norm_penalty,
    regularized_loss,
    regularizer_fields,
    regularizer_metadata,
)
from unlearn_tool.training import TrainConfig, fit

SEED_METHODS = []


def run(name, job, ctx=None, **params):
    ctx = ctx or job.context()
    out, _ = run_method(name, ctx, parse_params(name, params))
    return out, utility(out.model, job.splits, job.device), ctx


def forget_confidence(model, job) -> float:
    logits, y = predict_logits(model, job.splits.forget, job.device)
    return float(logits.softmax(1).gather(1, y[:, None]).mean())


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- gradient restriction (training option)

def test_gradient_restriction_penalty_gradient_matches_finite_differences():
    """The double-backprop gradient of sum_tensors ||grad loss|| equals a central finite difference (float64)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])
    params = list(model.parameters())

    def total() -> torch.Tensor:
        return regularized_loss("gradient-restriction", 0.7, F.cross_entropy(model(x), y), params)

    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params)
    expected = loss + 0.7 * sum(g.norm() for g in grads)
    assert torch.allclose(total(), expected)
    model.zero_grad()
    total().backward()
    w = params[0]
    analytic = w.grad[1, 2].item()
    eps = 1e-6
    w.data[1, 2] += eps
    up = total().item()
    w.data[1, 2] -= 2 * eps
    down = total().item()
    w.data[1, 2] += eps
    assert analytic == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)
    # and the plain loss's gradient differs: the penalty term really is trained through
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert abs(w.grad[1, 2].item() - analytic) > 1e-4


def test_train_config_regularizer_fields_and_metadata():
    assert TrainConfig().regularizer is None and TrainConfig().regularizer_alpha is None  # default off
    cfg = TrainConfig(regularizer="gradient-restriction")
    assert cfg.regularizer_alpha == 0.005
    assert regularizer_metadata(cfg) == {"regularizer": "gradient-restriction", "regularizer_alpha": 0.005}
    assert regularizer_metadata(TrainConfig()) == {}
    with pytest.raises(ValueError, match="needs a regularizer"):
        TrainConfig(regularizer_alpha=0.1)
    with pytest.raises(ValueError):
        TrainConfig(regularizer="weight-noise")
    # what `unlearn train --regularizer NAME --param alpha=X` turns into
    assert regularizer_fields("gradient-restriction", {"alpha": "0.01"}) == {"regularizer": "gradient-restriction", "regularizer_alpha": 0.01}
    assert regularizer_fields(None) == {}
    for name, params, message in [("nope", {}, "unknown"), ("gradient-restriction", {"beta": 1}, "takes alpha"),
                                  ("gradient-restriction", {"alpha": 0}, "> 0"), (None, {"alpha": 1}, "needs --regularizer")]:
        with pytest.raises(ValueError, match=message):
            regularizer_fields(name, params)
    assert checkpoint_regularizer({}) is None
    assert checkpoint_regularizer({"unlearn.train_config": json.dumps(TrainConfig().model_dump())}) == {"regularizer": None, "regularizer_alpha": None}


def test_fit_with_gradient_restriction_takes_the_regularized_step():
    """One Adam step of fit() with the regularizer equals a hand-made step on loss + alpha * penalty, and differs from plain fit."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 1, 2, 2), torch.randint(0, 3, (8,))
    data = LabelledData.from_tensors(x, y)

    def fresh():
        torch.manual_seed(1)
        return nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))

    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.1, regularizer="gradient-restriction", regularizer_alpha=0.5)
    got = fit(fresh(), data, cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    manual = fresh()
    opt = torch.optim.Adam(manual.parameters(), lr=0.1)
    loss = F.cross_entropy(manual(x), y)
    (loss + 0.5 * gradient_norm_penalty(loss, manual.parameters())).backward()
    opt.step()
    plain = fit(fresh(), data, TrainConfig(epochs=1, batch_size=8, lr=0.1), torch.device("cpu"), torch.Generator().manual_seed(0))
    for a, b, c in zip(got.parameters(), manual.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b)
    assert any(not torch.allclose(a, c) for a, c in zip(got.parameters(), plain.parameters()))

