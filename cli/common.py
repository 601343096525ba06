"""What every command shares: the one place library errors become exit codes, progress bars, JSON output."""

from __future__ import annotations

import errno
import functools
import io
import json
import os
import re
import signal
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import typer

from unlearn_tool.interrupts import handlers_swapped, interrupt_behind, raise_interrupt_behind

EXIT_UNEXPECTED = 1
LAST_ERROR: list[str] = []  # the last error line printed (validate --json reports it)
_JSON_OUT: list[Any] = []  # the real stdout while a --json command runs; its other prints go to stderr
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def plain(text: object) -> str:
    """Foreign text (ids, paths, metadata, tensor names) made safe for a terminal: control characters, ANSI
    escapes and bidi overrides are shown as \\xNN instead of being interpreted."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}", str(text))


def markup_safe(text: object) -> str:
    """Foreign text for a rich string that is parsed as markup: `[/x]` printed as is, never interpreted."""
    from rich.markup import escape

    return escape(plain(text))


def err(message: str) -> None:
    """One line on stderr (control characters escaped)."""
    line = plain(message)
    if line.startswith("error: "):
        LAST_ERROR[:] = [line[len("error: "):]]
    typer.echo(line, err=True)


def handle_errors(fn: Callable) -> Callable:
    """Map library errors to one-line messages and exit codes: 2 invalid input, 3 gate failed, 1 unexpected or
    diverged, 130 Ctrl-C, 143 SIGTERM (129 SIGHUP). Signals unwind like Ctrl-C, so temporary files are removed."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from unlearn_tool.checkpoint import PUBLISHED

        PUBLISHED.clear()  # what this command writes (one process may run several commands, e.g. tests)
        as_json, answers_before = bool(kwargs.get("as_json")), JSON_ANSWERS[0]
        LAST_ERROR.clear()
        with _signals_as_exceptions(), json_stdout(as_json):
            try:
                return _one_line_errors(fn, args, kwargs)
            except typer.Exit as e:  # a --json command that failed before its answer answers with the error
                if as_json and e.exit_code and LAST_ERROR and JSON_ANSWERS[0] == answers_before:
                    print_json({"ok": False, "exit_code": e.exit_code, "error": LAST_ERROR[-1]})
                raise

    return wrapper


def _one_line_errors(fn: Callable, args: Any, kwargs: Any) -> Any:
    """handle_errors' mapping: the command, with every error turned into one line on stderr and typer.Exit(code)."""
    from unlearn_tool.errors import Terminated, UnlearnError

    try:
        return fn(*args, **kwargs)
    except typer.Exit:
        raise
    except BrokenPipeError:  # the reader left (| head): end quietly, as a process killed by SIGPIPE does
        stdout_gone()
        raise typer.Exit(EXIT_SIGPIPE) from None
    except UnlearnError as e:
        _exit_if_interrupted(interrupt_behind(e) or _received())  # a signal during a lazy import that our code wrapped (usercode, timm)
        err(f"error: {str(e) or type(e).__name__}")  # one line: a newline inside (a path's) is escaped, not cut
        raise typer.Exit(e.exit_code) from None
    except Terminated as e:
        err(f"error: terminated by signal {e.signum}; {_written_note()}")
        raise typer.Exit(128 + e.signum) from None
    except KeyboardInterrupt:
        err(f"error: interrupted; {_written_note()}")
        raise typer.Exit(130) from None
    except MemoryError:
        _exit_if_interrupted(_received())
        err("error: out of memory; lower data.batch_size or the method's batch sizes, or use a larger device")
        raise typer.Exit(EXIT_UNEXPECTED) from None
    except RecursionError:
        _exit_if_interrupted(_received())
        err("error: input nested too deeply to process; simplify it")
        raise typer.Exit(2) from None
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, exit 1
        _exit_if_interrupted(interrupt_behind(e) or _received())
        if isinstance(e, StdoutWriteError):  # the library names its own file errors (OutputError)
            err(f"{stdout_error_line(e)}; {_written_note()}")
            stdout_gone()
            raise typer.Exit(EXIT_UNEXPECTED) from None
        if _is_cuda_oom(e):
            err("error: CUDA out of memory; lower data.batch_size or the method's batch sizes, or use --device cpu")
        else:
            err(f"error: unexpected {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''} (please report this)")
        if _debug():
            raise
        raise typer.Exit(EXIT_UNEXPECTED) from None


EXIT_SIGPIPE = 141  # 128 + SIGPIPE: what a shell reports for `yes | head`'s writer


class StdoutWriteError(OSError):
    """Standard output refused the command's answer (a full disk, the file size limit, a closed descriptor)."""


def stdout_error_line(e: OSError) -> str:
    """One line naming why standard output could not take the answer, and the fix."""
    fix = {errno.EFBIG: "raise the file size limit (ulimit -f) or write elsewhere",
           errno.EBADF: "standard output is closed; redirect it to a file or to /dev/null"}.get(
        e.errno or 0, "free some space or write elsewhere" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "check where it goes")
    return f"error: could not write to standard output ({e.strerror or e}); {fix}"


class CheckedStdout(io.TextIOBase):
    """The console script's sys.stdout: each write goes to the descriptor at once and in full, or raises
    StdoutWriteError. Python's buffered stdout drops the tail of a partial write without an error (a file at its
    `ulimit -f` limit: 1 KiB of a 6 KiB JSON answer, exit 0), so a pipeline would read a cut answer as a whole one.
    `fd=None` stands for a descriptor that was closed (`>&-`): every write is refused."""

    def __init__(self, fd: Optional[int], encoding: str = "utf-8", errors: str = "strict"):
        import codecs

        super().__init__()
        self._fd, self._encoding, self._errors = fd, encoding, errors
        self._encoder = codecs.getincrementalencoder(encoding)(errors)  # one stream: utf-16's byte-order mark once, not per write

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding

    @property
    def errors(self) -> str:  # type: ignore[override]
        return self._errors

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._fd is not None and os.isatty(self._fd)

    def fileno(self) -> int:
        if self._fd is None:
            raise io.UnsupportedOperation("standard output is closed")
        return self._fd

    def write(self, text: str) -> int:
        if not isinstance(text, str):  # as a text stream does: click tells text from binary streams by this
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if not text:
            return 0
        if self._fd is None:
            raise StdoutWriteError(errno.EBADF, "Bad file descriptor")
        view = memoryview(self._encoder.encode(text))
        while view:
            try:
                view = view[os.write(self._fd, view):]
            except (BlockingIOError, InterruptedError):  # a non-blocking pipe that is full: wait until it drains
                import select

                select.select([], [self._fd], [])
            except BrokenPipeError:
                raise
            except OSError as e:
                raise StdoutWriteError(e.errno, e.strerror) from None
        return len(text)


def use_checked_stdout() -> None:
    """Install CheckedStdout, and hold a closed standard descriptor (0, 1, 2) open on /dev/null: otherwise the next file
    the command opens (an output's temporary file) takes its number, and whatever writes to that descriptor (a C
    library's warning on fd 2) writes into the output."""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
    for fd in closed:  # lowest first: os.open returns the lowest free number, which is this one
        os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
    if 2 in closed:
        sys.stderr = open(2, "w", closefd=False)
    old = sys.stdout
    if old is not None:
        try:
            old.flush()
        except (OSError, ValueError):
            pass
    sys.stdout = CheckedStdout(None if 1 in closed else 1, *_output_encoding(old))


def _output_encoding(stream: Any) -> tuple[str, str]:
    """stdout's encoding and error handler. ASCII (LC_ALL=C, PYTHONIOENCODING=ascii) is read as UTF-8, as click does for
    a misconfigured stream; another encoding that cannot show a character shows its escape, not an error."""
    import codecs

    try:
        name = codecs.lookup(getattr(stream, "encoding", None) or "utf-8").name
    except LookupError:
        name = "utf-8"
    if name == "ascii":
        name = "utf-8"
    return name, "surrogateescape" if name == "utf-8" else "backslashreplace"


def stdout_gone() -> None:
    """Point stdout at /dev/null: the reader closed the pipe, and a later write or the flush at exit must not raise."""
    try:
        real = _JSON_OUT[-1] if _JSON_OUT else sys.stdout  # under --json sys.stdout is stderr (json_stdout): never null that
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, real.fileno())
        os.close(null)
    except (OSError, ValueError):
        pass


def _exit_if_interrupted(interrupt: Optional[KeyboardInterrupt]) -> None:
    """Exit as the signal (or Ctrl-C) found behind another exception would have."""
    from unlearn_tool.errors import Terminated

    if isinstance(interrupt, Terminated):
        err(f"error: terminated by signal {interrupt.signum}; {_written_note()}")
        raise typer.Exit(128 + interrupt.signum) from None
    if interrupt is not None:
        err(f"error: interrupted; {_written_note()}")
        raise typer.Exit(130) from None


def _written_note() -> str:
    from unlearn_tool.checkpoint import PUBLISHED

    # the command's output is what it publishes first; a ledger, forgotten sets or reports may follow, and one of them may be
    # written after the signal (apply --no-keep-on-fail publishes an output whose audit was cut short, with its ledger)
    return f"{PUBLISHED[0]} was written before that" if PUBLISHED else "no output was written"


def report_signals_between_commands() -> None:
    """SIGTERM and SIGHUP outside a command (while the process parses its arguments, or exits after the command finished)
    end the process with the same line and exit code as inside one, instead of silently: a pipeline that sees 143 learns
    whether the output was written (it then is complete: every write happens inside the command). Called by the real
    entry point only; commands swap their own handlers in and put these back."""

    def terminated(signum: int, _frame: Any) -> None:
        err(f"error: terminated by signal {signum}; {_written_note()}")
        sys.stdout.flush()
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, terminated)


RECEIVED: list[int] = []  # the signals this command received: a library may lose the exception one raised (Ctrl-C during
# numpy's lazy `import numpy.dtypes` inside scipy's import left it half-imported, and the command failed with a RecursionError)


@contextmanager
def _signals_as_exceptions() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Terminated in the main thread (restored afterwards), so cleanup code runs; each
    signal, Ctrl-C included, is noted in RECEIVED."""
    from unlearn_tool.errors import Terminated

    RECEIVED.clear()

    def raise_terminated(signum: int, _frame: Any) -> None:
        RECEIVED.append(signum)
        raise Terminated(signum)

    def raise_interrupt(signum: int, frame: Any) -> None:
        RECEIVED.append(signum)
        signal.default_int_handler(signum, frame)

    ctrl_c = (signal.SIGINT,) if signal.getsignal(signal.SIGINT) is signal.default_int_handler else ()  # not where it is ignored
    with handlers_swapped((signal.SIGTERM, getattr(signal, "SIGHUP", None)), raise_terminated), handlers_swapped(ctrl_c, raise_interrupt):
        yield


def _received() -> Optional[KeyboardInterrupt]:
    """The first signal this command received, as the exception its handler raised (whatever became of that one)."""
    from unlearn_tool.errors import Terminated

    if not RECEIVED:
        return None
    return KeyboardInterrupt() if RECEIVED[0] == signal.SIGINT else Terminated(RECEIVED[0])


def _is_cuda_oom(e: Exception) -> bool:
    return type(e).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(e)


def _debug() -> bool:
    import os

    return os.environ.get("UNLEARN_DEBUG") == "1"


@contextmanager
def json_stdout(active: bool) -> Iterator[None]:
    """While a --json command runs, its stdout holds the JSON alone: anything else printed there (a `python:` model
    module that prints at import or in forward) goes to stderr, so `| jq` still parses."""
    if not active or _JSON_OUT:
        yield
        return
    from contextlib import redirect_stdout

    _JSON_OUT.append(sys.stdout)
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        _JSON_OUT.pop()


JSON_ANSWERS = [0]  # JSON objects printed so far: a command that printed its answer adds no error object after it


def print_json(obj: Any) -> None:
    JSON_ANSWERS[0] += 1
    (_JSON_OUT[-1] if _JSON_OUT else sys.stdout).write(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
    except ImportError as e:
        raise_interrupt_behind(e)
    return str(o)


def rank0() -> bool:
    """Not one of the other ranks of a torchrun launch (they stay quiet; rank 0 reports)."""
    import os

    return os.environ.get("RANK", "0") in ("", "0")


@contextmanager
def progress_bars(enabled: bool) -> Iterator[Optional[Callable[[str, int, int], None]]]:
    """Rich progress bars on stderr; yields a callback (task, done, total) or None when disabled.

    The display starts at the first update (a run that fails its input checks prints nothing but its error)
    and a bar disappears once its task is complete, so a finished run never leaves a half-full bar behind.
    """
    if not enabled or not rank0():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress: Optional[Progress] = None
    tasks: dict[str, Any] = {}

    def update(task: str, done: int, total: int) -> None:
        nonlocal progress
        if progress is None:
            progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                console=Console(stderr=True), transient=True)
            progress.start()
        if task not in tasks:
            tasks[task] = progress.add_task(markup_safe(task), total=total)
        progress.update(tasks[task], completed=done, total=total)
        if total and done >= total:
            progress.remove_task(tasks.pop(task))

    try:
        yield update
    finally:
        if progress is not None:
            progress.stop()


def metric_text(key: str, value: Optional[float]) -> str:
    """One utility figure as a user reads it: accuracies as percentages, regression errors and R² as plain numbers
    in the target's units (a mean absolute error is not a share)."""
    if value is None or value != value:
        return "-"
    if key.endswith("_acc"):
        return f"{100 * value:.2f}%"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4f}"


def headline(summary: dict) -> str:
    """The trained model's test figure: accuracy for a classifier, MAE for a regressor."""
    if "test_acc" in summary:
        return f"test accuracy {metric_text('test_acc', summary['test_acc'])}"
    if "test_mae" in summary:
        return f"test MAE {metric_text('test_mae', summary['test_mae'])}"
    return "no test figure"
