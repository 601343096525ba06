"""A base for parameter models (methods, training): every number finite and sane, no boolean posing as a number.

A parameter file or `--param` typo must fail with exit 2 before any work, not run
for hours or write a NaN model: `lr=.inf`, `epochs=true` or `std=1e300` are input errors.
"""

from __future__ import annotations

import math
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

MAX_ABS_FLOAT = 1e6  # weights, temperatures, epsilons, std: anything larger is a typo
MAX_LR = 10.0  # no optimiser in this tool is stable above this learning rate
MAX_INT = 10_000_000  # epochs, steps, batch sizes, ranks
IS_PATH = {"path": True}  # Field(json_schema_extra=IS_PATH): a file or folder; relative in a request = to the request's folder


def is_path_field(field: Any) -> bool:
    return isinstance(field.json_schema_extra, dict) and bool(field.json_schema_extra.get("path"))


def _accepts_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    return any(_accepts_bool(a) for a in typing.get_args(annotation))


def _numbers(value: Any) -> list[float | int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _numbers(v)]
    return []


def field_and_message(first: dict) -> tuple[str, str]:
    """(field path, message) of the first pydantic error of a parameter model."""
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if not loc and ": " in msg and msg.split(": ", 1)[0].isidentifier():  # our model validators name the field first
        loc, msg = msg.split(": ", 1)
    return loc, msg


def format_error(first: dict, prefix: str) -> str:
    """One line for a pydantic error of a parameter model: `prefix.name: message`."""
    loc, msg = field_and_message(first)
    return f"{prefix}.{loc}: {msg}" if loc else f"{prefix}: {msg}"


def _is_learning_rate(name: str) -> bool:
    return name == "lr" or name.endswith("_lr")


class SaneParams(BaseModel):
    """Unknown keys are errors; numbers are finite and within bounds a user would ever mean (see the constants)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if field is not None and isinstance(value, bool) and not _accepts_bool(field.annotation):
                    raise ValueError(f"{name}: {str(value).lower()} is a boolean; give a number")
                if field is not None and isinstance(value, float) and not math.isfinite(value):  # before a bound says "> 0" of a NaN
                    raise ValueError(f"{name}: {value} is not a finite number; give a finite value")
        return data

    @model_validator(mode="after")
    def _sane_numbers(self) -> "SaneParams":
        for name in type(self).model_fields:
            for v in _numbers(getattr(self, name)):
                if isinstance(v, float) and not math.isfinite(v):
                    raise ValueError(f"{name}: {v} is not a finite number; give a finite value")
                if isinstance(v, float) and abs(v) > MAX_ABS_FLOAT:
                    raise ValueError(f"{name}: {v:g} is out of range (|value| <= {MAX_ABS_FLOAT:g}); give a sensible value")
                if isinstance(v, int) and abs(v) > MAX_INT:
                    raise ValueError(f"{name}: {v} is out of range (<= {MAX_INT:,}); give a sensible value")
                if _is_learning_rate(name) and v > MAX_LR:
                    raise ValueError(f"{name}: learning rate {v:g} is above {MAX_LR:g}, where training only diverges; give e.g. 1e-3")
        return self


def type_text(annotation: Any) -> str:
    """A parameter's type as a user reads it: the allowed values of a Literal, 'number or null', 'list of text'."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) if isinstance(a, str) else str(a) for a in args)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [type_text(a) for a in args if a is not type(None)]
        text = " or ".join(dict.fromkeys(parts))
        return text + (" or null" if type(None) in args else "")
    if origin in (list, tuple, set):
        return f"list of {type_text(args[0]) if args else 'values'}"
    if origin is dict:
        return "mapping"
    return {bool: "true/false", int: "integer", float: "number", str: "text"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def describe_params(params_cls: type[BaseModel]) -> list[dict[str, Any]]:
    """Each field's name, type text, default (factories called) and description: `unlearn methods NAME`."""
    out = []
    for name, field in params_cls.model_fields.items():
        default = field.get_default(call_default_factory=True)
        out.append({"name": name, "type": type_text(field.annotation), "default": default, "description": field.description or "",
                    **({"path": True} if is_path_field(field) else {})})
    return out
