"""Build the architecture a request names: builtin small nets, torchvision, Hugging Face or timm classifiers, or user code.

Every model is built with random weights (the checkpoint supplies them): nothing is downloaded, nothing unpickled.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from .checkpoint import HF_CONFIG
from .errors import ModelError, shown
from .interrupts import raise_interrupt_behind
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
    with warnings.catch_warnings():  # GoogLeNet / Inception v3: a notice about torchvision's future init, not the user's concern
        warnings.filterwarnings("ignore", message="The default weight initialization", category=FutureWarning)
        return _call_factory(lambda **kw: torchvision.models.get_model(name, **kw), kwargs, f"torchvision:{name}")


# ---------------------------------------------------------------- Hugging Face transformers (hf:<folder>)

HF_OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def offline_hub() -> None:
    """Tell huggingface_hub and transformers never to reach the network (we build from local configs only)."""
    for name in HF_OFFLINE:
        os.environ[name] = "1"


def hf_folder(spec: ModelSpec, base_dir: Path) -> Optional[Path]:
    """The save_pretrained folder an `hf:<folder>` source names (relative to the request), or None for other sources."""
    kind, _, rest = spec.arch.partition(":")
    if kind != "hf":
        return None
    path = Path(rest).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


class _KeyRenamer:
    """A state_dict hook renaming exact keys (below the module's prefix); picklable and deep-copyable."""

    def __init__(self, mapping: dict[str, str]):
        self.mapping = mapping

    def __call__(self, module: nn.Module, state_dict: dict, prefix: str, *_: Any) -> None:
        moved = {prefix + new: state_dict.pop(prefix + old) for old, new in self.mapping.items() if prefix + old in state_dict}
        state_dict.update(moved)


_LOGITS_CLASSES: dict[type, type] = {}


def _logits_class(base: type) -> type:
    """`base` (a transformers image classifier) whose forward returns the logits tensor instead of an output object.

    It keeps the base's name (transformers looks some behaviour up by class name) and module tree, so module names,
    parameter names and LoRA targets are transformers' own.
    """
    cls = _LOGITS_CLASSES.get(base)
    if cls is None:
        def forward(self: nn.Module, pixel_values: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            out = base.forward(self, pixel_values, *args, **kwargs)
            return out.logits if hasattr(out, "logits") else out[0]

        cls = type(base.__name__, (base,), {"forward": forward, "__module__": __name__, "__qualname__": base.__qualname__,
                                            "__doc__": f"{base.__name__} returning logits (unlearn_tool.models)."})
        _LOGITS_CLASSES[base] = cls
    return cls


def _saved_names(model: nn.Module, arch: str) -> dict[str, str]:
    """In-memory state_dict key -> the key `save_pretrained` writes, where they differ.

    transformers >= 5 renames some weights when it saves (and back when it loads); a checkpoint from
    save_pretrained holds the saved names. Only one-to-one renamings are supported.
    """
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError as e:  # transformers 4: the saved names are the state_dict's (unless a signal hides behind it)
        raise_interrupt_behind(e)
        return {}
    state = model.state_dict()
    saved = revert_weight_conversion(model, dict(state))
    by_id = {id(t): k for k, t in state.items()}
    names = {by_id.get(id(t)): k for k, t in saved.items()}
    if None in names or len(names) != len(state):
        raise ModelError(f"model.arch: {arch}: transformers saves this model's weights in a converted layout (not one tensor per "
                         "weight), which this tool cannot map; use a model whose save_pretrained keys are its parameter names")
    return {k: v for k, v in names.items() if k != v}  # type: ignore[misc]


MAX_HF_LABELS = 1_000_000  # transformers builds an id2label entry per label: 1e8 ran out of memory


def hf_config(spec: ModelSpec, base_dir: Path) -> Any:
    """The transformers config an hf:<folder> model is built from: the folder's config.json, checked, with model.kwargs
    applied as from_pretrained applies its overrides (num_labels rebuilds id2label)."""
    folder = hf_folder(spec, base_dir)
    assert folder is not None
    arch, fix = spec.arch, "give a folder written by save_pretrained (config.json and model.safetensors)"
    if not folder.is_dir():
        raise ModelError(f"model.arch: {arch}: {folder} is not a folder; {fix}")
    if not (folder / HF_CONFIG).is_file():
        raise ModelError(f"model.arch: {arch}: {folder} has no {HF_CONFIG}; {fix}")
    try:
        raw = json.loads((folder / HF_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"model.arch: {arch}: {folder / HF_CONFIG} is not readable JSON ({type(e).__name__}); {fix}") from None
    if isinstance(raw, dict) and "auto_map" in raw:
        raise ModelError(f"model.arch: {arch}: {folder / HF_CONFIG} needs custom model code (auto_map), which this tool never runs; "
                         "give a model class built into transformers")
    offline_hub()
    from transformers import AutoConfig

    try:  # no kwargs here: from_pretrained would take loader options among them (subfolder: another config.json, unchecked)
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - bad JSON, unknown model_type, remote code: all the user's file
        raise ModelError(f"model.arch: {arch}: {folder / HF_CONFIG} cannot be read ({type(e).__name__}: {_one_line(e)}); {fix}") from None
    def settable_field(key: str) -> bool:  # a config field, not a method or a read-only property (num_labels has a setter)
        on_class = getattr(type(config), key, None)
        return (not key.startswith("_") and hasattr(config, key) and not callable(on_class)
                and (not isinstance(on_class, property) or key == "num_labels"))

    unused = [k for k in spec.kwargs if not settable_field(k)]
    if unused:
        raise ModelError(f"model.kwargs: {', '.join(sorted(unused))} is not a field of the '{config.model_type}' config in {folder}; "
                         "model.kwargs override config.json fields (e.g. num_labels)")
    for key in ("id2label", "label2id"):
        if key in spec.kwargs and not isinstance(spec.kwargs[key], dict):
            raise ModelError(f"model.kwargs.{key}: give a mapping (label index to name), not {type(spec.kwargs[key]).__name__}")
    labels = spec.kwargs.get("num_labels")
    if isinstance(labels, int) and not isinstance(labels, bool) and labels > MAX_HF_LABELS:
        raise ModelError(f"model.kwargs.num_labels: {labels} is more than {MAX_HF_LABELS:,} classes; give the number of classes")
    for key, value in spec.kwargs.items():  # as from_pretrained applies its overrides (num_labels rebuilds id2label)
        try:
            setattr(config, key, value)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a value the config's own setter refuses
            raise ModelError(f"model.kwargs.{key}: {value!r} is not accepted by the '{config.model_type}' config "
                             f"({type(e).__name__}: {_one_line(e)}); give a value of the field's type") from None
    if not isinstance(config.num_labels, int) or config.num_labels < 1:  # transformers would put an Identity where the head is
        raise ModelError(f"model.arch: {arch}: num_labels is {config.num_labels} (config.json or model.kwargs); an image classifier "
                         "needs at least 1 output: set model.kwargs num_labels to the number of classes")
    return config


def hf_output_config(spec: ModelSpec, base_dir: Path) -> Optional[bytes]:
    """config.json for a save_pretrained folder output: None (copy the source's bytes) when model.kwargs are empty, else
    the config the model was built with, so from_pretrained on the output builds the same head (num_labels)."""
    return hf_config(spec, base_dir).to_json_string().encode("utf-8") if spec.kwargs else None


def _hf_model(spec: ModelSpec, base_dir: Path) -> nn.Module:
    config, arch, folder = hf_config(spec, base_dir), spec.arch, hf_folder(spec, base_dir)
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING  # after offline_hub()

    base = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING.get(type(config), None)
    if base is None:
        raise ModelError(f"model.arch: {arch}: {folder / HF_CONFIG} describes a '{config.model_type}' model, which is not an image "
                         "classifier; give an AutoModelForImageClassification model (vit, deit, convnext, resnet, swin, ...)")
    model = _call_factory(lambda: _logits_class(base)(config), {}, arch)
    renames = _saved_names(model, arch)
    if renames:  # state_dict and load_state_dict speak the saved names, so checkpoints and outputs are save_pretrained's
        post_hook = getattr(model, "register_state_dict_post_hook", None) or model._register_state_dict_hook  # torch < 2.5
        post_hook(_KeyRenamer(renames))
        model.register_load_state_dict_pre_hook(_KeyRenamer({v: k for k, v in renames.items()}))
    return model


# ---------------------------------------------------------------- timm (timm:<name>, optional extra)

TIMM_REFUSED = ("checkpoint_path", "pretrained_cfg_overlay", "pretrained_cfg")  # would read (unpickle) or fetch weights


def _timm_model(name: str, kwargs: dict, arch: str) -> nn.Module:
    offline_hub()
    try:
        import timm
    except ImportError as e:
        raise_interrupt_behind(e)
        raise ModelError(f"model.arch: {arch} needs the optional timm package; install it with pip install 'unlearn-tool[timm]'") from None
    kwargs = dict(kwargs)
    if kwargs.pop("pretrained", False) is not False:
        raise ModelError("model.kwargs.pretrained: pre-trained weights are never downloaded (the checkpoint supplies them); drop pretrained")
    for key in TIMM_REFUSED:
        if key in kwargs:
            raise ModelError(f"model.kwargs.{key}: weights come only from the checkpoint you give (never fetched or unpickled); drop {key}")
    if not timm.is_model(name):
        raise ModelError(f"model.arch: timm has no model '{name}'; e.g. resnet18, vit_tiny_patch16_224, convnext_atto (timm.list_models())")
    return _call_factory(lambda **kw: timm.create_model(name, pretrained=False, **kw), kwargs, arch)


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


MAX_BUILTIN_WIDTH = 1_000_000  # any width, features or outputs of a builtin model: a typo, not a model, beyond it
BUILTIN_INT_ARGS = {"mlp": ("in_features", "num_classes"), "small_cnn": ("in_channels", "num_classes", "width")}


def builtin_kwargs(kwargs: dict, name: str = "mlp") -> dict:
    """The builtin's constructor arguments, checked: whole positive numbers (mlp's `hidden` a list of them, [] for none).
    `num_outputs` is another name for `num_classes` (a regressor's output width). Before, `hidden: 32` failed inside
    the constructor ("'int' object is not iterable") and `hidden: [0]` built a zero-width layer with a raw warning."""
    if "num_outputs" in kwargs:
        if "num_classes" in kwargs:
            raise ModelError("model.kwargs: give num_outputs or num_classes, not both (num_outputs is the regression name of the same width)")
        kwargs = {("num_classes" if k == "num_outputs" else k): v for k, v in kwargs.items()}
    known = BUILTIN_INT_ARGS.get(name, ()) + (("hidden",) if name == "mlp" else ())
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ModelError(f"model.kwargs: builtin:{name} takes no {', '.join(unknown)}; its arguments are {', '.join(known)}")

    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_BUILTIN_WIDTH

    for key in known:
        if key not in kwargs:
            continue
        value = kwargs[key]
        if key == "hidden":
            if not isinstance(value, (list, tuple)) or not all(whole(h) for h in value):
                raise ModelError(f"model.kwargs.hidden: {shown(value)} is not a list of layer widths; give e.g. [128, 64] "
                                 f"(whole numbers from 1 to {MAX_BUILTIN_WIDTH:,}; [] for no hidden layer)")
        elif isinstance(value, float) and value.is_integer() and whole(int(value)):  # 10.0, as the schema allows
            kwargs = {**kwargs, key: int(value)}
        elif not whole(value):
            raise ModelError(f"model.kwargs.{key}: {shown(value)} is not a whole number from 1 to {MAX_BUILTIN_WIDTH:,}")
    return kwargs


def build_model(spec: ModelSpec, base_dir: Path = Path("."), policy: CodePolicy = CodePolicy()) -> nn.Module:
    """A freshly initialised model of the request's architecture (random weights)."""
    kind, _, rest = spec.arch.partition(":")
    if kind == "builtin":
        if rest not in BUILTIN:
            raise ModelError(f"model.arch: unknown builtin '{rest}'; builtins are {', '.join(BUILTIN)}")
        model = _call_factory(BUILTIN[rest], builtin_kwargs(spec.kwargs, rest), spec.arch)
    elif kind == "torchvision":
        model = _torchvision_model(rest, spec.kwargs)
    elif kind == "hf":
        model = _hf_model(spec, base_dir)
    elif kind == "timm":
        model = _timm_model(rest, spec.kwargs, spec.arch)
    else:
        model = _python_model(spec.arch, spec.kwargs, base_dir, policy)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.arch: {spec.arch} returned {type(model).__name__}, not a torch nn.Module; return the model itself")
    if not isinstance(model, torch.jit.ScriptModule):  # which takes no hooks (a scripted forward returns what it declares)
        model.register_forward_hook(logits_only)
    return model


def logits_only(module: nn.Module, args: Any, output: Any) -> Any:
    """The model's output as the (batch, outputs) tensor every method and the audit take. torchvision's GoogLeNet and
    Inception v3 return their logits with auxiliary ones in training mode (GoogLeNetOutputs), and a model may return
    {"logits": ...}: their logits are used. Anything else is named; it crashed as "unexpected" mid-run."""
    if isinstance(output, torch.Tensor):
        return None
    logits = output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise ModelError(f"model.arch: the model's forward returns {type(output).__name__}, not a tensor of outputs; return the "
                     "(batch, outputs) logits tensor, or an object whose .logits (or key 'logits') holds it")


def _mismatch_fix(error: str, input_shape: tuple[int, ...] = (), arch: str = "") -> str:
    """The fix for a model that cannot run on the data: a mismatch at the model's first layer (a channel count the data
    has, or the flattened input's width) names both sides and the ways out that fit the architecture; any other the
    generic fix."""
    import math
    import re

    channels = re.search(r"to have (\d+) channels, but got (\d+) channels", error)
    if channels is not None and len(input_shape) == 3 and int(channels.group(2)) == input_shape[0]:  # else inside the model
        wants, has = (int(n) for n in channels.groups())
        if wants > has:
            data = "tensors: repeat the channel when writing them; image files: drop preprocess.grayscale"
        elif wants == 1:
            data = "image files: preprocess.grayscale: true; tensors: convert them to grey when writing them"
        else:
            data = "convert them when writing them"
        kind = arch.partition(":")[0]
        if arch == "builtin:small_cnn":
            model = f"model.kwargs in_channels: {has}"
        elif kind == "timm":
            model = f"model.kwargs in_chans: {has}"
        elif kind == "torchvision":
            model = f"torchvision models take no channel count; timm: models take model.kwargs in_chans: {has}"
        else:
            model = f"one whose first layer takes {has}"
        return f"the model takes {wants} input channel(s) and the data has {has}: give data with {wants} ({data}) or a model that takes {has} ({model})"
    widths = re.search(r"mat1 and mat2 shapes cannot be multiplied \(\d+x(\d+) and (\d+)x\d+\)", error)
    if widths is not None and int(widths.group(1)) == math.prod(input_shape):  # the first Linear layer sees the flattened input
        has, wants = widths.groups()
        return (f"the model's first layer takes {wants} input features and the data has {has} per sample: builtin:mlp takes "
                f"kwargs {{in_features: {has}}}; other models: match the architecture to the data")
    return "match the architecture to the data (kwargs, preprocess.resize)"


def _kwarg_in_error(error: str, kwargs: dict) -> Optional[str]:
    """The model.kwargs key whose (text) value the error quotes: a library stores a kwarg as given and fails on it only
    when the model runs (timm's drop_rate: x, "could not convert string to float: 'x'"), which read as a shape problem."""
    for key, value in kwargs.items():
        if isinstance(value, str) and value and (repr(value) in error or json.dumps(value) in error):
            return key
    return None


def num_outputs_of(model: nn.Module, input_shape: tuple[int, ...], arch: str = "", kwargs: Optional[dict] = None) -> int:
    """Width of the model's output on one input of the data's shape (the number of classes, for a classifier)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape))
    except ModelError:  # logits_only's: the output's kind, not a mismatch
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001 - any failure here is a data/arch mismatch
        first = str(e).splitlines()[0] if str(e) else ""
        key = _kwarg_in_error(str(e), kwargs or {})
        if key is not None:
            raise ModelError(f"model.kwargs.{key}: {shown(kwargs[key], 40)} is not a value {arch or 'the model'} can use: the model was "
                             f"built, and failed when it ran ({type(e).__name__}: {first[:160]}); give model.kwargs.{key} a value of "
                             "the type the model expects (a number, for a rate)") from None
        raise ModelError(f"model.arch: the model cannot run on inputs of shape {input_shape} ({type(e).__name__}: {first[:160]}); "
                         f"{_mismatch_fix(first, input_shape, arch)}") from None
    finally:
        model.train(was_training)
    if out.dim() != 2:
        raise ModelError(f"model.arch: the model outputs shape {tuple(out.shape)}; a classifier must output (batch, classes) logits")
    return int(out.shape[1])
