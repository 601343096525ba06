"""Ctrl-C and signals (SIGTERM, SIGHUP: `Terminated`) stay what they are, wherever they arrive.

- `interrupt_behind(e)`: the interrupt another exception wraps. An extension module's init (pybind11) turns any
  exception into ImportError('initialization failed') raised from it, so a signal during a lazy import arrives
  dressed as an ImportError; whatever catches one must not take it for a missing package or a broken module.
- `signals_deferred()`: steps that must happen together (publish an output, record its ledger entry) finish before
  a signal that arrives meanwhile is acted on.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Any, Iterator, Optional


def interrupt_behind(e: BaseException) -> Optional[KeyboardInterrupt]:
    """Ctrl-C or a signal (Terminated) that `e` is or wraps (its __cause__ / __context__ chain), else None."""
    seen: set[int] = set()
    cur: Optional[BaseException] = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def raise_interrupt_behind(e: BaseException) -> None:
    """For an `except ImportError` (or broader) guard: if the error hides Ctrl-C or a signal, raise that instead."""
    interrupt = interrupt_behind(e)
    if interrupt is not None:
        raise interrupt


DEFERRED_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP during the block, then act on the first one held as it would have been acted on
    (its handler raises KeyboardInterrupt or Terminated; the default action ends the process). Outside the main thread,
    where handlers cannot be set, the block runs as is."""
    held: list[int] = []

    def hold(signum: int, _frame: Any) -> None:
        held.append(signum)

    try:
        with handlers_swapped(DEFERRED_SIGNALS, hold) as previous:
            yield
    finally:  # also after an error in the block: the signal held is not lost
        if held:
            _deliver(held[0], previous[held[0]])


@contextmanager
def handlers_swapped(signals: tuple[Optional[int], ...], handler: Any) -> Iterator[dict[int, Any]]:
    """`handler` for each of `signals` during the block, the previous handlers (yielded) put back after it. Outside the
    main thread, where handlers cannot be set, nothing changes; a handler set outside Python (getsignal None) is left
    alone, since it could not be put back."""
    previous: dict[int, Any] = {}
    try:
        for sig in signals:
            if sig is not None and signal.getsignal(sig) is not None:
                previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield previous
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _deliver(signum: int, handler: Any) -> None:
    """Act on a held signal as its handler would have."""
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)  # the default action, now that the handler is back
