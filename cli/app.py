"""The `unlearn` Typer app and the options several commands share. Every command module registers on this app;
nothing here imports a command module, so there is no import circle. No torch at import time."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import typer
from typer.core import TyperGroup

from unlearn_tool.interrupts import raise_interrupt_behind

from .common import err, plain, print_json


def _exception_types(name: str) -> tuple[type, ...]:
    """click's exception class `name`, from click and from the copy of click that recent Typer versions vendor."""
    found = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            cls = getattr(__import__(module, fromlist=[name]), name, None)
        except ImportError as e:
            raise_interrupt_behind(e)
            cls = None
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


USAGE_ERRORS = _exception_types("UsageError")
CLICK_ERRORS = _exception_types("ClickException")
ABORTS = _exception_types("Abort")


class OneLineErrors(TyperGroup):
    """Usage errors (unknown option, bad value, missing argument) as one line on stderr with exit 2, like every
    other input error, instead of click's usage block."""

    def main(self, args: Optional[Sequence[str]] = None, prog_name: Optional[str] = None, complete_var: Optional[str] = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except USAGE_ERRORS as e:
            ctx = getattr(e, "ctx", None)
            where = ctx.command_path if ctx is not None else "unlearn"
            line = f"{_one_line(e.format_message()).rstrip('.')}; see `{where} --help`"  # click's "... 'checkpoint'." then ";"
            err(f"error: {line}")
            if "--json" in (sys.argv[1:] if args is None else list(args)):  # as a --json command that fails answers (README)
                print_json({"ok": False, "exit_code": 2, "error": plain(line)})
            sys.exit(2)
        except CLICK_ERRORS as e:
            err(f"error: {_one_line(e.format_message())}")
            sys.exit(e.exit_code)
        except ABORTS:
            err("error: aborted")
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _one_line(message: str) -> str:
    return " ".join(plain(message).split())


app = typer.Typer(
    name="unlearn",
    cls=OneLineErrors,
    help="Make a trained PyTorch model (a classifier or a regressor) forget part of its training data, and show that it did.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags read as flags (no "<bool>"), and it renders the same in any terminal or pipe
)


def _version(value: bool) -> None:
    if value:
        from unlearn_tool import __version__

        typer.echo(f"unlearn {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit.")) -> None:
    """Make a trained PyTorch model (a classifier or a regressor) forget part of its training data, and show that it did."""

DeviceOpt = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.")
PrecisionOpt = typer.Option("auto", "--precision", help="Training passes on CUDA: auto (bf16 autocast where the GPU supports it, else fp16 with loss scaling in the loops that support it), bf16, fp16 or fp32. CPU and MPS always run fp32.")
RequestOpt = typer.Option(..., "--request", "-r", help="Deletion-request YAML.", show_default=False)
CodePathOpt = typer.Option([], "--code-path", metavar="DIR", help="A folder of your own model code that python:<module>:<callable> may load from (repeatable; the request's folder always counts).", show_default=False)
NumWorkersOpt = typer.Option(0, "--num-workers", min=0, max=256, help="Worker processes that read image files (imagefolder, csv sources) while batches are computed (0: in the main process).")
TrustCodeOpt = typer.Option(False, "--trust-code", help="Let python:<module>:<callable> load installed and standard-library modules too (runs whatever the request names: only for requests you trust).")


def code_policy(code_path: list[Path], trust_code: bool) -> Any:
    from unlearn_tool.usercode import CodePolicy

    for p in code_path:
        if not p.is_dir():
            from unlearn_tool.errors import UnlearnError

            raise UnlearnError(f"--code-path {p}: not a folder; give the folder that holds your model module")
    return CodePolicy(code_paths=tuple(code_path), trust_code=trust_code)
