"""Workers that die, workers that share a study: kill -9 rounds, many processes on one journal, --jobs,
PostgreSQL. Real processes, the real journal and storage; digits, 1 epoch.

Worker processes are forked from a multiprocessing forkserver that has imported torch and hpsearch
once, so a round costs milliseconds to start instead of the 2 s of a fresh interpreter.
"""
from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.search.run import run_search
from hpsearch.spec import StudySpec, build_spec
from hpsearch.storage.store import open_storage

from helpers import completed_points, holding_task, run, running_trials, study_trials, wait_for

POSTGRES = os.environ.get("HPSEARCH_TEST_POSTGRES")


@pytest.fixture(scope="module")
def forkserver():
    """Forks workers with torch and hpsearch imported, one thread each (as --jobs gives them on 2 cores)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "hpsearch.search.run", "hpsearch.train", "hpsearch.tasks.builtin"])
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # read by the forkserver when it starts
    ctx.Process(target=time.sleep, args=(0,)).start()
    if before is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = before
    return ctx


def _start(ctx, spec: StudySpec, count: int) -> list:
    procs = [ctx.Process(target=run_search, args=(spec,), daemon=True) for _ in range(count)]
    for p in procs:
        p.start()
    return procs


def _grid_spec(storage: str, study: str) -> StudySpec:
    # 30 points (5 x 3 x 2); populations of 2 so that a kill lands between and inside populations
    spec = build_spec("grid", lr="1e-3:1e-1:5", weight_decay="0,1e-5,1e-4", batch_size="32,64", epochs=1,
                      study=study, storage=storage, device="cpu")
    return replace(spec, max_population=2)


def _reports(spec: StudySpec) -> int:
    """Epoch reports written to the journal so far."""
    path = spec.storage
    return open(path, "rb").read().count(b'"intermediate_value"') if os.path.exists(path) else 0


def _kill_rounds(ctx, spec: StudySpec, workers: int, mid_study_kills: int, seed: int,
                 most_rounds: int = 60) -> dict[str, object]:
    """kill -9 every worker at a random moment, round after round, until ``mid_study_kills`` kills have
    landed while the study was unfinished (or the study is done, or ``most_rounds``); then let the workers finish.

    A kill may land before the study exists; the rounds count in terms of progress, never of the machine's speed.
    """
    rng = random.Random(seed)
    completed: dict[int, float] = {}  # trial number -> value, for every trial completed before a kill
    total = spec.trials or len(spec.space.grid())
    mid_study = rounds = 0  # kills that left the study unfinished; rounds run
    started = time.perf_counter()
    while mid_study < mid_study_kills and rounds < most_rounds:
        rounds += 1
        # a random moment in terms of progress: after 0 to 1 population's more epoch reports, then 0-20 ms
        # more (in a write, a step, an ask)
        target = _reports(spec) + rng.randint(0, spec.max_population)
        procs = _start(ctx, spec, workers)
        deadline = time.perf_counter() + 120
        while _reports(spec) < target and any(p.is_alive() for p in procs) and time.perf_counter() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.02))
        for p in procs:
            p.kill()
            p.join()
        done = {t.number: t.value for t in study_trials(spec.storage, spec.study, missing_ok=True)
                if t.state == TrialState.COMPLETE}
        completed.update(done)
        if len(done) == total:
            break
        mid_study += 1
    stuck_before_final = sum(t.state == TrialState.RUNNING
                             for t in study_trials(spec.storage, spec.study, missing_ok=True))
    for p in _start(ctx, spec, workers):
        p.join()
        assert p.exitcode == 0
    trials = study_trials(spec.storage, spec.study)
    done = completed_points(trials)
    after = {t.number: t.value for t in trials}
    return {
        "points": len(done), "duplicates": sum(n - 1 for n in done.values()),
        "stuck": sum(t.state == TrialState.RUNNING for t in trials),
        "died": sum(t.user_attrs.get("outcome") == "died" for t in trials),
        "running_after_last_kill": stuck_before_final,
        "changed": [n for n, v in completed.items() if after.get(n) != v], "kills_mid_study": mid_study,
        "rounds": rounds, "seconds": round(time.perf_counter() - started, 1),
    }


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 4])
def test_kill_9_at_random_moments_leaves_every_grid_point_completed_exactly_once(tmp_path, forkserver, workers):
    spec = _grid_spec(str(tmp_path / "k.journal"), f"kill{workers}")
    figures = _kill_rounds(forkserver, spec, workers, mid_study_kills=10, seed=workers)
    print(f"kill -9 until 10 landed mid-study, {workers} worker(s): {figures}")
    assert figures["points"] == 30 and figures["duplicates"] == 0
    assert figures["stuck"] == 0 and figures["changed"] == []
    assert figures["kills_mid_study"] >= 1  # the first kill comes at most a population's reports after the start


@pytest.mark.slow
def test_kill_9_keeps_a_random_budget_across_restarts(tmp_path, forkserver):
    spec = replace(build_spec("random", trials=40, epochs=2, study="rk", storage=str(tmp_path / "rk.journal"),
                              device="cpu", batch_size="32:64"), max_population=4)
    figures = _kill_rounds(forkserver, spec, workers=4, mid_study_kills=8, seed=7)
    trials = study_trials(spec.storage, spec.study)
    print(f"kill -9 until 8 landed mid-study, 4 workers, random budget 40: {figures}")
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 40 and figures["stuck"] == 0
    assert figures["changed"] == [] and figures["duplicates"] == 0 and figures["kills_mid_study"] >= 1


@pytest.mark.slow
def test_eight_processes_share_a_random_budget_without_gaps_or_duplicates(tmp_path, forkserver):
    for repetition in range(5):
        started = time.perf_counter()
        spec = build_spec("random", trials=400, epochs=1, study=f"r{repetition}", seed=repetition,
                          storage=str(tmp_path / "r.journal"), device="cpu", lr="1e-3:1e-1", batch_size="64:128")
        spec = replace(spec, max_population=50)  # 8 x 50: each worker asks at most 50 at a time
        for p in _start(forkserver, spec, 8):
            p.join()
            assert p.exitcode == 0
        trials = study_trials(spec.storage, spec.study)
        assert sum(t.state == TrialState.COMPLETE for t in trials) == 400
        assert sorted(t.number for t in trials) == list(range(400))
        assert len({tuple(sorted(t.params.items())) for t in trials}) == 400  # seeds by trial: no repeats
        print(f"8 processes, random budget 400, repetition {repetition}: 400/400 in {time.perf_counter() - started:.1f} s, "
              f"{len({t.user_attrs['worker'] for t in trials})} workers took trials")


def test_a_dead_workers_running_trial_is_failed_with_its_reason_and_queued_again(tmp_path, one_thread):
    spec = replace(_grid_spec(str(tmp_path / "d.journal"), "dead"), max_population=30)
    store = open_storage(spec.storage, create=True)
    study = optuna.create_study(storage=store.storage, study_name=spec.study, direction="maximize")
    ghost = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1),
                       "weight_decay": optuna.distributions.FloatDistribution(0, 1e-4),
                       "batch_size": optuna.distributions.IntDistribution(32, 64),
                       "momentum": optuna.distributions.FloatDistribution(0.9, 0.9)})
    ghost.set_user_attr("worker", "nowhere:1:dead")  # another machine, silent for ever
    ghost.set_user_attr("heartbeat", time.time() - 3600)
    # the settings a grid writes, so the run below continues this study
    study.set_user_attr("hpsearch", spec.settings() | {"metric": "val_accuracy"})
    run_search(spec)
    trials = study_trials(spec.storage, spec.study)
    first = trials[ghost.number]
    assert first.state == TrialState.FAIL and first.user_attrs["outcome"] == "died"
    assert first.user_attrs["reason"].startswith("worker nowhere:1 died")
    # queued again with the four values it was asked with; it trains at the optimizer's default, sgd
    again = [t for t in trials if t.state == TrialState.COMPLETE and t.params == {**first.params, "optimizer": "sgd"}]
    assert len(again) == 1


def test_jobs_gives_the_same_losses_as_one_worker(tmp_path, one_thread):
    """Seeds belong to configurations (and random draws to trial numbers), never to workers."""
    losses = {}
    for jobs in (1, 2):
        for command, extra in (("grid", {"lr": "0.1,0.01", "weight_decay": "0,1e-4", "batch_size": "32"}),
                               ("random", {"trials": 6, "lr": "1e-3:1e-1", "batch_size": "32:64"})):
            spec = build_spec(command, epochs=1, study=f"{command}{jobs}", storage=str(tmp_path / "j.journal"),
                              device="cpu", jobs=jobs, **extra)
            outcome = run_search(spec)
            trials = study_trials(spec.storage, spec.study)
            assert outcome.trained == len(trials)
            losses[command, jobs] = {tuple(sorted(t.params.items())): t.user_attrs["val_loss"] for t in trials}
    for command in ("grid", "random"):
        one, two = losses[command, 1], losses[command, 2]
        assert one.keys() == two.keys()
        for key in one:
            assert one[key] == pytest.approx(two[key], abs=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL server: .ci/run starts one and sets HPSEARCH_TEST_POSTGRES")
def test_four_workers_on_postgresql_run_each_of_120_grid_points_once(forkserver):
    study = f"pg-{os.getpid()}-{time.time_ns()}"
    spec = replace(build_spec("grid", lr="1e-3:1e-1:5", weight_decay="0,1e-6,1e-5,1e-4", batch_size="32,64,128",
                              momentum="0.5,0.9", epochs=1, study=study, storage=POSTGRES, device="cpu"),
                   max_population=8)
    assert len(spec.space.grid()) == 120
    for p in _start(forkserver, spec, 4):
        p.join()
        assert p.exitcode == 0
    trials = study_trials(spec.storage, spec.study)
    done = completed_points(trials)
    assert len(done) == 120 and set(done.values()) == {1}
    assert len({t.user_attrs["worker"] for t in trials}) > 1  # the work was shared


@pytest.mark.slow
def test_ctrl_c_reaches_every_jobs_worker_and_leaves_nothing_running(tmp_path, spawned):
    journal = tmp_path / "c.journal"
    proc = spawned(tmp_path, ["grid", "--task", holding_task(tmp_path), "--lr", "0.1,0.01", "--weight-decay", "0,1e-4",
                              "--batch-size", "32", "--epochs", "2", "--jobs", "2", "--study", "c",
                              "--storage", str(journal)])
    wait_for(lambda: proc.poll() is not None or len({t.user_attrs["worker"] for t in running_trials(str(journal), "c")}) == 2,
             "both workers holding their trials")
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and b"Traceback" not in err
    assert err.decode().splitlines()[-1].startswith(
        "Error: interrupted by Ctrl-C: 4 running trial(s) recorded as interrupted and queued again (2 workers stopped)")
    trials = study_trials(str(journal), "c")
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    stopped = [t for t in trials if t.user_attrs.get("outcome") == "interrupted"]
    assert len(stopped) == 4 and len({t.user_attrs["worker"] for t in stopped}) == 2
    assert sum(t.state == TrialState.WAITING for t in trials) == 4  # queued again for the next run
    assert not list((tmp_path / ".workers").glob("*.lock"))  # both workers left cleanly


@pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL server: .ci/run starts one and sets HPSEARCH_TEST_POSTGRES")
def test_a_postgresql_password_appears_in_no_output(workdir, one_thread):
    password = POSTGRES.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    study = f"pw-{os.getpid()}-{time.time_ns()}"
    runs = [["grid", "--lr", "0.1", "--weight-decay", "0", "--batch-size", "32", "--epochs", "1", "--study", study,
             "--storage", POSTGRES, "--device", "cpu"],
            ["report", study, "--storage", POSTGRES], ["report", "--storage", POSTGRES],
            ["report", "nosuch", "--storage", POSTGRES]]
    outputs = []
    for args in runs:
        result = run(*args)
        assert result.exit_code == (2 if "nosuch" in args else 0), result.output
        outputs.append(result.output)
    assert not [out for out in outputs if password in out]
    assert "***@" in outputs[0] and "***@" in outputs[3]  # the storage is named, its password hidden


# A plug-in task whose training waits while the file HOLD exists: a test holds every worker mid-trial
# for as long as it needs, whatever the machine's speed, then lets them go by removing the file.
def _holding(tmp_path, study: str, jobs: int, *extra: str) -> list[str]:
    """A command line of an 8-point grid of the holding task, its journal in tmp_path; the hold set."""
    return ["grid", "--task", holding_task(tmp_path), "--lr", "0.1,0.03,0.01,0.003",
            "--weight-decay", "0,1e-4", "--batch-size", "32", "--epochs", "1", "--device", "cpu", "--jobs", str(jobs),
            "--study", study, "--storage", str(tmp_path / "h.journal"), *extra]


def _worker_pids(tmp_path) -> set[int]:
    """The pids of the workers whose lock files are in tmp_path/.workers (host-pid-token.lock)."""
    return {int(p.name.rsplit("-", 2)[1]) for p in (tmp_path / ".workers").glob("*.lock")}


def _gone(pid: int) -> bool:
    """A process that has ended (a zombie nobody reaped yet has ended too)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.slow
def test_kill_9_of_the_jobs_parent_stops_its_workers_and_their_trials_are_queued_again(tmp_path, spawned):
    proc = spawned(tmp_path, _holding(tmp_path, "orphans", 4))
    wait_for(lambda: proc.poll() is not None
             or len({t.user_attrs["worker"] for t in running_trials(str(tmp_path / "h.journal"), "orphans")}) == 4,
             "4 workers each holding their trials")
    assert proc.poll() is None, proc.communicate()
    pids = {int(t.user_attrs["worker"].split(":")[1]) for t in running_trials(str(tmp_path / "h.journal"), "orphans")}
    proc.kill()
    proc.wait()
    wait_for(lambda: all(_gone(pid) for pid in pids), "the workers to stop with their parent", timeout=120)
    trials = study_trials(str(tmp_path / "h.journal"), "orphans")
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert sum(t.user_attrs.get("outcome") == "interrupted" for t in trials) == 8
    assert sum(t.state == TrialState.WAITING for t in trials) == 8  # queued again for the next run
    assert not list((tmp_path / ".workers").glob("*.lock"))  # each worker left cleanly
    args = _holding(tmp_path, "orphans", 1)
    (tmp_path / "hold").unlink()  # the re-run trains at once
    again = spawned(tmp_path, args)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert b"Trained 8 trials" in out


@pytest.mark.slow
def test_kill_9_of_one_worker_its_trials_are_finished_and_the_table_printed_with_a_warning(tmp_path, spawned):
    proc = spawned(tmp_path, _holding(tmp_path, "one", 2))
    wait_for(lambda: proc.poll() is not None or len({t.user_attrs["worker"] for t in running_trials(str(tmp_path / "h.journal"), "one")}) == 2,
             "2 workers each holding their trials")
    assert proc.poll() is None, proc.communicate()
    victim = int(running_trials(str(tmp_path / "h.journal"), "one")[0].user_attrs["worker"].split(":")[1])
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: _gone(victim), "the worker to die", timeout=120)
    (tmp_path / "hold").unlink()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert b"Study one: best first" in out and b"Traceback" not in err
    assert "Warning: 1 of 2 workers died (SIGKILL); their 4 running trial(s) were queued again" in err.decode()
    trials = study_trials(str(tmp_path / "h.journal"), "one")
    done = completed_points(trials)
    assert len(done) == 8 and set(done.values()) == {1}
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sum(t.user_attrs.get("outcome") == "died" for t in trials) == 4


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_a_rerun_shows_the_trials_live_workers_are_running_instead_of_calling_the_grid_finished(tmp_path, spawned, jobs):
    proc = spawned(tmp_path, _holding(tmp_path, "busy", 1))
    wait_for(lambda: proc.poll() is not None or len(running_trials(str(tmp_path / "h.journal"), "busy")) == 8, "the worker holding all 8 trials")
    assert proc.poll() is None, proc.communicate()
    args = _holding(tmp_path, "busy", jobs)
    rerun = run(*args)
    assert rerun.exit_code == 0, rerun.output
    assert "Nothing to start: the 8 trials left of study 'busy' are still running in other processes" in rerun.stdout
    assert "Nothing to train" not in rerun.stdout and "running" in rerun.stdout  # the table shows them running
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=300)
    assert proc.returncode == 143


def test_the_jobs_bar_shows_the_best_value_stored_and_a_late_ctrl_c_claims_no_interrupted_trial(tmp_path, one_thread):
    from hpsearch.errors import Interrupted

    spec = build_spec("grid", lr="0.1,0.01", weight_decay="0", batch_size="32", epochs=1, study="bar",
                      storage=str(tmp_path / "b.journal"), device="cpu", jobs=2)
    shown = []
    run_search(spec, shown.append)
    values = [t.value for t in study_trials(spec.storage, spec.study)]
    assert shown[-1].done == shown[-1].total == 2 and shown[-1].best == max(values)

    def ctrl_c(progress) -> None:  # every trial has ended: the workers have nothing to do
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted) as stopped:
        run_search(spec, ctrl_c)
    assert "recorded as interrupted" not in str(stopped.value)
    assert "after every trial had ended" in str(stopped.value)
    assert len(study_trials(spec.storage, spec.study)) == 2


@pytest.mark.parametrize("how", ["left by a process killed with kill -9", "whose process is long gone"])
def test_lock_files_of_dead_workers_are_swept_and_live_ones_kept(tmp_path, one_thread, how):
    from hpsearch.search.workers import Worker, _host

    folder = tmp_path
    if how.startswith("left"):
        code = "import sys, time; from pathlib import Path; from hpsearch.search.workers import Worker; " \
               "Worker(Path(sys.argv[1])); print('ok', flush=True); time.sleep(600)"
        holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE)
        assert holder.stdout.readline() == b"ok\n"
        holder.kill()
        holder.wait()
    else:
        (folder / ".workers").mkdir()
        (folder / ".workers" / f"{_host()}-999999999-dead.lock").touch()
    dead = list((folder / ".workers").glob("*.lock"))
    assert len(dead) == 1
    live = Worker(folder)  # holds its lock: kept
    spec = build_spec("grid", lr="0.1", weight_decay="0", batch_size="32", epochs=1, study="s",
                      storage=str(folder / "s.journal"), device="cpu")
    run_search(spec)
    assert not dead[0].exists()
    assert [p.name for p in (folder / ".workers").glob("*.lock")] == [live._path.name]
    live.close()
