"""Where studies live: the journal file by default, any Optuna storage URL on request.

Measured (DESIGN.md): the journal file costs about 1 ms per trial against 24-39 ms for SQLite,
survives a killed process and can be shared by processes on one machine.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
from optuna.storages import BaseStorage

from hpsearch.errors import BadInput, RuntimeFailure
from hpsearch.storage.journal import JournalFile, Repair, check_readable, not_a_journal, repair
from hpsearch.storage.redact import redact, remember, scrub

DEFAULT_JOURNAL = Path("studies") / "hpsearch.journal"
ENV_VAR = "HPSEARCH_STORAGE"


def storage_location(url: str | None) -> str:
    """The storage to use: --storage, else $HPSEARCH_STORAGE, else studies/hpsearch.journal.

    An empty --storage is a mistake; an empty $HPSEARCH_STORAGE counts as unset (``HPSEARCH_STORAGE= hpsearch ...``).
    """
    if url is not None and not url.strip():
        raise BadInput("--storage is empty: give the path of a journal file (e.g. studies/hpsearch.journal) or a storage URL")
    location = url or os.environ.get(ENV_VAR, "").strip() or str(DEFAULT_JOURNAL)
    remember(location)
    return location


_KINDS = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a named pipe (FIFO)",
          stat.S_IFSOCK: "a socket"}


def _check_file(location: str, shown: str, example: str = DEFAULT_JOURNAL.name, prefix: str = "") -> Path:
    """The path of a storage file, which must be a regular file or not exist yet.

    Checked with stat(), before anything opens it: a FIFO would block the open, /dev/full would fill
    memory, /dev/null would swallow every trial. A folder (or a path ending in '/') is not a file either.
    ``prefix`` + a path + ``example`` is what to give instead.
    """
    path = Path(location)
    try:
        mode = os.stat(path).st_mode  # follows symlinks: a link to a regular file is fine
    except OSError:  # missing (created on first write), or unreachable: opening it says why
        mode = None
    if location.endswith(("/", os.sep)) or (mode is not None and stat.S_ISDIR(mode)):
        raise BadInput(f"the storage {shown} is a folder; give the path of a file in it, e.g. {prefix}{path / example}")
    if mode is not None and not stat.S_ISREG(mode):
        raise BadInput(f"the storage {shown} is {_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}, not a regular "
                       f"file; give the path of one, e.g. {prefix}{Path('studies') / example}")
    return path


class _DatabaseLock:
    """``batch()`` of a database: one lock, exclusive across processes and threads, held across a batch's writes.

    It makes a batch atomic for every worker, as the journal's file lock does: popping waiting trials,
    counting a budget and enqueueing missing grid points. ``take`` acquires the lock and returns its release.
    """

    def __init__(self, take: Callable[[], Callable[[], None]]) -> None:
        self._take = take
        self._mutex = threading.RLock()
        self._depth = 0
        self._release: Callable[[], None] | None = None

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        with self._mutex:
            if self._depth == 0:
                self._release = self._take()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    release, self._release = self._release, None
                    assert release is not None
                    release()


def _file_lock(database: str) -> Callable[[], None]:
    """SQLite (one machine): an flock on ``<database>.flock``, released by the OS if its holder dies."""
    fd = os.open(database + ".flock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return lambda: os.close(fd)  # closing the descriptor releases the lock


def _sql_lock(engine: Any, take: str, give: str, key: object) -> Callable[[], None]:
    """A server's session-level advisory lock (PostgreSQL, MySQL), released on disconnect if its holder dies."""
    import sqlalchemy

    connection = engine.connect()
    try:
        connection.execute(sqlalchemy.text(take), {"key": key})
    except BaseException:
        connection.close()
        raise

    def release() -> None:
        try:
            connection.execute(sqlalchemy.text(give), {"key": key})
            connection.commit()
        finally:
            connection.close()

    return release


_LOCKABLE = ("sqlite", "postgresql", "mysql", "mariadb")  # the dialects _database_lock has a lock for
_PG_KEY = 0x68707365  # "hpse": one lock per database, shared by every hpsearch worker


def _database_lock(engine: Any, database: str | None) -> _DatabaseLock | None:
    """The lock that makes workers exclusive on this database; None where hpsearch has none (one worker only)."""
    dialect = engine.dialect.name
    if dialect == "sqlite" and database:
        return _DatabaseLock(lambda: _file_lock(database))
    if dialect == "postgresql":
        return _DatabaseLock(lambda: _sql_lock(engine, "SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)",
                                               _PG_KEY))
    if dialect in ("mysql", "mariadb"):  # GET_LOCK names are server-wide: name the database in it
        key = f"hpsearch:{database}"[:64]
        return _DatabaseLock(lambda: _sql_lock(engine, "SELECT GET_LOCK(:key, -1)", "SELECT RELEASE_LOCK(:key)", key))
    return None


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
    backend: Any = None  # what batch() holds: the journal file backend, or a database's lock

    def batch(self) -> Any:
        """A context in which many writes are one exclusive batch (for journal files also one lock and one fsync)."""
        return self.backend.batch() if self.backend is not None else _NoBatch()


def _with_driver(url: str) -> str:
    """postgresql:// means psycopg 3 to SQLAlchemy 2.1; the extra installs psycopg2, so name it when that is what there is."""
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _database_url(location: str, shown: str, jobs: int) -> Any:
    """The parsed URL of an RDB storage, or a one-line BadInput before any driver sees a malformed one
    (or ``jobs`` workers a database that hpsearch cannot lock)."""
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = sqlalchemy.engine.make_url(_with_driver(location))
        dialect = url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise BadInput(f"--storage {shown} is neither a journal file path nor a storage URL hpsearch knows "
                       "(sqlite:///FILE, postgresql://..., mysql+pymysql://...)") from None
    if jobs > 1 and url.get_backend_name() not in _LOCKABLE:
        raise BadInput(f"--jobs {jobs} needs a storage whose workers hpsearch can make exclusive (a journal file, "
                       f"SQLite, PostgreSQL or MySQL); {url.get_backend_name()} is not one: use --jobs 1")
    try:
        dialect.import_dbapi()
    except ImportError as error:
        raise BadInput(f"--storage {shown} needs the database driver '{error.name or url.get_driver_name()}', "
                       "which is not installed (pip install it, or name another driver in the URL)") from None
    if url.password is not None and "@" in f"{url.host or ''}{url.database or ''}":  # it would reach the wrong host
        raise BadInput(f"the password in --storage {shown} holds an '@': write it percent-encoded, as %40")
    return url


def _sqlite_database(database: str | None) -> str | None:
    """The file of a SQLite URL's database part (the URI form file:x.db?mode=ro too); None when in memory."""
    database = (database or "").removeprefix("file:").split("?", 1)[0]
    return database if database not in ("", ":memory:") else None


def _sqlite_file(url: Any, shown: str, create: bool) -> str:
    """The database file of a SQLite URL: a regular file, created with its folder on the first write only."""
    database = _sqlite_database(url.database)
    if database is None or url.query.get("mode") == "memory":
        raise BadInput(f"--storage {shown} keeps the studies in memory, lost when the command ends; "
                       "give a file, e.g. sqlite:///studies.db")
    path = _check_file(database, shown, "studies.db", "sqlite:///")
    if not path.exists():
        if not create:
            raise BadInput(f"no studies here: {shown} does not exist (run 'hpsearch grid' first, or pass --storage)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RuntimeFailure(f"cannot create the folder of {shown}: {error.strerror}; choose another --storage") from None
    return database


def _open_database(location: str, shown: str, create: bool, jobs: int, attempts: int = 3) -> Store:
    """An RDB storage. Workers that meet an empty database together race to create Optuna's tables
    (a unique-key violation for all but one), so a failed open is tried again after a moment."""
    url = _database_url(location, shown, jobs)
    sqlite = url.get_backend_name() == "sqlite"
    database = _sqlite_file(url, shown, create) if sqlite else url.database
    attempt = 1
    while True:
        # SQLite: workers meeting a new file would race to create Optuna's tables; its lock makes them take turns
        release = _file_lock(database) if sqlite and database else None
        try:
            storage = optuna.storages.RDBStorage(_with_driver(location))
            break
        except Exception as error:
            if attempt < attempts and "UniqueViolation" in str(error):
                time.sleep(0.5 * attempt)
                attempt += 1
                continue
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise RuntimeFailure(scrub(f"cannot open storage {shown}: {message}", [location])) from None
        finally:
            if release is not None:
                release()
    # Its connections close at exit (hpsearch.shutdown skips the teardown that would drop them), or
    # when the storage is freed: a database server then sees a client leave, not a connection reset.
    weakref.finalize(storage, storage.engine.dispose)
    return Store(storage, shown, _database_lock(storage.engine, database))


def open_storage(url: str | None, create: bool, jobs: int = 1) -> Store:
    """Open the storage, with the name to show people (never a password).

    A URL with '://' is an Optuna RDB URL (sqlite:///x.db, postgresql://...); anything else is the
    path of a journal file, created with its folder on the first write only. ``jobs``: the worker
    processes that will share it, refused where the storage cannot keep them from taking the same trial.
    """
    location = storage_location(url)
    shown = redact(location)
    if "://" in location:
        return _open_database(location, shown, create, jobs)
    path = _check_file(location, shown)
    if not path.exists() and not create:
        raise BadInput(f"no studies here: {shown} does not exist (run 'hpsearch grid' first, or pass --storage)")
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


_SIDE_FILES = (".flock", "-journal", "-wal", "-shm")  # hpsearch's lock file; SQLite's rollback journal, WAL, shared memory


def _storage_file(location: str) -> Path | None:
    """The file a storage lives in: the journal, a SQLite database; None for a server's database."""
    if "://" not in location:
        return Path(location)
    if not location.startswith("sqlite") or ":///" not in location:
        return None
    database = _sqlite_database(location.split(":///", 1)[1])
    return Path(database) if database else None


def is_storage_file(path: Path, url: str | None) -> bool:
    """Whether ``path`` is one of the files of the storage ``url`` (or the default one), however it is reached
    (``..``, a symlink, a hard link): the journal or database itself, its lock files (hpsearch's ``.flock``,
    Optuna's ``.lock`` and ``.lock*.rename``), SQLite's side files, and the workers' lock files beside it."""
    main = _storage_file(storage_location(url))
    if main is None:
        return False
    target, base = path.resolve(), main.resolve()
    if target.parent == base.parent / ".workers":
        return True
    if target.parent == base.parent and (target.name == base.name or target.name.startswith(base.name + ".lock")
                                         or target.name in {base.name + side for side in _SIDE_FILES}):
        return True
    try:
        return os.path.samefile(path, main)
    except OSError:  # one of them does not exist: not the same file
        return False


def study_names(storage: BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def load_study(storage: BaseStorage, shown: str, name: str) -> optuna.Study:
    """An existing study, or a one-line error naming the studies that do exist."""
    names = study_names(storage)
    if name not in names:
        there = ", ".join(names) if names else "none"
        raise BadInput(f"no study named '{name}' in {shown} (studies there: {there})")
    return optuna.load_study(study_name=name, storage=storage)


def repair_journal(url: str | None) -> Repair:
    """``hpsearch repair``: repair the journal at --storage (or the default one)."""
    location = storage_location(url)
    if "://" in location:
        raise BadInput(f"{redact(location)} is a database; only journal files need repair")
    if not Path(location).is_file():
        raise BadInput(f"no journal at {location}; give its path with --storage")
    return repair(location, redact(location))


def logs_folder(store: Store, study: str) -> Path:
    """Where the user's code's trial logs go: ``logs/STUDY/`` beside the journal or SQLite file (so that
    studies/hpsearch.journal has studies/logs/STUDY/trial-N.log); for a database server, ./studies/logs/STUDY."""
    path = getattr(store.backend, "path", None)
    if path is None and store.shown.startswith("sqlite:///"):
        path = store.shown.removeprefix("sqlite:///").split("?", 1)[0]
    base = Path(path).parent if path else DEFAULT_JOURNAL.parent
    return base / "logs" / study
