"""LoRA plumbing through peft: choose layers, inject adapters, read the residual (bypass) branch, merge.

peft's LoRA layer computes  y = W x + scaling * B(A(x)): `W x` is the frozen
pre-trained feature, `scaling * B(A(x))` the residual feature that RFA trains.
"""

from __future__ import annotations

import copy
import re
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


def check_target_spec(targets: Union[str, list[str]]) -> Union[str, list[str]]:
    """Reject a malformed layer spec when parameters are read (exit 2), not when training starts."""
    specs = [targets] if isinstance(targets, str) else list(targets)
    if not specs:
        raise ValueError("target_layers is empty; give 'all', 'head', 'last:N' or layer names")
    for t in specs:
        if not isinstance(t, str) or not t:
            raise ValueError("target_layers entries must be non-empty layer names or regular expressions")
        m = re.fullmatch(r"last:(-?\d+)", t)
        if m:
            if int(m.group(1)) < 1:
                raise ValueError(f"target_layers '{t}': N must be at least 1 (last:1 is the head)")
            continue
        if t.startswith("last:"):
            raise ValueError(f"target_layers '{t}': expected last:N with N a whole number")
        try:
            re.compile(t)
        except re.error as e:
            raise ValueError(f"target_layers '{t}' is not a valid regular expression ({e}); give layer names or regexes") from None
    return targets


TargetLayers = Annotated[Union[str, list[str]], AfterValidator(check_target_spec)]


def select_layers(model: nn.Module, targets: str | Sequence[str]) -> list[str]:
    """Resolve a target spec: 'all', 'head' (last layer), 'last:N' (last N layers), or explicit names/regexes."""
    capable = lora_capable_layers(model)
    if not capable:
        raise MethodError("the model has no Linear or Conv2d layer that LoRA can adapt; use a method that edits weights directly")
    if isinstance(targets, str):
        if targets == "all":
            return capable
        if targets == "head":
            return capable[-1:]
        m = re.fullmatch(r"last:(\d+)", targets)
        if m:
            if int(m.group(1)) < 1:
                raise MethodError(f"target_layers '{targets}': N must be at least 1")
            return capable[-int(m.group(1)):]
        targets = [targets]
    chosen = [n for n in capable if any(n == t or re.fullmatch(t, n) for t in targets)]
    if not chosen:
        raise MethodError(f"target_layers {list(targets)} match no adaptable layer; adaptable layers are: {', '.join(capable[:12])}{' ...' if len(capable) > 12 else ''}")
    return chosen


def inject(model: nn.Module, layers: list[str], rank: int, alpha: float):
    """A PeftModel wrapping a copy of `model` with LoRA on exactly `layers` (B = 0, so outputs are unchanged)."""
    from peft import LoraConfig, get_peft_model

    pattern = "^(" + "|".join(re.escape(n) for n in layers) + ")$"
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=pattern, bias="none")
    return get_peft_model(copy.deepcopy(model), config)


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
