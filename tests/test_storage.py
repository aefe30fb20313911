from __future__ import annotations

import os
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.errors import BadInput, RuntimeFailure
from hpsearch.storage.store import open_storage

from helpers import one_thread_env, plain_study, tiny


def test_batched_writes_are_a_plain_journal_and_release_the_lock(workdir):
    store = open_storage(None, create=True)
    study = optuna.create_study(storage=store.storage, study_name="s")
    with pytest.raises(KeyboardInterrupt):
        with store.batch():
            for x in range(5):
                study.enqueue_trial({"x": x})
            with store.batch():  # nested batches are one batch
                study.enqueue_trial({"x": 5})
            raise KeyboardInterrupt
    assert not (workdir / "studies" / "hpsearch.journal.lock").exists()
    study.enqueue_trial({"x": 6})  # the lock is free again
    plain = plain_study("s")
    assert [t.system_attrs["fixed_params"]["x"] for t in plain.trials] == list(range(7))


def test_reading_where_there_is_no_journal_creates_nothing(workdir):
    with pytest.raises(BadInput, match="no studies here"):
        open_storage(None, create=False)
    assert not (workdir / "studies").exists()


def test_an_empty_environment_variable_counts_as_unset(workdir, monkeypatch):
    monkeypatch.setenv("HPSEARCH_STORAGE", "")
    with pytest.raises(BadInput, match="no studies here: studies/hpsearch.journal"):
        open_storage(None, create=False)


def test_refused_storages_create_nothing(workdir):
    os.mkfifo(workdir / "pipe")
    for url in ("newdir/", "", "/dev/null", "sqlite://", "sqlite:///newdir/", "foo://x", "sqlite:///pipe"):
        with pytest.raises(BadInput):
            open_storage(url, create=True)
    assert sorted(p.name for p in workdir.iterdir()) == ["pipe"]


@pytest.mark.parametrize("command", [["grid", "--epochs", "1"], ["report", "coarse"], ["repair"]])
@pytest.mark.parametrize("kind", ["fifo", "dev-full"])
def test_a_storage_that_is_not_a_regular_file_is_refused_at_once(workdir, command, kind):
    """In a process of its own, with a timeout: a FIFO must not hang and /dev/full must not fill memory."""
    path = "/dev/full"
    if kind == "fifo":
        path = str(workdir / "pipe")
        os.mkfifo(path)
    result = subprocess.run([sys.executable, "-m", "hpsearch", *command, "--storage", path], capture_output=True,
                            text=True, timeout=120, cwd=workdir, env=one_thread_env())
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    assert "regular file" in result.stderr or "no journal at" in result.stderr


GRID = tiny(batch_size="32,64")


@pytest.mark.parametrize("how", ["jobs", "by-hand"])
def test_sqlite_workers_train_each_grid_point_exactly_once(workdir, how):
    """Two workers on one SQLite file: --jobs 2, or two commands started together."""
    url = "sqlite:///k.db"
    command = [sys.executable, "-m", "hpsearch", "grid", *GRID, "--study", "g", "--storage", url]
    commands = [command + ["--jobs", "2"]] if how == "jobs" else [command, command]
    env = one_thread_env()
    procs = [subprocess.Popen(c, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in commands]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    trials = optuna.load_study(study_name="g", storage=url).trials
    points = [tuple(sorted(t.params.items())) for t in trials]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
    assert len(set(points)) == 8 and {p["batch_size"] for p in map(dict, points)} == {32, 64}


def test_a_database_lock_is_exclusive_across_threads_and_nests(workdir):
    import threading

    store = open_storage("sqlite:///k.db", create=True)
    inside: list[str] = []
    overlaps: list[list[str]] = []

    def writer(name: str) -> None:
        for _ in range(200):
            with store.batch():
                with store.batch():
                    inside.append(name)
                    time.sleep(0)  # let the other thread run, were it allowed in
                    if len(inside) != 1:
                        overlaps.append(list(inside))
                    inside.remove(name)

    threads = [threading.Thread(target=writer, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads) and overlaps == []


def test_an_unwritable_journal_is_a_runtime_error(workdir):
    (workdir / "blocker").write_text("a file where a folder should be")
    with pytest.raises(RuntimeFailure, match="cannot write the journal blocker/x.journal"):
        open_storage("blocker/x.journal", create=True)
