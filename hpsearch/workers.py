"""Workers: who runs which trial, whether that worker is still alive, and ``--jobs``.

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
import ctypes
import fcntl
import math
import os
import pickle
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import HpsearchError, Interrupted, RuntimeFailure
from hpsearch.records import HEARTBEAT_ATTR, OUTCOME, WORKER_ATTR, Outcome, beat_by_id, fail, finished, requeue, sign

if TYPE_CHECKING:
    from hpsearch.search import Progress, ProgressCallback, SearchOutcome
    from hpsearch.spec import StudySpec
    from hpsearch.storage import Store

HEARTBEAT_S = 30.0  # PostgreSQL: how often the heartbeat thread writes
GRACE_S = 300.0  # a trial whose worker (on another machine) was silent this long is dead
POLL_S = 0.5  # --jobs: how often the parent reads the study for its progress bar


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


def reap(study: optuna.Study, worker: Worker) -> list[int]:
    """Fail the RUNNING trials of dead workers and queue their configurations again.

    Call it inside the storage's batch lock, so that no live worker is between popping a trial and
    signing it. Returns the numbers of the trials reaped.
    """
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        name = trial.user_attrs.get(WORKER_ATTR)
        if worker.is_alive(name, trial.user_attrs.get(HEARTBEAT_ATTR)):
            continue
        who = ":".join(name.split(":")[:2]) if name else "unknown"
        fail(study, trial._trial_id, Outcome.DIED, f"worker {who} died; queued again", requeued=True)
        requeue(study, trial)
        reaped.append(trial.number)
    return reaped


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


# --- --jobs N: worker processes on one machine ---


def worker_devices(device: str, jobs: int) -> list[str]:
    """One device per worker: on several visible GPUs, round robin (cuda:0, cuda:1, ...)."""
    if device not in ("auto", "cuda"):
        return [device] * jobs
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return [device] * jobs
    return [f"cuda:{i % count}" for i in range(jobs)]


def running_elsewhere(study: optuna.Study, worker: Worker) -> int:
    """RUNNING trials of live workers other than ``worker`` (another process, here or on another machine)."""
    return sum(t.user_attrs.get(WORKER_ATTR) != worker.name
               and worker.is_alive(t.user_attrs.get(WORKER_ATTR), t.user_attrs.get(HEARTBEAT_ATTR))
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def _pid(trial: FrozenTrial) -> int | None:
    name = trial.user_attrs.get(WORKER_ATTR) or ""
    return int(name.split(":")[1]) if name.count(":") == 2 and name.split(":")[1].isdigit() else None


def _study(store: Store, spec: StudySpec) -> list[FrozenTrial]:
    return optuna.load_study(study_name=spec.study, storage=store.storage).get_trials(deepcopy=False)


def _progress(trials: list[FrozenTrial], spec: StudySpec) -> Progress:
    """The bar's figures from the study as stored: finished trials, the study's size, its best value."""
    from hpsearch.search import Progress, _best

    done = sum(finished(t) for t in trials)
    todo = sum(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
    return Progress(done, max(done + todo, spec.trials or 0), _best(trials, spec.metric == "val_loss"))


def _stopped_signal(code: int | None) -> int | None:
    """The signal that ended a worker: killed by it (negative status), or stopped by it cleanly (130, 143)."""
    if code is None or code >= 0:
        return {130: signal.SIGINT, 143: signal.SIGTERM}.get(code or 0)
    return -code


def run_jobs(spec: StudySpec, progress: ProgressCallback | None = None) -> SearchOutcome:
    """Run ``spec.jobs`` worker processes on one study; show one progress bar; Ctrl-C / SIGTERM reach all.

    Each worker is ``python -m hpsearch.workers`` in its own session (so a terminal's Ctrl-C reaches
    the parent only, which passes it on once), given its StudySpec on stdin, which stays open: the
    worker stops when it closes (the parent died), see ``_die_with_parent``.

    A worker that dies (kill -9, the OOM killer) does not stop the search: its trials are failed and
    queued again by the next worker that asks for work, and what is left when all have ended is
    trained here; the outcome carries a warning. The grid is then complete, as the user asked, so
    the run succeeds (exit 0): the warning says what happened, the table shows every result.
    """
    from hpsearch.search import SearchOutcome, prepare_study, run_search

    spec, store, _ = prepare_study(spec)  # settings checked once, before any worker starts
    trials = _study(store, spec)
    already = sum(finished(t) for t in trials)
    failed_before = sum(finished(t) and t.state == TrialState.FAIL for t in trials)
    # Populations no larger than a fair share, so that every worker gets some of the work.
    left = spec.grid_size() - already if spec.command == "grid" else (spec.trials or 0) - already
    share = min(spec.max_population, max(1, math.ceil(left / spec.jobs)))
    logs = [tempfile.TemporaryFile() for _ in range(spec.jobs)]
    # The cores shared out: N workers each with every core's thread would spin against each other.
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // spec.jobs))} | dict(os.environ)
    procs: list[subprocess.Popen[bytes]] = []
    stopped: list[int] = []

    def stop(signum: int, _frame: object = None) -> None:
        stopped.append(signum)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for device, log in zip(worker_devices(spec.device, spec.jobs), logs):
            if stopped:
                break
            proc = subprocess.Popen([sys.executable, "-m", "hpsearch.workers"], stdin=subprocess.PIPE, env=env,
                                    stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
            procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write(pickle.dumps((os.getpid(), replace(spec, jobs=1, device=device, max_population=share))))
            proc.stdin.flush()  # and left open: its end of file tells the worker that this process died
        while any(p.poll() is None for p in procs):
            if progress is not None:
                progress(_progress(_study(store, spec), spec))
            time.sleep(POLL_S)
        if progress is not None:  # the end as stored: the workers may all have ended between two looks
            progress(_progress(_study(store, spec), spec))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # type: ignore[union-attr]
    pids = {p.pid for p in procs}
    if stopped:
        trials = _study(store, spec)
        cut = sum(t.user_attrs.get(OUTCOME) == Outcome.INTERRUPTED and _pid(t) in pids for t in trials)
        by = "Ctrl-C" if stopped[0] == signal.SIGINT else signal.Signals(stopped[0]).name
        what = f": {cut} running trial(s) recorded as interrupted and queued again" if cut else ""
        todo = sum(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
        rest = f"; re-run the same command to finish study '{spec.study}'" if todo else ", after every trial had ended"
        raise Interrupted.by(stopped[0], f"interrupted by {by}{what} ({spec.jobs} workers stopped){rest}")
    for proc, log in zip(procs, logs):
        if proc.returncode not in (0, None) and _stopped_signal(proc.returncode) is None:
            log.seek(0)
            lines = log.read().decode(errors="replace").strip().splitlines() or [f"exit status {proc.returncode}"]
            error = RuntimeFailure(f"a worker failed: {lines[-1].removeprefix('Error: ')}")
            error.exit_code = proc.returncode if proc.returncode in (1, 2) else 1
            raise error
    warnings = []
    dead = [p for p in procs if _stopped_signal(p.returncode) is not None]
    if dead:
        run_search(replace(spec, jobs=1), progress)  # what the survivors did not take: the dead workers' trials
        signals = ", ".join(sorted({signal.Signals(_stopped_signal(p.returncode)).name for p in dead}))  # type: ignore[arg-type]
        lost = {p.pid for p in dead}
        again = sum(t.user_attrs.get(OUTCOME) in (Outcome.DIED, Outcome.INTERRUPTED) and _pid(t) in lost for t in _study(store, spec))
        warnings.append(f"{len(dead)} of {spec.jobs} workers died ({signals}); their {again} running trial(s) were "
                        "queued again and trained by the others")
    trials = _study(store, spec)
    done = sum(finished(t) for t in trials)
    failed = sum(finished(t) and t.state == TrialState.FAIL for t in trials)
    with contextlib.closing(Worker(lock_folder(store))) as me:
        elsewhere = running_elsewhere(optuna.load_study(study_name=spec.study, storage=store.storage), me)
    return SearchOutcome(spec.study, store.shown, done - already, already, failed - failed_before, elsewhere,
                         tuple(warnings))


# PR_SET_PDEATHSIG from <linux/prctl.h>: the signal the kernel sends this process when its parent dies
PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Stop (SIGTERM: the running trials are recorded as interrupted and queued again) when the parent dies.

    On Linux the kernel sends it (prctl PR_SET_PDEATHSIG), even after kill -9 of the parent. Elsewhere a
    thread waits for the end of stdin, whose other end only the parent holds.
    """
    armed = False
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            armed = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
    if os.getppid() != parent:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)
    if not armed:
        def watch() -> None:
            sys.stdin.buffer.read()
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="hpsearch-parent-watch", daemon=True).start()


def _worker_main() -> int:
    """A --jobs worker: run the StudySpec read from stdin; errors are one line on stderr."""
    parent, spec = pickle.load(sys.stdin.buffer)
    _die_with_parent(parent)
    from hpsearch.search import run_search

    try:
        run_search(spec)
    except HpsearchError as error:
        print(f"Error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
