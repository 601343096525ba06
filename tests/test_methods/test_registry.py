"""The method registry: every method is described, its defaults are valid, names are checked, tests can unregister."""

from __future__ import annotations

import json

import pytest

from unlearn_tool.errors import UnknownMethodError
from unlearn_tool.methods import (
    MethodOutput,
    MethodParams,
    describe_method,
    get_method,
    list_methods,
    method_names,
    parse_params,
    register_method,
    unregister_method,
)


@pytest.mark.parametrize("name", method_names())
def test_every_method_is_documented_and_its_defaults_are_valid(name):
    entry = get_method(name)
    assert entry.summary and entry.reference, name
    for field, info in entry.params_cls.model_fields.items():
        assert info.description, f"{name}.{field} has no description"
    parse_params(name, {})
    described = describe_method(name)
    text = json.dumps(described, default=str)
    assert "PydanticUndefined" not in text and "typing." not in text, text
    assert [p["name"] for p in described["params"]] == list(entry.params_cls.model_fields)


def test_literal_and_optional_fields_show_their_allowed_values():
    params = {p["name"]: p for p in describe_method("rfa")["params"]}
    assert params["forget_target"]["type"] == "one of 'auto', 'other_classes', 'heldout'"
    assert params["w_forget"]["type"] == "number or null"


def test_register_checks_names_and_unregister_removes():
    with pytest.raises(ValueError):
        register_method("Bad Name", MethodParams, lambda ctx, p: MethodOutput(model=ctx.original), summary="x")
    with pytest.raises(ValueError):
        register_method("rfa", MethodParams, lambda ctx, p: MethodOutput(model=ctx.original), summary="x")
    register_method("test-noop", MethodParams, lambda ctx, p: MethodOutput(model=ctx.student().eval()), summary="test only")
    assert "test-noop" in method_names() and any(m["name"] == "test-noop" for m in list_methods())
    unregister_method("test-noop")
    assert "test-noop" not in method_names()
    with pytest.raises(UnknownMethodError):
        unregister_method("test-noop")
