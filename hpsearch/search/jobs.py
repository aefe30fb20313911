"""``--jobs N``: worker processes on one machine sharing one study, one progress bar, one Ctrl-C.

Each worker runs hpsearch.search.runner's loop; who is alive and what a dead worker leaves behind is
hpsearch.search.workers's.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import HpsearchError, Interrupted, RuntimeFailure
from hpsearch import signals
from hpsearch.search.records import OUTCOME, WORKER_ATTR, Outcome, finished
from hpsearch.search.runner import Progress, ProgressCallback, SearchOutcome, best_value, prepare_study, run_here
from hpsearch.search.workers import Worker, lock_folder, running_elsewhere
from hpsearch.spec import StudySpec
from hpsearch.storage.store import Store

POLL_S = 0.5  # how often the parent reads the study for its progress bar


def worker_devices(device: str, jobs: int) -> list[str]:
    """One device per worker: on several visible GPUs, round robin (cuda:0, cuda:1, ...)."""
    if device not in ("auto", "cuda"):
        return [device] * jobs
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return [device] * jobs
    return [f"cuda:{i % count}" for i in range(jobs)]


def _pid(trial: FrozenTrial) -> int | None:
    name = trial.user_attrs.get(WORKER_ATTR) or ""
    return int(name.split(":")[1]) if name.count(":") == 2 and name.split(":")[1].isdigit() else None


def _study(store: Store, spec: StudySpec) -> list[FrozenTrial]:
    return optuna.load_study(study_name=spec.study, storage=store.storage).get_trials(deepcopy=False)


def _progress(trials: list[FrozenTrial], spec: StudySpec) -> Progress:
    """The bar's figures from the study as stored: finished trials, the study's size, its best value."""

    done = sum(finished(t) for t in trials)
    todo = sum(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
    return Progress(done, max(done + todo, spec.trials or 0), best_value(trials, spec.metric == "val_loss"))


def _stopped_signal(code: int | None) -> int | None:
    """The signal that ended a worker: killed by it (negative status), or stopped by it cleanly (130, 143)."""
    if code is None or code >= 0:
        return {130: signal.SIGINT, 143: signal.SIGTERM}.get(code or 0)
    return -code


def run_jobs(spec: StudySpec, progress: ProgressCallback | None = None) -> SearchOutcome:
    """Run ``spec.jobs`` worker processes on one study; show one progress bar; Ctrl-C / SIGTERM reach all.

    Each worker is ``python -m hpsearch.search.jobs`` in its own session (so a terminal's Ctrl-C reaches
    the parent only, which passes it on once), given its StudySpec on stdin, which stays open: the
    worker stops when it closes (the parent died), see ``_die_with_parent``.

    A worker that dies (kill -9, the OOM killer) does not stop the search: its trials are failed and
    queued again by the next worker that asks for work, and what is left when all have ended is
    trained here; the outcome carries a warning. The grid is then complete, as the user asked, so
    the run succeeds (exit 0): the warning says what happened, the table shows every result.
    """
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

    previous = {s: signal.signal(s, stop) for s in signals.catchable()}
    try:
        for device, log in zip(worker_devices(spec.device, spec.jobs), logs):
            if stopped:
                break
            proc = subprocess.Popen([sys.executable, "-m", "hpsearch.search.jobs"], stdin=subprocess.PIPE, env=env,
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
        run_here(replace(spec, jobs=1), progress)  # what the survivors did not take: the dead workers' trials
        killed_by = ", ".join(sorted({signal.Signals(_stopped_signal(p.returncode)).name for p in dead}))  # type: ignore[arg-type]
        lost = {p.pid for p in dead}
        again = sum(t.user_attrs.get(OUTCOME) in (Outcome.DIED, Outcome.INTERRUPTED) and _pid(t) in lost for t in _study(store, spec))
        warnings.append(f"{len(dead)} of {spec.jobs} workers died ({killed_by}); their {again} running trial(s) were "
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
    try:
        spec.check_size()
        run_here(spec)
    except HpsearchError as error:
        print(f"Error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    from hpsearch.shutdown import leave

    leave(_worker_main())
