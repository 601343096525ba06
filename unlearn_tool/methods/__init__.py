"""Registered unlearning methods: one file each, imported here so the list is greppable."""

from .base import (  # noqa: F401
    MethodOutput,
    MethodParams,
    UnlearnContext,
    get_method,
    method_names,
    parse_params,
    register_method,
    run_method,
)
from . import rfa  # noqa: F401,E402
from . import retrain  # noqa: F401,E402
