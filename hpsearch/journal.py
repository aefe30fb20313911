"""The journal file's safety: an OS lock that dies with its holder, torn-tail detection, and repair.

A journal is one JSON record per line, appended under a lock. Two ways it goes wrong:

* a writer killed while holding Optuna's default symlink lock leaves the lock behind, and every
  other worker waits out its 30 s grace period; an ``fcntl.flock`` lock is released by the OS the
  moment its holder dies, so hpsearch uses one (on ``<journal>.flock``);
* a writer killed (or a machine losing power) in the middle of a record leaves a torn last line.
  Optuna skips it silently, then fails with a JSON error for every reader once anything is
  appended after it. hpsearch checks the tail under the lock before every append and refuses,
  naming ``hpsearch repair``, which keeps every complete record.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from optuna.storages.journal._file import BaseJournalFileLock

from hpsearch.errors import BadInput, RuntimeFailure

TAIL_BYTES = 1 << 16  # enough to hold the last record of any journal hpsearch writes


class FlockLock(BaseJournalFileLock):
    """Optuna's journal lock interface on ``fcntl.flock``: released by the OS when the holder dies."""

    def __init__(self, journal: str) -> None:
        self.path = journal + ".flock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock


def torn_message(shown: str) -> str:
    command = "hpsearch repair" if shown == "studies/hpsearch.journal" else f"hpsearch repair --storage {shown}"
    return f"the journal {shown} ends in a torn record (a writer died mid-write); run '{command}' to keep every complete record"


def _complete(line: bytes) -> bool:
    if not line.endswith(b"\n"):
        return False
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def is_torn(path: str) -> bool:
    """True when the last record is cut short or unreadable (check it under the journal lock)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return False
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read()
    except FileNotFoundError:
        return False
    if not tail.endswith(b"\n"):
        return True
    last = tail[:-1].rsplit(b"\n", 1)[-1] + b"\n"
    return not _complete(last)


def check_tail(path: str, shown: str) -> None:
    if is_torn(path):
        raise RuntimeFailure(torn_message(shown))


@dataclass(frozen=True)
class Repair:
    kept: int  # complete records kept
    dropped: int  # records (or pieces of one) dropped from the first bad one on
    backup: Path | None  # the untouched original, when anything was dropped


def repair(path: str) -> Repair:
    """Keep the journal's records up to the first incomplete one; back up the original first.

    Later records are dropped too: a journal is replayed in order and trial ids are counted from
    it, so a record after a gap could land on the wrong trial.
    """
    lock = FlockLock(path)
    lock.acquire()
    try:
        kept = 0
        good_bytes = 0
        dropped = 0
        with open(path, "rb") as f:
            for line in f:
                if dropped or not _complete(line):
                    dropped += 1
                    continue
                kept += 1
                good_bytes += len(line)
        if not dropped:
            return Repair(kept, 0, None)
        backup = Path(f"{path}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copyfile(path, backup)
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
            os.fsync(f.fileno())
        return Repair(kept, dropped, backup)
    finally:
        lock.release()


def repair_journal(url: str | None) -> Repair:
    """``hpsearch repair``: repair the journal at --storage (or the default one)."""
    from hpsearch.storage import redact, storage_location

    location = storage_location(url)
    if "://" in location:
        raise BadInput(f"{redact(location)} is a database; only journal files need repair")
    if not Path(location).is_file():
        raise BadInput(f"no journal at {location}; give its path with --storage")
    return repair(location)
