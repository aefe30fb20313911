"""One exception hierarchy for the library; the CLI turns it into a line and an exit status."""
from __future__ import annotations

import signal
from typing import Sequence


class HpsearchError(Exception):
    """Base of every error hpsearch raises on purpose. The message is one line for a person."""

    exit_code = 1


class BadInput(HpsearchError):
    """The user asked for something invalid: fix the command line, the file or the study name."""

    exit_code = 2


class RuntimeFailure(HpsearchError):
    """Something went wrong while running (storage, device, training)."""

    exit_code = 1


class Interrupted(HpsearchError):
    """The run was stopped by Ctrl-C; the running trials were recorded as interrupted."""

    exit_code = 130

    @staticmethod
    def by(signum: int, message: str) -> Interrupted:
        """The error for a stop by this signal: SIGTERM exits 143 (128 + 15), Ctrl-C 130."""
        return Terminated(message) if signum == signal.SIGTERM else Interrupted(message)


class Terminated(Interrupted):
    """The run was stopped by SIGTERM (kill, a batch scheduler); handled like Ctrl-C."""

    exit_code = 143


def listed(items: Sequence[object], most: int) -> str:
    """Items named in a one-line message: "3, 7, 9" or, beyond ``most``, "3, 7, 9 and 12 more"."""
    more = f" and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(map(str, items[:most])) + more
