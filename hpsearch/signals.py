"""Ctrl-C and SIGTERM: one path for both, and held back while the storage is written.

A write cut in half, or a stop between popping a trial and recording it, would leave trials that
no later run knows how to resume; so writes hold the signals back and raise them when done.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # both record the trials in flight as interrupted


def catchable() -> tuple[int, ...]:
    """The stop signals this process has not been told to ignore.

    A command started in the background by a script (``hpsearch grid ... &``) or under ``nohup``
    inherits SIGINT (or SIGHUP) ignored, so that a Ctrl-C on the terminal spares it. hpsearch keeps
    that promise everywhere, while it writes too: a handler installed over SIG_IGN would make Ctrl-C
    stop it at some moments and not at others.
    """
    return tuple(s for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN)


class Stop(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be, so that both take the same path."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum: int, _frame: object) -> None:
    raise Stop(signum)


def signum(stop: KeyboardInterrupt) -> int:
    """The signal behind a KeyboardInterrupt (Ctrl-C's own has none: SIGINT)."""
    return getattr(stop, "signum", signal.SIGINT)


def by(signum: int) -> str:
    """How a message names the signal: Ctrl-C, SIGTERM, ..."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


@contextlib.contextmanager
def terminate_interrupts() -> Iterator[None]:
    """SIGTERM raises Stop, as Ctrl-C raises KeyboardInterrupt (main thread only; restored after)."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_stop) if main_thread else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Held:
    """Blocks during which Ctrl-C and SIGTERM are held back, then raised as Stop (nested blocks hold once)."""

    def __init__(self) -> None:
        self._depth = 0

    @contextlib.contextmanager
    def hold(self, swallow: bool = False) -> Iterator[None]:
        """Hold the stop signals while the block runs; ``swallow``: drop them instead of raising after it."""
        caught: list[int] = []
        previous = {}
        if self._depth == 0 and threading.current_thread() is threading.main_thread():
            previous = {s: signal.signal(s, lambda signum, _: caught.append(signum)) for s in catchable()}
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            for s, handler in previous.items():
                signal.signal(s, handler)
        if caught and not swallow:
            raise Stop(caught[0])
