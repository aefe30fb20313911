"""The journal file: what counts as one, its locks, writes that fail cleanly, and repair.

A journal is one JSON record per line, appended under a lock (Optuna's JournalStorage format).
What can go wrong, and what hpsearch does about it:

* A writer killed while holding Optuna's default lock file (``<journal>.lock``) leaves it behind,
  and every other writer waits out a 30 s grace period. hpsearch processes exclude each other with
  an ``fcntl.flock`` on ``<journal>.flock``, which the OS releases the moment its holder dies, and
  then also take Optuna's lock file, so that plain Optuna writers and hpsearch never write at once;
  a lock file left by a dead hpsearch is recognised (it says so) and taken over at once.
* A writer killed mid-record leaves a torn line. Optuna's reader skips a torn last line and fails
  on every later one, so hpsearch checks the tail under the lock before every append and refuses,
  naming ``hpsearch repair``, which keeps every complete record wherever it is.
* A write that fails (disk full) is cut back to the last complete record, so the journal stays
  readable and the same command works again once there is space.
* A file that is not a journal at all (JSON of another shape, a README, random bytes) is named as
  such and never touched.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import signal
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from optuna.storages.journal import BaseJournalBackend

from hpsearch import signals
from hpsearch.errors import BadInput, RuntimeFailure

# The fields Optuna's replay reads from each kind of record (JournalOperation in optuna 5).
_TRIAL = frozenset({"worker_id", "trial_id"})
_STUDY = frozenset({"worker_id", "study_id"})
OP_FIELDS: dict[int, frozenset[str]] = {
    0: frozenset({"worker_id", "study_name", "directions"}),
    1: _STUDY,
    2: _STUDY | {"user_attr"},
    3: _STUDY | {"system_attr"},
    4: _STUDY | {"datetime_start"},
    5: _TRIAL | {"param_name", "param_value_internal", "distribution"},
    6: _TRIAL | {"state", "values"},
    7: _TRIAL | {"step", "intermediate_value"},
    8: _TRIAL | {"user_attr"},
    9: _TRIAL | {"system_attr"},
    10: frozenset(),
}
RECORD_START = b'{"op_code":'  # how every record begins: Optuna writes op_code first, without spaces
CHUNK = 1 << 16  # read backwards this much at a time to find the last line, however long it is
NOTICE_AFTER_S = 1.0  # a writer that waits longer for the lock says so
WRITER_WAIT_S = 3.0  # a reader that sees a torn tail while a writer holds the lock waits this long for it
STALE_S = 30.0  # Optuna's grace period: its lock file unchanged this long belongs to a dead writer
MARK = b"hpsearch"  # what hpsearch writes into Optuna's lock file, so a dead hpsearch's lock is known
FULL = (errno.ENOSPC, errno.EDQUOT)

log = logging.getLogger("hpsearch")


def _repair_command(shown: str) -> str:
    return "hpsearch repair" if shown == "studies/hpsearch.journal" else f"hpsearch repair --storage {shown}"


def torn_message(shown: str, line: int | None = None) -> str:
    """A torn last line (``line`` None), or a torn line with complete records after it."""
    where = "ends in a torn record" if line is None else f"has a torn record at line {line}, with records after it"
    return (f"the journal {shown} {where} (a writer died mid-write); run '{_repair_command(shown)}' "
            "to keep every complete record")


def not_a_journal(shown: str, line: int, why: str) -> BadInput:
    return BadInput(f"{shown} is not an Optuna journal (line {line}: {why}); "
                    "give the path of a journal file with --storage")


def _record_problem(record: object) -> str | None:
    """Why a parsed line is not an Optuna journal record, or None when it is one."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not a record"
    op = record.get("op_code")
    if type(op) is not int or op not in OP_FIELDS:
        return f"unknown op_code {op!r}" if "op_code" in record else "no op_code"
    missing = sorted(OP_FIELDS[op] - record.keys())
    return f"op_code {op} without {', '.join(missing)}" if missing else None


@dataclass
class Line:
    """One line of a journal: a record, a torn record, or something that is not a journal's."""

    record: dict[str, Any] | None = None
    torn: bool = False
    problem: str | None = None  # set when the line is not an Optuna journal's


def classify(line: bytes) -> Line:
    """A complete record parses and ends in a newline; a torn one begins like a record (or is cut in its first bytes)."""
    try:
        record = json.loads(line)
    except ValueError:  # UnicodeDecodeError included
        text = line.removesuffix(b"\n")
        if text and (text.startswith(RECORD_START) or RECORD_START.startswith(text)):
            return Line(torn=True)
        return Line(problem="an empty line" if line.strip() == b"" else "not JSON")
    problem = _record_problem(record)
    if problem is not None:
        return Line(problem=problem)
    return Line(record=record) if line.endswith(b"\n") else Line(torn=True)  # Optuna reads no line without its newline


def last_line(path: str) -> tuple[int, bytes]:
    """The journal's last line, complete or not, however long, and its 1-based number (0: empty).

    The number counts lines from the start, so it is only computed here when there is no newline
    to find quickly; callers use it for messages.
    """
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0, b""
        f.seek(size - 1)
        end = size - 1 if f.read(1) == b"\n" else size  # where the search for the previous newline starts
        start = 0
        while end > 0:
            step = min(CHUNK, end)
            f.seek(end - step)
            found = f.read(step).rfind(b"\n")
            if found >= 0:
                start = end - step + found + 1
                break
            end -= step
        f.seek(start)
        return start, f.read(size - start)


def is_torn(path: str, shown: str | None = None) -> bool:
    """True when the last line is torn; raises when it is not an Optuna journal's. Empty: fine."""
    try:
        start, line = last_line(path)
    except FileNotFoundError:
        return False
    if not line:
        return False
    kind = classify(line)
    if kind.problem is not None:
        with open(path, "rb") as f:
            number = f.read(start).count(b"\n") + 1
        raise not_a_journal(shown or path, number, kind.problem)
    return kind.torn


def _writer_busy(path: str) -> bool:
    """Whether a writer holds the journal's lock now: Optuna's lock file exists, or hpsearch's flock is held."""
    if os.path.lexists(path + ".lock"):
        return True
    try:
        fd = os.open(path + ".flock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the probe's shared lock
    return False


def check_readable(path: str, shown: str) -> None:
    """Refuse a file that is not a journal, or one whose last record is torn, without taking any lock.

    Readers need not be able to write (a read-only journal can be reported), so they lock nothing;
    a torn-looking tail while a writer holds the lock is that writer still writing: wait for it.
    """
    deadline = time.monotonic() + WRITER_WAIT_S
    while is_torn(path, shown):
        if not _writer_busy(path) or time.monotonic() > deadline:
            raise RuntimeFailure(torn_message(shown))
        time.sleep(0.01)


class LockWaitInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM while waiting for the journal's lock: nothing was written. ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM raise while waiting, even where a caller holds them back until its writes are done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        raise LockWaitInterrupted(signum)

    previous = {s: signal.signal(s, stop) for s in signals.catchable()}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class JournalLock:
    """hpsearch's flock on ``<journal>.flock``, then Optuna's own lock file ``<journal>.lock``.

    The flock orders hpsearch processes and dies with its holder. Optuna's lock file (the one its
    JournalFileSymlinkLock and JournalFileOpenLock both create) keeps plain Optuna writers out while
    hpsearch writes, and hpsearch out while they do. Whoever holds the flock knows no live hpsearch
    holds the lock file, so one that says MARK was left by a dead hpsearch and is taken over.
    """

    def __init__(self, journal: str, shown: str) -> None:
        self.path = journal + ".flock"
        self.optuna_path = journal + ".lock"
        self.shown = shown
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._wait(lambda: _try_flock(fd), "held by another hpsearch process")
            self._wait(self._try_optuna_lock, f"held by another Optuna process ({self.optuna_path})")
        except BaseException:
            os.close(fd)  # closing releases the flock
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(FileNotFoundError):  # a plain writer may have forced it after 30 s
                os.unlink(self.optuna_path)
        finally:
            os.close(fd)

    def touch(self) -> None:
        """Show plain Optuna writers that the lock file is still held (they force it after 30 s unchanged)."""
        with contextlib.suppress(OSError):
            os.utime(self.optuna_path)

    def _wait(self, take: Callable[[], bool], whose: str) -> None:
        if take():
            return
        notice_at: float | None = time.monotonic() + NOTICE_AFTER_S
        delay = 0.001
        with _interruptible():
            while not take():
                if notice_at is not None and time.monotonic() >= notice_at:
                    log.warning(f"waiting for the lock on {self.shown}, {whose}; Ctrl-C stops waiting")
                    notice_at = None
                time.sleep(delay)
                delay = min(2 * delay, 0.05)

    def _try_optuna_lock(self) -> bool:
        try:
            fd = os.open(self.optuna_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if self._stale():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.optuna_path)
            return False
        try:
            os.write(fd, MARK + f" {os.getpid()}\n".encode())
        except BaseException:
            os.unlink(self.optuna_path)  # an unmarked lock file would pass for a live plain writer's
            raise
        finally:
            os.close(fd)
        return True

    def _stale(self) -> bool:
        try:
            info = os.lstat(self.optuna_path)
            if stat.S_ISREG(info.st_mode) and info.st_size < 64:
                with open(self.optuna_path, "rb") as f:
                    if f.read().startswith(MARK):
                        return True
        except FileNotFoundError:
            return False
        return time.time() - info.st_mtime > STALE_S


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def write_error(error: OSError, shown: str) -> RuntimeFailure:
    """A failed write, by its cause; every record written before it stays in the journal."""
    if error.errno in FULL:
        return RuntimeFailure(f"the disk is full: cannot write the journal {shown}; the results so far are kept "
                              "in it: free some space, then re-run the same command")
    return RuntimeFailure(f"cannot write the journal {shown}: {error.strerror or error}; "
                          "the results so far are kept in it")


class JournalFile(BaseJournalBackend):
    """Optuna's journal file format, plus ``batch()``, a journal check on every line read, clean failed writes.

    Module-level and picklable (like Optuna's JournalFileBackend): only the path travels; the lock,
    the open file and the batch depth are rebuilt, and guarded by a mutex so that several threads
    may write. A batch belongs to the process: another thread's writes during it join it.
    Nothing is created until the first write, so a read-only journal can be read.
    """

    def __init__(self, path: str, shown: str) -> None:
        self.path = path
        self.shown = shown
        self._setup()

    def _setup(self) -> None:
        self.lock = JournalLock(self.path, self.shown)
        self._offsets: dict[int, int] = {0: 0}  # line number -> byte offset, for reading on from there
        self._mutex = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._touched = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "shown": self.shown}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup()

    @property
    def lines_read(self) -> int:
        """How many lines have been read (the last one read is the last one replayed)."""
        return max(self._offsets)

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        """Optuna's reading rule (a torn last line is left for later), but a bad line raises a clear error."""
        number = log_number_from if log_number_from in self._offsets else 0
        offset = self._offsets[number]
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:  # created by the first write
            return
        with f:
            size = os.fstat(f.fileno()).st_size  # lines written after this moment are read next time
            f.seek(offset)
            for line in f:
                if offset + len(line) > size:
                    break
                kind = classify(line)
                if kind.torn and not line.endswith(b"\n"):
                    break  # a writer mid-write, or a torn tail that writers refuse to append after
                if kind.torn:
                    raise RuntimeFailure(torn_message(self.shown, number + 1))
                if kind.record is None:
                    raise not_a_journal(self.shown, number + 1, kind.problem or "")
                offset += len(line)
                number += 1
                self._offsets[number] = offset
                if number > log_number_from:
                    yield kind.record

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = ("\n".join(json.dumps(entry, separators=(",", ":")) for entry in logs) + "\n").encode()
        with self.batch(), self._mutex:
            assert self._fd is not None
            start = os.fstat(self._fd).st_size  # under the lock, nobody else appends
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as error:
                with contextlib.suppress(OSError):  # leave no half record behind
                    os.ftruncate(self._fd, start)
                raise write_error(error, self.shown) from None
            if time.monotonic() - self._touched > STALE_S / 3:
                self.lock.touch()
                self._touched = time.monotonic()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Hold the lock across many writes and sync the file once at the end.

        Every write still goes to the file at once (this process reads its own writes back), and no
        other process writes in between, so the order of records is the order of the operations.
        Measured on the 384-point benchmark grid: 8,065 writes cost 2.2 s one fsync each.
        """
        with self._mutex:
            if self._depth == 0:
                self._open()
            self._depth += 1
        try:
            yield
        finally:
            with self._mutex:
                self._depth -= 1
                if self._depth == 0:
                    self._close()

    def _cannot_write(self, error: OSError) -> RuntimeFailure:
        if error.errno in FULL:
            return write_error(error, self.shown)
        return RuntimeFailure(f"cannot write the journal {self.shown}: {error.strerror}; choose another --storage")

    def _open(self) -> None:
        try:
            self.lock.acquire()
        except OSError as error:
            raise self._cannot_write(error) from None
        try:
            if is_torn(self.path, self.shown):  # never append after a torn record
                raise RuntimeFailure(torn_message(self.shown))
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._touched = time.monotonic()
        except OSError as error:
            self.lock.release()
            raise self._cannot_write(error) from None
        except BaseException:
            self.lock.release()
            raise

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                try:
                    os.fsync(fd)
                except OSError as error:
                    raise write_error(error, self.shown) from None
                finally:
                    os.close(fd)
        finally:
            self.lock.release()


@dataclass(frozen=True)
class Repair:
    kept: int  # complete records kept
    torn: list[int] = field(default_factory=list)  # line numbers of the torn records dropped
    backup: Path | None = None  # the untouched original, when anything was dropped

    @property
    def dropped(self) -> int:
        return len(self.torn)


def _scan(path: str, shown: str) -> Repair:
    """Count the complete records and find the torn ones; a line of anything else refuses the file."""
    kept, torn = 0, []
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            kind = classify(line)
            if kind.problem is not None:
                raise not_a_journal(shown, number, kind.problem)
            if kind.torn:
                torn.append(number)
            else:
                kept += 1
    return Repair(kept, torn)


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _backup(path: Path) -> Path:
    """A hard link to the original (no space needed), else a synced copy: complete, or not there at all."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 100):
        backup = path.with_name(f"{path.name}.torn-{stamp}" + (f"-{n}" if n > 1 else ""))
        if os.path.lexists(backup):
            continue
        try:
            os.link(path, backup)
            return backup
        except FileExistsError:
            continue
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK):
                raise
        with _written(backup.with_name(f"{backup.name}.{os.getpid()}.partial")) as (partial, out):
            with open(path, "rb") as source:
                while chunk := source.read(CHUNK):
                    out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
            os.rename(partial, backup)
        return backup
    raise FileExistsError(errno.EEXIST, "too many backups", str(path))


@contextlib.contextmanager
def _written(path: Path) -> Iterator[tuple[Path, Any]]:
    """A new file (never an existing one), removed again unless the body renamed it into place."""
    with open(path, "xb") as out:
        try:
            yield path, out
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def repair(path: str, shown: str | None = None) -> Repair:
    """Drop the torn records, keep every complete one wherever it is, and keep the original as a backup.

    Optuna's reader never applied a torn line (it leaves a torn tail for later and raises at a torn
    line with lines after it), so no writer built on one: trial ids count only complete records, and
    dropping the torn ones keeps what every reader replayed. The new journal is written beside the
    old one and synced, the backup made, and only then is it renamed over the original; a failure
    at any step changes nothing.
    """
    shown = shown or path
    found = _scan(path, shown)  # first without the lock, so a file that is not a journal gets nothing beside it
    if not found.torn:
        return found
    lock = JournalLock(path, shown)
    try:
        lock.acquire()
    except OSError as error:
        raise RuntimeFailure(f"cannot repair {shown}: {error.strerror}; nothing was changed") from None
    target = Path(path)
    backup = None
    try:
        found = _scan(path, shown)
        if not found.torn:
            return found
        with _written(target.with_name(f"{target.name}.repair-{os.getpid()}")) as (fresh, out):
            with open(path, "rb") as source:
                for line in source:
                    if not classify(line).torn:
                        out.write(line)
            out.flush()
            os.fsync(out.fileno())
            os.chmod(fresh, stat.S_IMODE(os.stat(path).st_mode))
            backup = _backup(target)
            os.replace(fresh, target)  # the last step that can fail
        with contextlib.suppress(OSError):
            _sync_folder(target.parent)
        return Repair(found.kept, found.torn, backup)
    except OSError as error:
        if backup is not None:  # the original is still in place
            with contextlib.suppress(OSError):
                os.unlink(backup)
        cause = "the disk is full" if error.errno in FULL else f"{error.strerror or error}"
        raise RuntimeFailure(f"cannot repair {shown}: {cause}; nothing was changed") from None
    finally:
        lock.release()
