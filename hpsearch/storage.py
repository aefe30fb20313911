"""Where studies live: the journal file by default, any Optuna storage URL on request.

Measured (DESIGN.md): the journal file costs about 1 ms per trial against 24-39 ms for SQLite,
survives a killed process and can be shared by processes on one machine.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import optuna
from optuna.storages import BaseStorage

from hpsearch.errors import BadInput, RuntimeFailure

DEFAULT_JOURNAL = Path("studies") / "hpsearch.journal"
ENV_VAR = "HPSEARCH_STORAGE"


def redact(url: str) -> str:
    """Hide the password of a storage URL: postgresql://me:secret@host/db -> postgresql://me:***@host/db."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def storage_location(url: str | None) -> str:
    """The storage to use: --storage, else $HPSEARCH_STORAGE, else studies/hpsearch.journal."""
    return url or os.environ.get(ENV_VAR) or str(DEFAULT_JOURNAL)


class _Batch:
    """Holds the journal's file lock across many writes and syncs the file to disk once at the end.

    Every write is still flushed at once (this process reads its own writes back), and no other
    process can write in between, so the order of records is the order of the operations.
    Measured on the 384-point benchmark grid: 8,065 writes cost 2.2 s one fsync each.
    """

    def __init__(self, backend: Any) -> None:  # a BatchingJournalFile
        self.backend = backend

    def __enter__(self) -> None:
        backend = self.backend
        if backend.depth == 0:
            backend.lock.acquire()
            try:
                backend.file = open(backend.path, "ab")
            except BaseException:
                backend.lock.release()
                raise
        backend.depth += 1

    def __exit__(self, kind: type | None, error: BaseException | None, tb: TracebackType | None) -> None:
        backend = self.backend
        backend.depth -= 1
        if backend.depth == 0:
            file, backend.file = backend.file, None
            try:
                assert file is not None
                os.fsync(file.fileno())
                file.close()
            finally:
                backend.lock.release()


def _batching_backend(path: str) -> Any:
    from optuna.storages.journal import JournalFileBackend

    class BatchingJournalFile(JournalFileBackend):
        """Optuna's journal file backend, plus ``batch()``; the file format is unchanged."""

        def __init__(self, file_path: str) -> None:
            super().__init__(file_path)
            self.path = file_path
            self.lock = self._lock
            self.depth = 0
            self.file: IO[bytes] | None = None

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            if self.file is None:
                return super().append_logs(logs)
            self.file.write(("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode())
            self.file.flush()

        def batch(self) -> _Batch:
            return _Batch(self)

    return BatchingJournalFile(path)


class _NoBatch:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@dataclass(frozen=True)
class Store:
    """An opened storage, the name to show people, and a way to group writes."""

    storage: BaseStorage
    shown: str
    backend: Any = None  # the journal file backend, when the storage is a journal file

    def batch(self) -> Any:
        """A context in which many writes cost one lock and one fsync (journal files; a no-op otherwise)."""
        return self.backend.batch() if self.backend is not None else _NoBatch()


def open_storage(url: str | None, create: bool) -> Store:
    """Open the storage, with the name to show people (never a password).

    A URL with '://' is an Optuna RDB URL (sqlite:///x.db, postgresql://...); anything else is the
    path of a journal file, created with its folder on the first write only.
    """
    location = storage_location(url)
    shown = redact(location)
    if "://" in location:
        try:
            return Store(optuna.storages.RDBStorage(location), shown)
        except Exception as error:
            message = redact(str(error).splitlines()[0] if str(error) else type(error).__name__)
            raise RuntimeFailure(f"cannot open storage {shown}: {message}") from None
    path = Path(location)
    if not path.exists() and not create:
        raise BadInput(f"no studies here: {shown} does not exist (run 'hpsearch grid' first, or pass --storage)")
    if path.is_dir():
        raise BadInput(f"--storage {shown} is a folder; give the path of a journal file")
    from optuna.storages.journal import JournalStorage

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = _batching_backend(str(path))
    except OSError as error:
        raise RuntimeFailure(f"cannot write the journal {shown}: {error.strerror}; choose another --storage") from None
    return Store(JournalStorage(backend), shown, backend)


def study_names(storage: BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def load_study(storage: BaseStorage, shown: str, name: str) -> optuna.Study:
    """An existing study, or a one-line error naming the studies that do exist."""
    names = study_names(storage)
    if name not in names:
        there = ", ".join(names) if names else "none"
        raise BadInput(f"no study named '{name}' in {shown} (studies there: {there})")
    return optuna.load_study(study_name=name, storage=storage)
