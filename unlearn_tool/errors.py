"""One error hierarchy for the library; the CLI maps it to exit codes in one place.

Every message is one line that names the problem and the fix.
"""

import json
from typing import Any


def shown(value: Any, limit: int = 80, as_repr: bool = False) -> str:
    """A value from the user's input, as JSON (or repr), cut to `limit` characters: a file may hold anything, and the
    message that names it must stay one short line."""
    text = repr(value) if as_repr else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class UnlearnError(Exception):
    """Base class: bad input the user can fix (exit code 2)."""

    exit_code = 2


class RequestError(UnlearnError):
    """The deletion request YAML is malformed or inconsistent."""


class DataError(UnlearnError):
    """The data named by the request cannot be loaded or does not fit the request."""


class ModelError(UnlearnError):
    """The architecture named by the request cannot be built."""


class CheckpointError(UnlearnError):
    """The checkpoint cannot be read or does not match the architecture."""


class OutputError(UnlearnError):
    """The output cannot be written (exists without --force, unwritable folder, ...)."""


class UnknownMethodError(UnlearnError, KeyError):
    """A method name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MethodError(UnlearnError):
    """A method's parameters are invalid or the method cannot run on this input."""


class GateFailure(UnlearnError):
    """An audit gate failed (exit code 3): the deletion could not be shown."""

    exit_code = 3


class DivergedError(UnlearnError):
    """A method produced non-finite weights, or a model whose outputs are not finite (exit code 1): nothing is written."""

    exit_code = 1


class NonFiniteOutputs(DivergedError):
    """A model's outputs hold NaN/Inf on `where` ('283 of 283 forget samples'), its weights finite or not: no audit
    metric exists for it. Callers that know more (the method, the file) say it in their own message."""

    def __init__(self, where: str):
        super().__init__(f"diverged: outputs not finite (NaN/Inf) on {where}")
        self.where = where


class UnmeasurableResult(CheckpointError):
    """The audit refused the unlearned model itself (its outputs hold NaN/Inf): a verdict against it, not an audit
    cut short, so `apply --audit --no-keep-on-fail` does not publish it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM/SIGHUP, raised in the main thread so that every cleanup handler runs (like Ctrl-C)."""

    def __init__(self, signum: int = 15):
        super().__init__(signum)
        self.signum = signum


class AuditError(UnlearnError):
    """The audit's inputs are invalid: a malformed or unknown gate, an adapter that trained nothing, ..."""
