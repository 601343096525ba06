"""What every command shares: the one place library errors become exit codes, progress bars, JSON output."""

from __future__ import annotations

import functools
import json
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import typer

EXIT_OK, EXIT_UNEXPECTED, EXIT_INVALID, EXIT_GATE = 0, 1, 2, 3


def err(message: str) -> None:
    """One line on stderr."""
    typer.echo(message, err=True)


def handle_errors(fn: Callable) -> Callable:
    """Map library errors to one-line messages and exit codes: 2 invalid input, 3 gate failed, 1 unexpected."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from unlearn_tool.errors import UnlearnError

        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except UnlearnError as e:
            err(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err("error: interrupted; no output was written")
            raise typer.Exit(130) from None
        except MemoryError:
            err("error: out of memory; lower data.batch_size or the method's batch sizes, or use a larger device")
            raise typer.Exit(EXIT_UNEXPECTED) from None
        except Exception as e:  # noqa: BLE001 - the last line of defence: one line, exit 1
            if _is_cuda_oom(e):
                err("error: CUDA out of memory; lower data.batch_size or the method's batch sizes, or use --device cpu")
            else:
                err(f"error: unexpected {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''} (please report this)")
            if _debug():
                raise
            raise typer.Exit(EXIT_UNEXPECTED) from None

    return wrapper


def _is_cuda_oom(e: Exception) -> bool:
    return type(e).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(e)


def _debug() -> bool:
    import os

    return os.environ.get("UNLEARN_DEBUG") == "1"


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
    except ImportError:
        pass
    return str(o)


@contextmanager
def progress_bars(enabled: bool) -> Iterator[Optional[Callable[[str, int, int], None]]]:
    """A rich progress display on stderr; yields a callback (task, done, total) or None when disabled."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        tasks: dict[str, Any] = {}

        def update(task: str, done: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = progress.add_task(task, total=total)
            progress.update(tasks[task], completed=done, total=total)

        yield update
