"""One exception hierarchy for the library; the CLI turns it into a line and an exit status."""
from __future__ import annotations


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
