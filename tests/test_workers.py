"""Workers that die, workers that share a study: kill -9 rounds, many processes on one journal, --jobs,
PostgreSQL. Real processes, the real journal and storage; digits, 1 epoch.

Worker processes are forked from a multiprocessing forkserver that has imported torch and hpsearch
once, so a round costs milliseconds to start instead of the 2 s of a fresh interpreter.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.search import run_search
from hpsearch.spec import StudySpec, build_spec
from hpsearch.storage import open_storage

POSTGRES = os.environ.get("HPSEARCH_TEST_POSTGRES")


@pytest.fixture(scope="module")
def forkserver():
    """Forks workers with torch and hpsearch imported, one thread each (as --jobs gives them on 2 cores)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "hpsearch.search", "hpsearch.train", "hpsearch.tasks"])
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


def _trials(spec: StudySpec) -> list[optuna.trial.FrozenTrial]:
    store = open_storage(spec.storage, create=False)
    return optuna.load_study(study_name=spec.study, storage=store.storage).get_trials(deepcopy=False)


def _grid_spec(storage: str, study: str) -> StudySpec:
    # 30 points (5 x 3 x 2); populations of 2 so that a kill lands between and inside populations
    spec = build_spec("grid", lr="1e-3:1e-1:5", weight_decay="0,1e-5,1e-4", batch_size="32,64", epochs=1,
                      study=study, storage=storage, device="cpu")
    return replace(spec, max_population=2)


def _reports(spec: StudySpec) -> int:
    """Epoch reports written to the journal so far."""
    path = spec.storage
    return open(path, "rb").read().count(b'"intermediate_value"') if os.path.exists(path) else 0


def _kill_rounds(ctx, spec: StudySpec, workers: int, rounds: int, seed: int) -> dict[str, object]:
    """kill -9 every worker at a random moment, ``rounds`` times, then let the workers finish."""
    rng = random.Random(seed)
    completed: dict[int, float] = {}  # trial number -> value, for every trial completed before a kill
    total = spec.trials or len(spec.space.grid())
    mid_study = 0  # rounds whose kill left the study unfinished
    started = time.perf_counter()
    for _ in range(rounds):
        # a random moment in terms of progress (so it does not depend on the machine's speed): after
        # 0 to 1 population's more epoch reports, then 0-20 ms more (in a write, a step, an ask)
        target = _reports(spec) + rng.randint(0, spec.max_population)
        procs = _start(ctx, spec, workers)
        deadline = time.perf_counter() + 10
        while _reports(spec) < target and any(p.is_alive() for p in procs) and time.perf_counter() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.02))
        for p in procs:
            p.kill()
            p.join()
        if os.path.exists(spec.storage):
            done = {t.number: t.value for t in _trials(spec) if t.state == TrialState.COMPLETE}
            completed.update(done)
            mid_study += len(done) < total
    stuck_before_final = sum(t.state == TrialState.RUNNING for t in _trials(spec))
    for p in _start(ctx, spec, workers):
        p.join()
        assert p.exitcode == 0
    trials = _trials(spec)
    done = Counter(tuple(sorted(t.params.items())) for t in trials if t.state == TrialState.COMPLETE)
    after = {t.number: t.value for t in trials}
    return {
        "points": len(done), "duplicates": sum(n - 1 for n in done.values()),
        "stuck": sum(t.state == TrialState.RUNNING for t in trials),
        "died": sum(t.user_attrs.get("outcome") == "died" for t in trials),
        "running_after_last_kill": stuck_before_final,
        "changed": [n for n, v in completed.items() if after.get(n) != v], "kills_mid_study": mid_study,
        "seconds": round(time.perf_counter() - started, 1),
    }


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 4])
def test_kill_9_at_random_moments_leaves_every_grid_point_completed_exactly_once(tmp_path, forkserver, workers):
    spec = _grid_spec(str(tmp_path / "k.journal"), f"kill{workers}")
    figures = _kill_rounds(forkserver, spec, workers, rounds=20, seed=workers)
    print(f"kill -9 x20, {workers} worker(s): {figures}")
    assert figures["points"] == 30 and figures["duplicates"] == 0
    assert figures["stuck"] == 0 and figures["changed"] == []
    assert figures["died"] >= 1 and figures["kills_mid_study"] >= 5  # kills landed on running trials


@pytest.mark.slow
def test_kill_9_keeps_a_random_budget_across_restarts(tmp_path, forkserver):
    spec = replace(build_spec("random", trials=40, epochs=2, study="rk", storage=str(tmp_path / "rk.journal"),
                              device="cpu", batch_size="32:64"), max_population=4)
    figures = _kill_rounds(forkserver, spec, workers=4, rounds=8, seed=7)
    trials = _trials(spec)
    print(f"kill -9 x8, 4 workers, random budget 40: {figures}")
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 40 and figures["stuck"] == 0
    assert figures["changed"] == [] and figures["duplicates"] == 0 and figures["died"] >= 1


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
        trials = _trials(spec)
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
    trials = _trials(spec)
    first = trials[ghost.number]
    assert first.state == TrialState.FAIL and first.user_attrs["outcome"] == "died"
    assert first.user_attrs["reason"].startswith("worker nowhere:1 died")
    again = [t for t in trials if t.params == first.params and t.state == TrialState.COMPLETE]
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
            assert outcome.trained == len(_trials(spec))
            losses[command, jobs] = {tuple(sorted(t.params.items())): t.user_attrs["val_loss"] for t in _trials(spec)}
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
    trials = _trials(spec)
    done = Counter(tuple(sorted(t.params.items())) for t in trials if t.state == TrialState.COMPLETE)
    assert len(done) == 120 and set(done.values()) == {1}
    assert len({t.user_attrs["worker"] for t in trials}) > 1  # the work was shared


def _training(journal) -> set[int]:
    """The trials that have reported an epoch, read from the journal's lines."""
    if not journal.exists():
        return set()
    lines = journal.read_bytes().splitlines(keepends=True)
    return {json.loads(line)["trial_id"] for line in lines if line.endswith(b"\n") and b'"intermediate_value"' in line}


@pytest.mark.slow
def test_ctrl_c_reaches_every_jobs_worker_and_leaves_nothing_running(tmp_path):
    journal = tmp_path / "c.journal"
    command = [sys.executable, "-m", "hpsearch", "grid", "--lr", "0.1,0.01", "--weight-decay", "0,1e-4",
               "--batch-size", "32", "--epochs", "400", "--jobs", "2", "--study", "c", "--storage", str(journal)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    while len(_training(journal)) < 4:  # both workers are training their two trials
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and b"Traceback" not in err
    assert err.decode().splitlines()[-1].startswith("Error: 2 workers stopped")
    trials = _trials(build_spec("grid", study="c", storage=str(journal)))
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    stopped = [t for t in trials if t.user_attrs.get("outcome") == "interrupted"]
    assert len(stopped) == 4 and len({t.user_attrs["worker"] for t in stopped}) == 2
    assert sum(t.state == TrialState.WAITING for t in trials) == 4  # queued again for the next run
    assert not list((tmp_path / ".workers").glob("*.lock"))  # both workers left cleanly


@pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL server: .ci/run starts one and sets HPSEARCH_TEST_POSTGRES")
def test_a_postgresql_password_appears_in_no_output(workdir, one_thread):
    from click.testing import CliRunner

    from hpsearch.cli import main

    password = POSTGRES.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    study = f"pw-{os.getpid()}-{time.time_ns()}"
    runs = [["grid", "--lr", "0.1", "--weight-decay", "0", "--batch-size", "32", "--epochs", "1", "--study", study,
             "--storage", POSTGRES, "--device", "cpu"],
            ["report", study, "--storage", POSTGRES], ["report", "--storage", POSTGRES],
            ["report", "nosuch", "--storage", POSTGRES]]
    outputs = []
    for args in runs:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == (2 if "nosuch" in args else 0), result.output
        outputs.append(result.output)
    assert not [out for out in outputs if password in out]
    assert "***@" in outputs[0] and "***@" in outputs[3]  # the storage is named, its password hidden
