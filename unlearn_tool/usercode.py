"""Loading the user's own model code (`model.arch: python:<module>:<callable>`) and nothing else.

A request may only load a module file beside itself or in a folder the user names with --code-path.
Standard-library and installed modules (os, subprocess, builtins, ...) need --trust-code. No torch here.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional

from .errors import ModelError
from .interrupts import raise_interrupt_behind


@dataclass(frozen=True)
class CodePolicy:
    """Which `python:` model code a request may load.

    By default only the user's own code: a module file beside the request, or in a folder
    given with --code-path. Standard-library and installed modules (os, subprocess, builtins,
    ...) are refused unless the user opts in with --trust-code, as transformers does with
    trust_remote_code: a request from someone else must not be able to run arbitrary code.
    """

    code_paths: tuple[Path, ...] = ()
    trust_code: bool = False


_LOADED: dict[tuple[str, float], ModuleType] = {}  # (file, mtime) -> module: loaded once per process


def _locate(module_name: str, folders: list[Path]) -> Optional[tuple[Path, Path, bool]]:
    """(folder, file, is_package) of `module_name` found *only* in `folders` (dotted names: a package there)."""
    from importlib.machinery import PathFinder

    parts = module_name.split(".")
    for folder in folders:
        spec = PathFinder.find_spec(parts[0], [str(folder)])
        for part in parts[1:]:
            if spec is None or not spec.submodule_search_locations:
                spec = None
                break
            spec = PathFinder.find_spec(part, list(spec.submodule_search_locations))
        if spec is not None and spec.origin and spec.has_location:
            return folder, Path(spec.origin), spec.submodule_search_locations is not None
    return None


def _import_user_file(module_name: str, folder: Path) -> ModuleType:
    """Import the user's module from `folder` under a private name, so it never collides with (or is shadowed by)
    an installed module of the same name; its folder is on sys.path while it runs, for its own imports."""
    top = module_name.split(".")[0]
    top_spec = importlib.machinery.PathFinder.find_spec(top, [str(folder)])
    assert top_spec is not None and top_spec.origin is not None  # _locate found it
    origin = Path(top_spec.origin)
    key = (str(origin), origin.stat().st_mtime)
    private = "_unlearn_user_" + hashlib.sha1(str(origin).encode()).hexdigest()[:12] + "_" + top
    sys.path.insert(0, str(folder))
    try:
        module = _LOADED.get(key)
        if module is None:
            spec = importlib.util.spec_from_file_location(private, origin, submodule_search_locations=top_spec.submodule_search_locations)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[private] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(private, None)
                raise
            _LOADED[key] = module
        if "." in module_name:
            module = importlib.import_module(private + module_name[len(top):])
    finally:
        if str(folder) in sys.path:
            sys.path.remove(str(folder))
    return module


def import_model_module(module_name: str, base_dir: Path, policy: CodePolicy) -> ModuleType:
    """The module a `python:` model source names, under the code policy; any failure is a one-line ModelError."""
    folders = [Path(base_dir).resolve()] + [Path(p).expanduser().resolve() for p in policy.code_paths]
    try:
        found = _locate(module_name, folders)
        if found is not None:
            return _import_user_file(module_name, found[0])
        if policy.trust_code:
            added = [str(f) for f in folders if str(f) not in sys.path]
            sys.path[:0] = added
            try:
                return importlib.import_module(module_name)
            finally:
                for f in added:
                    if f in sys.path:
                        sys.path.remove(f)
        raise ModelError(
            f"model.arch: python:{module_name} is not a module file beside the request ({base_dir}) or in a --code-path "
            "folder, and a request may only load your own model code; put the module there, pass --code-path DIR, "
            "or --trust-code to allow installed and standard-library modules")
    except ModelError:
        raise
    except ImportError as e:
        raise_interrupt_behind(e)  # a signal during an extension's init, not a broken module
        raise ModelError(f"model.arch: cannot import module '{module_name}' ({one_line(e)}); put it beside the request or pass --code-path") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's module failed while importing (syntax error, raise, exit)
        raise_interrupt_behind(e)
        raise ModelError(f"model.arch: importing '{module_name}' failed ({type(e).__name__}: {one_line(e)}); fix the module") from None


def one_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:200] if text else type(e).__name__)
