"""Where studies live: the journal file by default, any Optuna storage URL on request.

Measured (DESIGN.md): the journal file costs about 1 ms per trial against 24-39 ms for SQLite,
survives a killed process and can be shared by processes on one machine.
"""
from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import optuna
from optuna.storages import BaseStorage

from hpsearch.errors import BadInput, RuntimeFailure
from hpsearch.journal import JournalFile, check_readable, not_a_journal

DEFAULT_JOURNAL = Path("studies") / "hpsearch.journal"
ENV_VAR = "HPSEARCH_STORAGE"


def redact(url: str) -> str:
    """Hide the password of a storage URL: postgresql://me:secret@host/db -> postgresql://me:***@host/db."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def storage_location(url: str | None) -> str:
    """The storage to use: --storage, else $HPSEARCH_STORAGE, else studies/hpsearch.journal."""
    return url or os.environ.get(ENV_VAR) or str(DEFAULT_JOURNAL)


class _AdvisoryLocks:
    """PostgreSQL's ``batch()``: a session-level advisory lock held across the writes, released on disconnect.

    It makes a batch exclusive across workers, as the journal's file lock does: popping waiting trials,
    counting a budget and enqueueing missing grid points are then atomic on every machine.
    """

    KEY = 0x68707365  # "hpse": one lock per database, shared by every hpsearch worker

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.depth = 0
        self.connection: Any = None

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        import sqlalchemy

        if self.depth == 0:
            self.connection = self.engine.connect()
            self.connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self.KEY})
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0:
                connection, self.connection = self.connection, None
                try:
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self.KEY})
                    connection.commit()
                finally:
                    connection.close()


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
    backend: Any = None  # what batch() holds: the journal file backend, or PostgreSQL's advisory locks

    def batch(self) -> Any:
        """A context in which many writes cost one lock and one fsync (journal files; a no-op otherwise)."""
        return self.backend.batch() if self.backend is not None else _NoBatch()


def _with_driver(url: str) -> str:
    """postgresql:// means psycopg 3 to SQLAlchemy 2.1; the extra installs psycopg2, so name it when that is what there is."""
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _open_database(location: str, shown: str, attempts: int = 3) -> Store:
    """An RDB storage. Workers that meet an empty database together race to create Optuna's tables
    (a unique-key violation for all but one), so a failed open is tried again after a moment."""
    attempt = 1
    while True:
        try:
            storage = optuna.storages.RDBStorage(_with_driver(location))
            locks = _AdvisoryLocks(storage.engine) if storage.engine.dialect.name == "postgresql" else None
            return Store(storage, shown, locks)
        except Exception as error:
            if attempt < attempts and "UniqueViolation" in str(error):
                time.sleep(0.5 * attempt)
                attempt += 1
                continue
            message = redact(str(error).splitlines()[0] if str(error) else type(error).__name__)
            raise RuntimeFailure(f"cannot open storage {shown}: {message}") from None


def open_storage(url: str | None, create: bool) -> Store:
    """Open the storage, with the name to show people (never a password).

    A URL with '://' is an Optuna RDB URL (sqlite:///x.db, postgresql://...); anything else is the
    path of a journal file, created with its folder on the first write only.
    """
    location = storage_location(url)
    shown = redact(location)
    if "://" in location:
        return _open_database(location, shown)
    path = Path(location)
    if not path.exists() and not create:
        raise BadInput(f"no studies here: {shown} does not exist (run 'hpsearch grid' first, or pass --storage)")
    if path.is_dir():
        raise BadInput(f"--storage {shown} is a folder; give the path of a journal file")
    from optuna.storages.journal import JournalStorage

    try:
        if create:  # readers create and lock nothing: a read-only journal can be reported
            path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            check_readable(str(path), shown)
    except OSError as error:
        raise RuntimeFailure(f"cannot write the journal {shown}: {error.strerror}; choose another --storage") from None
    backend = JournalFile(str(path), shown)
    try:
        return Store(JournalStorage(backend), shown, backend)
    except (ValueError, TypeError, KeyError, AttributeError, AssertionError):  # a record of the right shape Optuna cannot replay
        raise not_a_journal(shown, backend.lines_read, "a record Optuna cannot replay") from None


def study_names(storage: BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def load_study(storage: BaseStorage, shown: str, name: str) -> optuna.Study:
    """An existing study, or a one-line error naming the studies that do exist."""
    names = study_names(storage)
    if name not in names:
        there = ", ".join(names) if names else "none"
        raise BadInput(f"no study named '{name}' in {shown} (studies there: {there})")
    return optuna.load_study(study_name=name, storage=storage)
