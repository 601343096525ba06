"""Build the architecture a request names: builtin small nets, torchvision classifiers, or user code."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import ModelError
from .request import ModelSpec
from .usercode import CodePolicy, import_model_module, one_line as _one_line  # noqa: F401 (CodePolicy re-exported)


class MLP(nn.Module):
    """A small multi-layer perceptron over flattened images (8x8 digits by default)."""

    def __init__(self, in_features: int = 64, hidden: tuple[int, ...] | list[int] = (128, 64), num_classes: int = 10):
        super().__init__()
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        width = in_features
        for i, h in enumerate(hidden):
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.flatten(x)))


class SmallCNN(nn.Module):
    """A small CNN for 8x8 digits or 28x28 / 32x32 images; global pooling makes it size-agnostic."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, 2 * width)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.conv3(x))
        x = self.gap(x).flatten(1)
        return self.head(torch.relu(self.fc(x)))


BUILTIN: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "small_cnn": SmallCNN}


def _torchvision_model(name: str, kwargs: dict) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise ModelError(f"model.arch: torchvision has no classification model '{name}'; e.g. resnet18, mobilenet_v3_small, vit_b_16")
    kwargs = dict(kwargs)
    for key in ("weights", "weights_backbone"):
        if kwargs.get(key) is not None:  # would download a pickled .pth file; the checkpoint supplies the weights
            raise ModelError(f"model.kwargs.{key}: pre-trained weights are never downloaded (the checkpoint supplies them); drop {key}")
    kwargs["weights"] = None
    return _call_factory(lambda **kw: torchvision.models.get_model(name, **kw), kwargs, f"torchvision:{name}")


def _python_model(spec: str, kwargs: dict, base_dir: Path, policy: CodePolicy) -> nn.Module:
    _, module_name, attr = spec.split(":")
    module = import_model_module(module_name, base_dir, policy)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"model.arch: module '{module_name}' has no callable '{attr}'; name a class or function that returns an nn.Module")
    return _call_factory(factory, kwargs, spec)


def _call_factory(factory: Callable[..., Any], kwargs: dict, arch: str) -> Any:
    try:
        return factory(**kwargs)
    except TypeError as e:
        raise ModelError(f"model.kwargs: {arch} rejects the keyword arguments ({_one_line(e)}); fix model.kwargs") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the constructor is the user's (or a library's) code
        raise ModelError(f"model.arch: building {arch} failed ({type(e).__name__}: {_one_line(e)}); fix the model code or model.kwargs") from None


def builtin_kwargs(kwargs: dict) -> dict:
    """Builtin models take `num_outputs` as another name for `num_classes` (a regressor's output width)."""
    if "num_outputs" not in kwargs:
        return kwargs
    if "num_classes" in kwargs:
        raise ModelError("model.kwargs: give num_outputs or num_classes, not both (num_outputs is the regression name of the same width)")
    out = dict(kwargs)
    out["num_classes"] = out.pop("num_outputs")
    return out


def build_model(spec: ModelSpec, base_dir: Path = Path("."), policy: CodePolicy = CodePolicy()) -> nn.Module:
    """A freshly initialised model of the request's architecture (random weights)."""
    kind, _, rest = spec.arch.partition(":")
    if kind == "builtin":
        if rest not in BUILTIN:
            raise ModelError(f"model.arch: unknown builtin '{rest}'; builtins are {', '.join(BUILTIN)}")
        model = _call_factory(BUILTIN[rest], builtin_kwargs(spec.kwargs), spec.arch)
    elif kind == "torchvision":
        model = _torchvision_model(rest, spec.kwargs)
    else:
        model = _python_model(spec.arch, spec.kwargs, base_dir, policy)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.arch: {spec.arch} returned {type(model).__name__}, not a torch nn.Module; return the model itself")
    return model


def num_outputs_of(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Width of the model's output on one input of the data's shape (the number of classes, for a classifier)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape))
    except (Exception, SystemExit) as e:  # noqa: BLE001 - any failure here is a data/arch mismatch
        raise ModelError(f"model.arch: the model cannot run on inputs of shape {input_shape} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); match the architecture to the data (kwargs, preprocess.resize)") from None
    finally:
        model.train(was_training)
    if out.dim() != 2:
        raise ModelError(f"model.arch: the model outputs shape {tuple(out.shape)}; a classifier must output (batch, classes) logits")
    return int(out.shape[1])
