"""Leaving the process: what Python's exit does that matters, without the teardown that does not.

Once torch is imported, the interpreter's own teardown (every module's objects freed one by one, then
torch's C++ static destructors) takes 0.4-0.6 s on a 2-core machine: a fifth of a small grid's whole
run, spent after the last result is written. hpsearch's processes (the command, each --jobs worker)
therefore end with ``leave``: the exit handlers run (logging's flush, temporary folders, the
handlers of the user's own code), every open file is flushed, database connections close, and
then the process ends. While another non-daemon thread still runs, the ordinary exit waits for it.
"""
from __future__ import annotations

import atexit
import gc
import io
import os
import sys
import threading
from typing import NoReturn

# What a still-open file can hold unwritten: the teardown would flush these as it frees them.
_BUFFERED = (io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom)


def _flush_open_files() -> None:
    # issubclass(type(...)) rather than isinstance: isinstance reads __class__, a property on some of
    # torch's objects that warns.
    for stream in [o for o in gc.get_objects() if issubclass(type(o), _BUFFERED)]:
        try:
            if not stream.closed and stream.writable():
                stream.flush()
        except (OSError, ValueError):  # a closed pipe or file: nothing can be written to it any more
            pass


def leave(code: object = 0) -> NoReturn:
    """End the process with ``code`` as ``sys.exit(code)`` would, without the interpreter's teardown."""
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)  # Python joins non-daemon threads first; so do we
    atexit._run_exitfuncs()
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message") prints it and exits 1
        print(code, file=sys.stderr)
        status = 1
    _flush_open_files()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            status = status or 120  # what Python returns when it cannot flush stdout at exit
    os._exit(status & 0xFF)
