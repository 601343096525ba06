"""LoRA plumbing through peft: choose layers, inject adapters, read the residual (bypass) branch, merge.

peft's LoRA layer computes  y = W x + scaling * B(A(x)): `W x` is the frozen
pre-trained feature, `scaling * B(A(x))` the residual feature that RFA trains.
"""

from __future__ import annotations

import copy
import re
import warnings
from contextlib import contextmanager
from typing import Annotated, Iterator, Optional, Sequence, Union

import torch
from pydantic import AfterValidator
from torch import nn

from .errors import MethodError

ADAPTER_NAME = "default"


def lora_capable_layers(model: nn.Module) -> list[str]:
    """Linear and (non-grouped) Conv2d layers whose weight the forward pass really uses.

    Excluded: grouped/depthwise convolutions, and projections owned by nn.MultiheadAttention
    (it reads their weights directly, so an adapter there would be silently ignored).
    """
    owned_by_mha = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            owned_by_mha.update(f"{name}.{child}" if name else child for child, _ in m.named_children())
    names = []
    for name, m in model.named_modules():
        if not name or name in owned_by_mha:
            continue
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1):
            names.append(name)
    return names


# Layer-selection keywords (target_layers), alone or in a list with names/regexes: the union is adapted.
#   all          every adaptable layer                 head        the last adaptable layer (the classifier)
#   last:N       the last N adaptable layers           blocks:N    every adaptable layer of the last N transformer blocks
#   attention    attention projections (q, k, v, out)  mlp         the other adaptable layers of transformer blocks
#   auto         the measured default of the model's family (default_targets)
KEYWORDS = ("all", "head", "attention", "mlp", "auto")


def check_target_spec(targets: Union[str, list[str]]) -> Union[str, list[str]]:
    """Reject a malformed layer spec when parameters are read (exit 2), not when training starts."""
    specs = [targets] if isinstance(targets, str) else list(targets)
    if not specs:
        raise ValueError("target_layers is empty; give 'auto', 'all', 'head', 'attention', 'mlp', 'last:N', 'blocks:N' or layer names")
    for t in specs:
        if not isinstance(t, str) or not t:
            raise ValueError("target_layers entries must be non-empty layer names or regular expressions")
        m = re.fullmatch(r"(last|blocks):(-?\d+)", t)
        if m:
            if int(m.group(2)) < 1:
                raise ValueError(f"target_layers '{t}': N must be at least 1" + (" (last:1 is the head)" if m.group(1) == "last" else ""))
            continue
        if t.startswith(("last:", "blocks:")):
            raise ValueError(f"target_layers '{t}': expected {t.split(':')[0]}:N with N a whole number")
        try:
            re.compile(t)
        except re.error as e:
            raise ValueError(f"target_layers '{t}' is not a valid regular expression ({e}); give layer names or regexes") from None
    return targets


TargetLayers = Annotated[Union[str, list[str]], AfterValidator(check_target_spec)]


def _is_attention(module: nn.Module) -> bool:
    """An attention module, by its class name: transformers' ViTAttention / ViTSelfAttention / ..., timm's Attention."""
    return "Attention" in type(module).__name__


def transformer_blocks(model: nn.Module) -> list[str]:
    """Names of the model's transformer blocks, in order: for each attention module, its nearest ancestor that is an item
    of a ModuleList or Sequential (transformers' `vit.layers.3`, timm's `blocks.3`, torchvision's `encoder.layers.encoder_layer_3`)."""
    modules = dict(model.named_modules())
    blocks: dict[str, None] = {}
    for name, m in modules.items():
        if not name or not _is_attention(m):
            continue
        parts = name.split(".")
        for i in range(len(parts) - 1, 0, -1):
            if isinstance(modules.get(".".join(parts[:i])), (nn.ModuleList, nn.Sequential)):
                blocks[".".join(parts[:i + 1])] = None
                break
    return [b for b in blocks if not any(b.startswith(o + ".") for o in blocks)]  # outermost only


def attention_layers(model: nn.Module, capable: Optional[list[str]] = None) -> list[str]:
    """Adaptable layers inside an attention module: the query/key/value and output projections (timm: qkv, proj)."""
    capable = lora_capable_layers(model) if capable is None else capable
    inside = [name for name, m in model.named_modules() if name and _is_attention(m)]
    return [n for n in capable if any(n.startswith(a + ".") for a in inside)]


def family(model: nn.Module) -> str:
    """'transformer' (attention blocks), 'conv' (Conv2d layers) or 'mlp': what `auto` targets depend on."""
    if transformer_blocks(model):
        return "transformer"
    return "conv" if any(isinstance(m, nn.Conv2d) for m in model.modules()) else "mlp"


# The measured default of each family (docs/rfa.md, "Which layers to adapt"); a spec that selects nothing falls back to 'all'.
# transformer: attention projections only, the one selection on the pre-trained ViT (benchmarks/pretrained_digits.py) that
# forgot on every seed in both scenarios, with the lowest sample-unlearning Avg Gap of the selections (class: within noise).
# conv, mlp: every layer, the only setting that passed every target of the digits quality bar (docs/rfa.md, row 1).
DEFAULT_TARGETS: dict[str, Union[str, list[str]]] = {"transformer": "attention", "conv": "all", "mlp": "all"}


def default_targets(model: nn.Module) -> Union[str, list[str]]:
    """The target_layers spec `auto` stands for on this model."""
    return DEFAULT_TARGETS[family(model)]


def _select_one(model: nn.Module, capable: list[str], spec: str) -> list[str]:
    if spec == "all":
        return capable
    if spec == "head":
        return capable[-1:]
    if spec == "auto":
        try:
            return select_layers(model, default_targets(model))
        except MethodError:  # e.g. attention projections owned by nn.MultiheadAttention, which LoRA cannot adapt
            return capable
    if spec == "attention":
        return attention_layers(model, capable)
    m = re.fullmatch(r"(last|blocks):(\d+)", spec)
    if m and m.group(1) == "last":
        return capable[-int(m.group(2)):] if int(m.group(2)) >= 1 else []
    if spec == "mlp" or m:
        blocks = transformer_blocks(model)
        if m:
            blocks = blocks[-int(m.group(2)):] if int(m.group(2)) >= 1 else []
        attention = set(attention_layers(model, capable)) if spec == "mlp" else set()
        return [n for n in capable if n not in attention and any(n.startswith(b + ".") for b in blocks)]
    return [n for n in capable if n == spec or re.fullmatch(spec, n)]


def select_layers(model: nn.Module, targets: str | Sequence[str]) -> list[str]:
    """Resolve a target spec, a keyword (KEYWORDS, 'last:N', 'blocks:N') or layer names/regexes, or a list of them
    (their union), to adaptable layer names in model order."""
    capable = lora_capable_layers(model)
    if not capable:
        raise MethodError("the model has no Linear or Conv2d layer that LoRA can adapt; use a method that edits weights directly")
    specs = [targets] if isinstance(targets, str) else list(targets)
    for t in specs:
        if re.fullmatch(r"(last|blocks):\d+", t) and int(t.split(":")[1]) < 1:
            raise MethodError(f"target_layers '{t}': N must be at least 1")
    picked = {n for t in specs for n in _select_one(model, capable, t)}
    chosen = [n for n in capable if n in picked]
    if not chosen:
        what = " (the model has no transformer blocks)" if any(t in ("attention", "mlp") or t.startswith("blocks:") for t in specs) else ""
        raise MethodError(f"target_layers {specs if len(specs) > 1 else specs[0]!r} match no adaptable layer{what}; adaptable layers are: "
                          f"{', '.join(capable[:12])}{' ...' if len(capable) > 12 else ''}")
    return chosen


def inject(model: nn.Module, layers: list[str], rank: int, alpha: float):
    """A PeftModel wrapping a copy of `model` with LoRA on exactly `layers` (B = 0, so outputs are unchanged)."""
    from peft import LoraConfig, get_peft_model

    pattern = "^(" + "|".join(re.escape(n) for n in layers) + ")$"
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=pattern, bias="none")
    with quiet_peft():
        return get_peft_model(copy.deepcopy(model), config)


@contextmanager
def quiet_peft() -> Iterator[None]:
    """peft reads transformers models' deprecated `is_gradient_checkpointing` (a FutureWarning on every wrap): not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def lora_layers(peft_model: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)]


@contextmanager
def capture_residuals(peft_model: nn.Module, layers: Optional[list[tuple[str, nn.Module]]] = None) -> Iterator[dict[str, torch.Tensor]]:
    """Record each adapted layer's residual feature, scaling * B(A(x)), during forward passes.

    `layers` (from lora_layers) saves walking the module tree on every call in a training loop.
    """
    store: dict[str, torch.Tensor] = {}
    handles = []
    for name, layer in (layers if layers is not None else lora_layers(peft_model)):
        scaling = layer.scaling[ADAPTER_NAME]

        def hook(_m, _inp, out, name=name, scaling=scaling):
            store[name] = out * scaling

        handles.append(layer.lora_B[ADAPTER_NAME].register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture_outputs(model: nn.Module, layers: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named layers of a plain model."""
    store: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: store.__setitem__(n, out)) for n in layers]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def merged_copy(peft_model: nn.Module) -> nn.Module:
    """The plain architecture with adapters folded into the weights (the PeftModel is left as it is)."""
    return copy.deepcopy(peft_model).merge_and_unload()


def adapter_parameters(peft_model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in peft_model.named_parameters() if "lora_" in n]
