"""A signal that arrives while an optional package is lazily imported is that signal, never "not installed".

An extension module's init (pybind11) turns any exception into ImportError('initialization failed') raised from it,
so Ctrl-C or SIGTERM during such an import reaches an `except ImportError` guard dressed as an ImportError. The guard
in models._saved_names took it for transformers 4 and carried on: the signal was lost (validate exited 0, apply kept
running). Every guarded lazy import now raises the interrupt behind the error (unlearn_tool.interrupts).
"""

from __future__ import annotations

import importlib.abc
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

from conftest import invoke, write_request
from helpers import rejected

ROOT = Path(__file__).resolve().parents[2]
SAVED_NAMES = "transformers.core_model_loading"  # the module models._saved_names imports under `except ImportError`


class _FailingInit(importlib.abc.MetaPathFinder):
    """Importing `name` runs `init`, and whatever it raises comes out as pybind11 gives it: ImportError from it."""

    def __init__(self, name: str, init: Callable[[], None]):
        self.name, self.init = name, init

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        try:
            self.init()
        except BaseException as e:
            raise ImportError("initialization failed") from e
        raise ImportError(f"No module named {fullname!r}")


@contextmanager
def import_interrupted(name: str, init: Callable[[], None]) -> Iterator[None]:
    """Within the block, importing `name` fails as `init` makes it fail; the loaded module is back afterwards."""
    loaded = sys.modules.pop(name, None)  # imported afresh, through the finder
    finder = _FailingInit(name, init)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        if loaded is not None:
            sys.modules[name] = loaded


def _sighup() -> None:
    os.kill(os.getpid(), signal.SIGHUP)
    time.sleep(0.5)


def _ctrl_c() -> None:
    raise KeyboardInterrupt


def test_a_signal_while_transformers_loads_its_weight_conversion_is_that_signal(hf_work):
    with import_interrupted(SAVED_NAMES, _sighup):
        rejected(invoke("validate", "-r", hf_work / "req.yaml"), "terminated by signal 1", "no output was written", code=129)
    assert invoke("validate", "-r", hf_work / "req.yaml").exit_code == 0  # without the signal it validates


def test_a_signal_while_importing_timm_is_that_signal(tmp_path):
    pytest.importorskip("timm")
    req = write_request(tmp_path, {"classes": [3]}, arch="timm:resnet18", kwargs={"num_classes": 10, "in_chans": 1}, name="t.yaml")
    with import_interrupted("timm", _sighup):
        rejected(invoke("validate", "-r", req), "terminated by signal 1", code=129)


def _available_memory() -> int:
    from unlearn_tool.data import available_memory

    return available_memory()


def _process_age() -> None:
    from cli.main import _since_process_start

    _since_process_start()


def _json_of_a_numpy_scalar() -> None:
    from cli.common import _json_default

    _json_default(object())


def _saved_names() -> None:
    from torch import nn

    from unlearn_tool.models import _saved_names

    _saved_names(nn.Linear(2, 2), "hf:x")


@pytest.mark.parametrize("module, call", [("psutil", _available_memory), ("psutil", _process_age), ("numpy", _json_of_a_numpy_scalar),
                                          (SAVED_NAMES, _saved_names)])
def test_every_guarded_lazy_import_lets_ctrl_c_through(module, call):
    with import_interrupted(module, _ctrl_c):
        with pytest.raises(KeyboardInterrupt):
            call()
    call()  # without the interrupt: the package, or the fallback when it is missing


def test_a_missing_optional_package_is_still_a_missing_package():
    from torch import nn

    from unlearn_tool.models import _saved_names

    with import_interrupted("psutil", lambda: None), import_interrupted(SAVED_NAMES, lambda: None):  # plain ImportError
        assert _available_memory() > 0  # the fallback: the OS's figure
        assert _saved_names(nn.Linear(2, 2), "hf:x") == {}  # as with transformers 4


def test_sigterm_to_a_real_process_while_transformers_imports_exits_143(hf_work, tmp_path):
    """A real `unlearn validate` process, whose import in models._saved_names is held in a slow extension init (a
    sitecustomize hooks that one import statement), receives SIGTERM from outside: exit 143 (it exited 0, the signal lost)."""
    marker = tmp_path / "importing"
    (tmp_path / "sitecustomize.py").write_text(
        "import builtins, time\n"
        "real_import = builtins.__import__\n"
        "def slow_init(name, globals=None, *args, **kwargs):\n"
        f"    if name == {SAVED_NAMES!r} and (globals or {{}}).get('__name__') == 'unlearn_tool.models':\n"
        "        try:  # an extension whose init takes a while; pybind11 wraps what interrupts it\n"
        f"            open({str(marker)!r}, 'w').close()\n"
        "            time.sleep(60)\n"
        "        except BaseException as e:\n"
        "            raise ImportError('initialization failed') from e\n"
        "    return real_import(name, globals, *args, **kwargs)\n"
        "builtins.__import__ = slow_init\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "cli", "validate", "-r", str(hf_work / "req.yaml")], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not marker.exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert marker.exists(), p.communicate()
        p.send_signal(signal.SIGTERM)
        out, errors = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, (out, errors)
    assert "terminated by signal 15" in errors


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_a_library_loses_is_still_that_signal(digits_dir, tmp_path, monkeypatch, signum, code):
    """Ctrl-C while scipy imported numpy lazily left numpy half-imported: its `__getattr__` then imported itself
    until a RecursionError, and apply said "input nested too deeply to process; simplify it" (exit 2). The command
    now exits as the signal it received, whatever the library made of it."""
    import unlearn_tool.pipeline as pipeline

    def import_that_loses_the_signal(*_args, **_kwargs):
        try:
            os.kill(os.getpid(), signum)
            time.sleep(5)
        except KeyboardInterrupt:  # Terminated too: a library's import machinery drops it
            pass
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(pipeline, "prepare", import_that_loses_the_signal)
    r = invoke("apply", digits_dir / "mlp.safetensors", "-r", digits_dir / "class.yaml", "-o", tmp_path / "o.safetensors", "--quiet")
    assert r.exit_code == code and "nested" not in r.stderr, r.stderr
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back after the command
