"""Registered unlearning methods: one file each, found by name, so adding a method touches one file.

Every module of this package except the shared ones (`base`, `common`) is a method file that ends in a
`register_method(...)` call; they are imported in alphabetical order below. `unlearn methods` lists them.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from .base import (  # noqa: F401
    MethodOutput,
    MethodParams,
    UnlearnContext,
    check_applicable,
    describe_method,
    get_method,
    list_methods,
    method_names,
    parse_params,
    preflight,
    register_method,
    run_method,
    unregister_method,
)

SHARED_MODULES = frozenset({"base", "common"})  # helpers, not methods
METHOD_MODULES = tuple(sorted(m.name for m in _pkgutil.iter_modules(__path__) if m.name not in SHARED_MODULES and not m.name.startswith("_")))
for _name in METHOD_MODULES:
    _importlib.import_module(f"{__name__}.{_name}")
