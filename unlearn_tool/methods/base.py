"""The method registry and the one interface every unlearning method implements.

Adding a method is three steps (docs/adding_a_method.md): write
`methods/<name>.py` with a pydantic `Params` model and a `run(ctx, params)`
function, end it with `register_method(...)`, import it in `methods/__init__.py`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import torch
from pydantic import ValidationError
from torch import nn

from ..errors import MethodError, UnknownMethodError
from ..job import UnlearnContext
from ..params import SaneParams, format_error
from ..training import single_sample_batchnorm

__all__ = ["MethodOutput", "MethodParams", "MethodSpecEntry", "UnlearnContext", "check_applicable", "describe_method",
           "get_method", "list_methods", "method_names", "parse_params", "preflight", "register_method", "run_method", "unregister_method"]


class MethodParams(SaneParams):
    """Base for method parameter models: unknown keys are errors, numbers finite and sane, a description per field.

    task_only: parameters that one task reads and the other ignores, {name: (task, what the other task uses)}; given
    for the other task they are refused, not silently dropped (a stop_forget_acc on a regressor never stopped it)."""

    task_only: ClassVar[dict[str, tuple[str, str]]] = {}

    def check_task(self, task: str) -> None:
        """Raise MethodError when a parameter does not fit the request's task (e.g. an MSE loss for classification)."""
        for name in sorted(self.model_fields_set):
            if name in self.task_only and self.task_only[name][0] != task:
                owner, instead = self.task_only[name]
                raise MethodError(f"method.params.{name} is read by {owner} only, and this is a {task} request; {instead}")
        loss = getattr(self, "loss", None)
        if loss is not None and loss != "auto":
            from ..tasks import get_task

            if loss not in get_task(task).losses:
                raise MethodError(f"method.params.loss: {loss} is a regression loss; a {task} model trains with its own loss "
                                  "(cross-entropy): use loss: auto")


@dataclass
class MethodOutput:
    """What a method returns: the unlearned model (plain architecture, weights merged)."""

    model: nn.Module
    adapter_model: Optional[nn.Module] = None  # the adapted model before merging (lora.LoraLayer), for adapter-only output
    info: dict[str, Any] = field(default_factory=dict)  # figures worth recording (steps, stop reason...)


@dataclass(frozen=True)
class MethodSpecEntry:
    name: str
    summary: str
    params_cls: type[MethodParams]
    run: Callable[[UnlearnContext, MethodParams], MethodOutput]
    supports_adapter: bool = False  # a LoRA method: can write an adapter-only output
    reference: str = ""  # the paper or repository the method and its defaults come from
    tasks: tuple[str, ...] = ("classification",)  # the tasks it can unlearn
    scenarios: tuple[str, ...] = ("class", "sample")  # the forget scenarios it accepts
    label_free: bool = False  # never reads the labels of the training data
    data_parallel: bool = False  # under torchrun its shuffled batches are split over the ranks (verified); else every rank repeats it
    loss_scaling: bool = False  # its steps go through precision.ScaledSteps, so it may train in fp16 on a card without bf16
    anchor_tasks: tuple[str, ...] = ()  # tasks on which it reads `UnlearnContext.anchor` (apply --anchor)
    # checks of the parameters against the model and data that run need no training (layer names, folders): validate and
    # bench run them before any work, so what apply would refuse after minutes is refused at once
    preflight: Optional[Callable[[UnlearnContext, Any], None]] = None


_REGISTRY: dict[str, MethodSpecEntry] = {}


def register_method(
    name: str,
    params_cls: type[MethodParams],
    run: Callable[[UnlearnContext, Any], MethodOutput],
    summary: str,
    supports_adapter: bool = False,
    reference: str = "",
    tasks: tuple[str, ...] = ("classification",),
    scenarios: tuple[str, ...] = ("class", "sample"),
    label_free: bool = False,
    data_parallel: bool = False,
    loss_scaling: bool = False,
    anchor_tasks: tuple[str, ...] = (),
    preflight: Optional[Callable[[UnlearnContext, Any], None]] = None,
) -> None:
    """Register a method by name; bad or duplicate names are errors (not asserts)."""
    if not name or name != name.strip().lower() or " " in name:
        raise ValueError(f"method name {name!r} must be lower-case without spaces")
    if name in _REGISTRY:
        raise ValueError(f"method {name!r} is already registered")
    if not (isinstance(params_cls, type) and issubclass(params_cls, MethodParams)):
        raise TypeError(f"params_cls of {name!r} must subclass MethodParams")
    _REGISTRY[name] = MethodSpecEntry(name, summary, params_cls, run, supports_adapter, reference, tuple(tasks),
                                      tuple(scenarios), label_free, data_parallel, loss_scaling, tuple(anchor_tasks), preflight)


def unregister_method(name: str) -> None:
    """Remove a registered method (tests register fakes and remove them afterwards)."""
    if name not in _REGISTRY:
        raise UnknownMethodError(f"unknown method '{name}'; known methods: {', '.join(sorted(_REGISTRY))}")
    del _REGISTRY[name]


def get_method(name: str) -> MethodSpecEntry:
    if name not in _REGISTRY:
        from ..exact import EXACT_METHODS

        if name in EXACT_METHODS:  # `unlearn methods` lists it, so "unknown" would send the user in circles
            raise UnknownMethodError(f"method '{name}' is exact unlearning: it deletes from an artifact trained by unlearn train --exact {name} "
                                     f"(then unlearn apply ARTIFACT -r REQUEST); on a checkpoint use one of: {', '.join(sorted(_REGISTRY))}")
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


def describe_method(name: str) -> dict[str, Any]:
    """Everything `unlearn methods NAME` shows, JSON-ready: summary, reference, tasks, parameters with defaults."""
    from ..params import describe_params

    e = get_method(name)
    return {"name": e.name, "summary": e.summary, "reference": e.reference, "adapter": e.supports_adapter,
            "tasks": list(e.tasks), "scenarios": list(e.scenarios), "label_free": e.label_free,
            "data_parallel": e.data_parallel, "anchor_tasks": list(e.anchor_tasks), "params": describe_params(e.params_cls)}


def list_methods() -> list[dict[str, Any]]:
    """One line per registered method: name, summary, and what it can do."""
    return [{"name": e.name, "summary": e.summary, "adapter": e.supports_adapter, "tasks": list(e.tasks),
             "label_free": e.label_free} for e in (_REGISTRY[n] for n in method_names())]


def check_applicable(name: str, task: str, scenario: str, params: Optional[MethodParams] = None) -> None:
    """A method that cannot handle the request's task or scenario is an input error naming those that can; so is a
    parameter that does not fit the task."""
    entry = get_method(name)
    if task not in entry.tasks:
        able = [n for n in method_names() if task in _REGISTRY[n].tasks]
        raise MethodError(f"method {name} cannot unlearn a {task} model; methods for {task}: {', '.join(able)}")
    if scenario not in entry.scenarios:
        able = [n for n in method_names() if task in _REGISTRY[n].tasks and scenario in _REGISTRY[n].scenarios]
        raise MethodError(f"method {name} handles {' and '.join(entry.scenarios)} unlearning only, not {scenario} unlearning; "
                          f"choose another method" + (f" ({', '.join(able)})" if able else ""))
    if params is not None:
        params.check_task(task)


def preflight(name: str, ctx: UnlearnContext, params: MethodParams) -> None:
    """The method's checks against the model and data (MethodError when its parameters do not fit them); no training."""
    check = get_method(name).preflight
    if check is not None:
        check(ctx, params)


def run_method(name: str, ctx: UnlearnContext, params: MethodParams) -> tuple[MethodOutput, float]:
    """Run a registered method; returns its output and wall time in seconds."""
    from ..job import seed_everything

    entry = get_method(name)
    from ..distributed import data_parallel

    from ..precision import for_task, training_autocast

    seed_everything(ctx.seed)
    start = time.perf_counter()
    guard = single_sample_batchnorm() if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in ctx.original.modules()) \
        else contextlib.nullcontext()
    task = ctx.task.name if ctx.task is not None else None
    with for_task(task), training_autocast(ctx.device, scaled=entry.loss_scaling), guard:  # for_task first: autocast reads it
        if entry.data_parallel:
            with data_parallel():
                out = entry.run(ctx, params)
        else:
            out = entry.run(ctx, params)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    return out, time.perf_counter() - start
