"""Workers: who runs which trial, and whether that worker is still alive (``--jobs`` is hpsearch.search.jobs).

Optuna records a trial as RUNNING and nothing more: a worker killed with kill -9, by the OOM killer
or by a power cut leaves its trials RUNNING forever, and the journal store has no heartbeat. So
every hpsearch process is a worker named ``host:pid:token`` that

* holds an ``fcntl.flock`` on ``<folder>/.workers/<host>-<pid>-<token>.lock`` for its whole life
  (the OS releases it the moment the process dies, whatever killed it);
* writes its name and a heartbeat time on each trial it pops (user attributes ``worker`` and
  ``heartbeat``), refreshes the heartbeat every epoch, and on PostgreSQL also from a thread.

Before it pops trials (at start-up and between populations, under the storage's batch lock) a
worker *reaps*: a RUNNING trial whose worker is dead is failed with outcome ``died`` and the reason
``worker host:pid died``, and its configuration is queued again. On the same machine, death is the
lock file being free (exact); across machines, a heartbeat older than ``GRACE_S`` (so a worker on
another machine is declared dead only after that long; clocks are assumed to agree to well
within it).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from hpsearch.search.records import HEARTBEAT_ATTR, WORKER_ATTR, Outcome, beat_by_id, fail, requeue, sign

if TYPE_CHECKING:
    from hpsearch.storage.store import Store

HEARTBEAT_S = 30.0  # PostgreSQL: how often the heartbeat thread writes
GRACE_S = 300.0  # a trial whose worker (on another machine) was silent this long is dead


def _host() -> str:
    return socket.gethostname().replace(":", "_").replace("/", "_")


def _lock_path(folder: Path, host: str, pid: int, token: str) -> Path:
    return folder / ".workers" / f"{host}-{pid}-{token}.lock"


def lock_folder(store: Store) -> Path:
    """Where the workers of a storage keep their lock files: beside the journal, else the temp folder."""
    path = getattr(store.backend, "path", None)
    return Path(path).parent if path else Path(tempfile.gettempdir()) / "hpsearch"


class Worker:
    """This process as a worker: its name, and the lock file that proves it alive."""

    def __init__(self, folder: Path) -> None:
        self.host, self.pid, self.token = _host(), os.getpid(), secrets.token_hex(4)
        self.name = f"{self.host}:{self.pid}:{self.token}"
        self.folder = folder
        path = _lock_path(folder, self.host, self.pid, self.token)
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep(folder, self.host)
        # Locked before it takes its name: a sweeper or reaper that finds a *.lock file free may remove it.
        making = path.with_suffix(".making")
        self._fd = os.open(making, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(making, path)
        self._path = path

    def close(self) -> None:
        """Leave cleanly: remove the lock file (a killed worker's file is removed by whoever reaps or sweeps it)."""
        with contextlib.suppress(OSError):
            self._path.unlink()
        os.close(self._fd)

    def mark(self, trial: optuna.Trial) -> None:
        """Sign a trial just popped: who runs it, and that it is alive now."""
        sign(trial, self.name)

    def is_alive(self, name: str | None, heartbeat: float | None) -> bool:
        """Whether the worker ``name`` still runs; see the module's docstring for how that is known."""
        if not name or name.count(":") != 2:
            return False  # popped and signed in one locked batch: unsigned means its writer died
        host, pid, token = name.split(":")
        if host == self.host:
            if name == self.name:
                return True
            path = _lock_path(self.folder, host, int(pid), token)
            if path.exists():
                return not _remove_if_free(path)
            if not _pid_exists(int(pid)):
                return False
        return heartbeat is not None and time.time() - heartbeat < GRACE_S


def _remove_if_free(path: Path) -> bool:
    """Remove a worker's lock file if no process holds it (its worker is dead); whether it was free."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        with contextlib.suppress(OSError):
            path.unlink()  # while locked: a worker's file is locked before it is named, so this one is dead
        return True
    finally:
        os.close(fd)


def sweep(folder: Path, host: str) -> int:
    """Remove the lock files that dead workers of this machine left (kill -9, a power cut); how many.

    Other machines' files are theirs to sweep: a lock held on another machine may not show here.
    """
    return sum(_remove_if_free(path) for path in (folder / ".workers").glob(f"{host}-*.lock"))


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap(study: optuna.Study, worker: Worker) -> None:
    """Fail the RUNNING trials of dead workers and queue their configurations again.

    Call it inside the storage's batch lock, so that no live worker is between popping a trial and
    signing it.
    """
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        name = trial.user_attrs.get(WORKER_ATTR)
        if worker.is_alive(name, trial.user_attrs.get(HEARTBEAT_ATTR)):
            continue
        who = ":".join(name.split(":")[:2]) if name else "unknown"
        fail(study, trial._trial_id, Outcome.DIED, f"worker {who} died; queued again", requeued=True)
        requeue(study, trial)


class Heartbeat:
    """A thread that refreshes the heartbeat of this worker's running trials (PostgreSQL only).

    The journal file is written under one lock by the main thread; its heartbeat is written with
    each epoch's reports instead.
    """

    def __init__(self, study: optuna.Study, interval: float = HEARTBEAT_S) -> None:
        self.study = study
        self.interval = interval
        self.trial_ids: set[int] = set()
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="hpsearch-heartbeat", daemon=True)
        self._thread.start()

    def watch(self, trial_ids: list[int]) -> None:
        with self._guard:
            self.trial_ids.update(trial_ids)

    def forget(self, trial_ids: list[int]) -> None:
        with self._guard:
            self.trial_ids.difference_update(trial_ids)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with self._guard:
                ids = list(self.trial_ids)
            for trial_id in ids:
                with contextlib.suppress(Exception):  # a trial told meanwhile, a dropped connection
                    beat_by_id(self.study._storage, trial_id)

    def stop(self) -> None:
        self._stop.set()


def running_elsewhere(study: optuna.Study, worker: Worker) -> int:
    """RUNNING trials of live workers other than ``worker`` (another process, here or on another machine)."""
    return sum(t.user_attrs.get(WORKER_ATTR) != worker.name
               and worker.is_alive(t.user_attrs.get(WORKER_ATTR), t.user_attrs.get(HEARTBEAT_ATTR))
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
