"""Build the architecture a request names: builtin small nets, torchvision classifiers, or user code."""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Optional

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
    for key in ("weights", "weights_backbone"):
        if kwargs.get(key) is not None:  # would download a pickled .pth file; the checkpoint supplies the weights
            raise ModelError(f"model.kwargs.{key}: pre-trained weights are never downloaded (the checkpoint supplies them); drop {key}")
    kwargs["weights"] = None
    return _call_factory(lambda **kw: torchvision.models.get_model(name, **kw), kwargs, f"torchvision:{name}")


@dataclass(frozen=True)
class CodePolicy:
    """Which `python:` model code a request may load.

    By default only the user's own code: a module file beside the request, or in a folder
    given with --code-path. Standard-library and installed modules (os, subprocess, builtins,
    ...) are refused unless the user opts in with --trust-code, as transformers does with
    trust_remote_code: a request from someone else must not be able to run arbitrary code.
    """

    code_paths: tuple[Path, ...] = ()
    trust_code: bool = False


_LOADED: dict[tuple[str, float], ModuleType] = {}  # (file, mtime) -> module: loaded once per process


def _locate(module_name: str, folders: list[Path]) -> Optional[tuple[Path, Path, bool]]:
    """(folder, file, is_package) of `module_name` found *only* in `folders` (dotted names: a package there)."""
    from importlib.machinery import PathFinder

    parts = module_name.split(".")
    for folder in folders:
        spec = PathFinder.find_spec(parts[0], [str(folder)])
        for part in parts[1:]:
            if spec is None or not spec.submodule_search_locations:
                spec = None
                break
            spec = PathFinder.find_spec(part, list(spec.submodule_search_locations))
        if spec is not None and spec.origin and spec.has_location:
            return folder, Path(spec.origin), spec.submodule_search_locations is not None
    return None


def _import_user_file(module_name: str, folder: Path) -> ModuleType:
    """Import the user's module from `folder` under a private name, so it never collides with (or is shadowed by)
    an installed module of the same name; its folder is on sys.path while it runs, for its own imports."""
    top = module_name.split(".")[0]
    top_spec = importlib.machinery.PathFinder.find_spec(top, [str(folder)])
    assert top_spec is not None and top_spec.origin is not None  # _locate found it
    origin = Path(top_spec.origin)
    key = (str(origin), origin.stat().st_mtime)
    private = "_unlearn_user_" + hashlib.sha1(str(origin).encode()).hexdigest()[:12] + "_" + top
    sys.path.insert(0, str(folder))
    try:
        module = _LOADED.get(key)
        if module is None:
            spec = importlib.util.spec_from_file_location(private, origin, submodule_search_locations=top_spec.submodule_search_locations)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[private] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(private, None)
                raise
            _LOADED[key] = module
        if "." in module_name:
            module = importlib.import_module(private + module_name[len(top):])
    finally:
        if str(folder) in sys.path:
            sys.path.remove(str(folder))
    return module


def _python_model(spec: str, kwargs: dict, base_dir: Path, policy: CodePolicy) -> nn.Module:
    _, module_name, attr = spec.split(":")
    folders = [Path(base_dir).resolve()] + [Path(p).expanduser().resolve() for p in policy.code_paths]
    try:
        found = _locate(module_name, folders)
        if found is not None:
            module = _import_user_file(module_name, found[0])
        elif policy.trust_code:
            added = [str(f) for f in folders if str(f) not in sys.path]
            sys.path[:0] = added
            try:
                module = importlib.import_module(module_name)
            finally:
                for f in added:
                    if f in sys.path:
                        sys.path.remove(f)
        else:
            raise ModelError(
                f"model.arch: python:{module_name} is not a module file beside the request ({base_dir}) or in a --code-path "
                "folder, and a request may only load your own model code; put the module there, pass --code-path DIR, "
                "or --trust-code to allow installed and standard-library modules")
    except ModelError:
        raise
    except ImportError as e:
        raise ModelError(f"model.arch: cannot import module '{module_name}' ({_one_line(e)}); put it beside the request or pass --code-path") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's module failed while importing (syntax error, raise, exit)
        raise ModelError(f"model.arch: importing '{module_name}' failed ({type(e).__name__}: {_one_line(e)}); fix the module") from None
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


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:200] if text else type(e).__name__)


def build_model(spec: ModelSpec, base_dir: Path = Path("."), policy: CodePolicy = CodePolicy()) -> nn.Module:
    """A freshly initialised model of the request's architecture (random weights)."""
    kind, _, rest = spec.arch.partition(":")
    if kind == "builtin":
        if rest not in BUILTIN:
            raise ModelError(f"model.arch: unknown builtin '{rest}'; builtins are {', '.join(BUILTIN)}")
        model = _call_factory(BUILTIN[rest], spec.kwargs, spec.arch)
    elif kind == "torchvision":
        model = _torchvision_model(rest, spec.kwargs)
    else:
        model = _python_model(spec.arch, spec.kwargs, base_dir, policy)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.arch: {spec.arch} returned {type(model).__name__}, not a torch nn.Module; return the model itself")
    return model


def num_classes_of(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Number of classes = width of the model's output on one input of the data's shape."""
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
