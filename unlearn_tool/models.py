"""Build the architecture a request names: builtin small nets, torchvision classifiers, or user code."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import ModelError
from .request import ModelSpec


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
    kwargs.setdefault("weights", None)  # never download weights: the checkpoint supplies them
    return torchvision.models.get_model(name, **kwargs)


def _python_model(spec: str, kwargs: dict, base_dir: Path) -> nn.Module:
    _, module_name, attr = spec.split(":")
    added = str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelError(f"model.arch: cannot import module '{module_name}' ({e}); put it beside the request or on PYTHONPATH") from None
    finally:
        if added:
            sys.path.remove(str(base_dir))
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"model.arch: module '{module_name}' has no callable '{attr}'; name a class or function that returns an nn.Module")
    return factory(**kwargs)


def build_model(spec: ModelSpec, base_dir: Path = Path(".")) -> nn.Module:
    """A freshly initialised model of the request's architecture (random weights)."""
    kind, _, rest = spec.arch.partition(":")
    try:
        if kind == "builtin":
            if rest not in BUILTIN:
                raise ModelError(f"model.arch: unknown builtin '{rest}'; builtins are {', '.join(BUILTIN)}")
            model = BUILTIN[rest](**spec.kwargs)
        elif kind == "torchvision":
            model = _torchvision_model(rest, spec.kwargs)
        else:
            model = _python_model(spec.arch, spec.kwargs, base_dir)
    except ModelError:
        raise
    except TypeError as e:
        raise ModelError(f"model.kwargs: {spec.arch} rejects the keyword arguments ({e}); fix model.kwargs") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.arch: {spec.arch} returned {type(model).__name__}, not a torch nn.Module")
    return model


def num_classes_of(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Number of classes = width of the model's output on one input of the data's shape."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape))
    except Exception as e:  # noqa: BLE001 - any failure here is a data/arch mismatch
        raise ModelError(f"model.arch: the model cannot run on inputs of shape {input_shape} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); match the architecture to the data (kwargs, preprocess.resize)") from None
    finally:
        model.train(was_training)
    if out.dim() != 2:
        raise ModelError(f"model.arch: the model outputs shape {tuple(out.shape)}; a classifier must output (batch, classes) logits")
    return int(out.shape[1])


def adaptable_layer_names(model: nn.Module) -> list[str]:
    """Names of the Linear and Conv2d layers (those LoRA can adapt), in module order."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and name]
