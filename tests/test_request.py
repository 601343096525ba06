"""The shipped sample requests are valid: schema for all, full validation (data, classes, indices) for the built-in ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import invoke
from unlearn_tool.methods import parse_params
from unlearn_tool.request import load_request

SAMPLES = Path(__file__).resolve().parents[1] / "unlearn_tool" / "examples"


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_schema_and_method_params(path):
    req = load_request(path)
    parse_params(req.method.name, req.method.params)
    if req.forget.indices_file:
        assert req.forget_indices_list()


@pytest.mark.parametrize("name", ["digits_class.yaml", "digits_samples.yaml"])
def test_builtin_samples_validate_against_their_data(name):
    r = invoke("validate", "-r", SAMPLES / name)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("ok: ")


def test_examples_command_copies_the_requests_where_they_work(tmp_path):
    r = invoke("examples", tmp_path / "ex")
    assert r.exit_code == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "ex").iterdir())
    assert names == sorted(p.name for p in SAMPLES.iterdir() if p.suffix in (".yaml", ".txt"))
    r = invoke("validate", "-r", tmp_path / "ex" / "digits_samples.yaml")  # its indices file resolves beside it
    assert r.exit_code == 0, r.stderr
    r = invoke("examples", tmp_path / "ex")
    assert r.exit_code == 2 and "exists" in r.stderr  # never overwrites the user's edited copies


def test_an_emoji_written_as_a_json_surrogate_pair_is_text_a_lone_half_is_not():
    """json.dumps writes an emoji as two escapes ("\\ud83d\\ude00"), which YAML reads as two halves: the lone-surrogate
    check refused such a request, valid JSON and YAML, as "a lone surrogate"."""
    import json

    import yaml

    from unlearn_tool.errors import RequestError
    from unlearn_tool.request import parse_request

    request = yaml.safe_load((SAMPLES / "digits_class.yaml").read_text())
    request["id"] = "deletion \U0001F600 42"
    assert "\\ud83d\\ude00" in json.dumps(request)
    assert parse_request(json.dumps(request)).id == "deletion \U0001F600 42"
    request["id"] = "half \ud83d only"
    with pytest.raises(RequestError, match="lone surrogate"):
        parse_request(json.dumps(request))
