"""The method registry and the one interface every unlearning method implements.

Adding a method is three steps (docs/adding_a_method.md): write
`methods/<name>.py` with a pydantic `Params` model and a `run(ctx, params)`
function, end it with `register_method(...)`, import it in `methods/__init__.py`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from pydantic import ValidationError
from torch import nn

from ..data import LabelledData, Splits
from ..errors import MethodError, UnknownMethodError
from ..params import SaneParams, format_error


class MethodParams(SaneParams):
    """Base for method parameter models: unknown keys are errors, numbers finite and sane, a description per field."""


@dataclass
class UnlearnContext:
    """Everything a method may use. The original model is never modified: methods work on copies."""

    original: nn.Module  # trained weights, eval mode, on `device`; treat as read-only (the teacher)
    make_model: Callable[[], nn.Module]  # a fresh, randomly initialised model of the same architecture (on CPU)
    splits: Splits
    num_classes: int
    device: torch.device
    seed: int
    batch_size: int = 128
    progress: Optional[Callable[[str, int, int], None]] = None  # (task, done, total)
    log: list[str] = field(default_factory=list)  # notes a method wants in the summary

    @property
    def forget(self) -> LabelledData:
        return self.splits.forget

    @property
    def retain(self) -> LabelledData:
        return self.splits.retain

    @property
    def scenario(self) -> str:
        return self.splits.scenario

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from the run's seed (offset separates independent streams)."""
        return torch.Generator().manual_seed(self.seed * 1000003 + offset)

    def student(self) -> nn.Module:
        """A trainable copy of the original model."""
        return copy.deepcopy(self.original).to(self.device)

    def report(self, task: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(task, done, total)


@dataclass
class MethodOutput:
    """What a method returns: the unlearned model (plain architecture, weights merged)."""

    model: nn.Module
    adapter_model: Any = None  # a peft.PeftModel before merging, for adapter-only output (LoRA methods)
    info: dict[str, Any] = field(default_factory=dict)  # figures worth recording (steps, stop reason...)


@dataclass(frozen=True)
class MethodSpecEntry:
    name: str
    summary: str
    params_cls: type[MethodParams]
    run: Callable[[UnlearnContext, MethodParams], MethodOutput]
    supports_adapter: bool = False
    reference: str = ""


_REGISTRY: dict[str, MethodSpecEntry] = {}


def register_method(
    name: str,
    params_cls: type[MethodParams],
    run: Callable[[UnlearnContext, Any], MethodOutput],
    summary: str,
    supports_adapter: bool = False,
    reference: str = "",
) -> None:
    """Register a method by name; bad or duplicate names are errors (not asserts)."""
    if not name or name != name.strip().lower() or " " in name:
        raise ValueError(f"method name {name!r} must be lower-case without spaces")
    if name in _REGISTRY:
        raise ValueError(f"method {name!r} is already registered")
    if not (isinstance(params_cls, type) and issubclass(params_cls, MethodParams)):
        raise TypeError(f"params_cls of {name!r} must subclass MethodParams")
    _REGISTRY[name] = MethodSpecEntry(name, summary, params_cls, run, supports_adapter, reference)


def unregister_method(name: str) -> None:
    """Remove a registered method (tests register fakes and remove them afterwards)."""
    if name not in _REGISTRY:
        raise UnknownMethodError(f"unknown method '{name}'; known methods: {', '.join(sorted(_REGISTRY))}")
    del _REGISTRY[name]


def get_method(name: str) -> MethodSpecEntry:
    if name not in _REGISTRY:
        raise UnknownMethodError(f"unknown method '{name}'; known methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def parse_params(name: str, params: dict[str, Any]) -> MethodParams:
    """Validate a method's parameters; the error names the parameter and what is allowed."""
    entry = get_method(name)
    try:
        return entry.params_cls.model_validate(params)
    except ValidationError as e:
        first = e.errors()[0]
        if first["type"] == "extra_forbidden":
            loc = ".".join(str(p) for p in first["loc"])
            raise MethodError(f"method.params.{loc}: unknown parameter; {name} takes: {', '.join(entry.params_cls.model_fields)}") from None
        raise MethodError(format_error(first, "method.params")) from None


def run_method(name: str, ctx: UnlearnContext, params: MethodParams) -> tuple[MethodOutput, float]:
    """Run a registered method; returns its output and wall time in seconds."""
    entry = get_method(name)
    torch.manual_seed(ctx.seed)
    start = time.perf_counter()
    out = entry.run(ctx, params)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    return out, time.perf_counter() - start
