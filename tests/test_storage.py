from __future__ import annotations

import os
import subprocess
import sys
import time
from urllib.parse import quote

import optuna
import pytest
from click.testing import CliRunner
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.errors import BadInput, RuntimeFailure
from hpsearch.redact import scrub
from hpsearch.storage import open_storage, redact


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
    plain = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend("studies/hpsearch.journal")))
    assert [t.system_attrs["fixed_params"]["x"] for t in plain.trials] == list(range(7))


def test_reading_where_there_is_no_journal_creates_nothing(workdir):
    with pytest.raises(BadInput, match="no studies here"):
        open_storage(None, create=False)
    assert not (workdir / "studies").exists()


SECRET = "s3cr3t/Pa55?!"  # characters that URLs percent-encode
REFUSED = "127.0.0.1:1"  # nothing listens on port 1: the driver fails at once
# Every way SQLAlchemy takes a password: userinfo (an '@' in it, an '@' in the user name, percent-encoded),
# and query parameters password / passwd / pwd in any case.
PASSWORD_URLS = [
    f"postgresql://me:{quote(SECRET, safe='')}@{REFUSED}/db",
    f"postgresql://me:p@{quote(SECRET, safe='')}@{REFUSED}/db",
    f"postgresql://me:{SECRET.replace('/', '').replace('?', '')}@{REFUSED}/db",
    f"postgresql://me@corp:{quote(SECRET, safe='')}@{REFUSED}/db",
    f"postgresql://{REFUSED}/db?user=me&password={quote(SECRET, safe='')}",
    f"postgresql://{REFUSED}/db?user=me&Passwd={quote(SECRET, safe='')}&sslmode=disable",
    f"postgresql+psycopg2://{REFUSED}/db?PWD={quote(SECRET, safe='')}",
]


def _forms(url: str) -> list[str]:
    """The secret of a URL as written there and as a driver would echo it (decoded), at least 4 characters."""
    from urllib.parse import unquote

    return [f for f in {quote(SECRET, safe=""), SECRET, SECRET.replace("/", "").replace("?", "")} if f in url or
            f in unquote(url)]


def test_redact_hides_every_password_form_and_keeps_the_rest():
    assert redact("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert redact("postgresql://me:p@ss@db/x?user=a@b") == "postgresql://me:***@db/x?user=a@b"
    assert redact("postgresql://db/x?user=me&PASSWORD=s3cret&sslmode=require") == "postgresql://db/x?user=me&PASSWORD=***&sslmode=require"
    assert redact("sqlite:///x@y.db") == "sqlite:///x@y.db"
    assert redact("postgresql://db:5432/x") == "postgresql://db:5432/x"
    for url in PASSWORD_URLS:
        assert _forms(url) and not any(form in redact(url) for form in _forms(url)), url


@pytest.mark.parametrize("url", PASSWORD_URLS)
def test_a_password_never_leaves_the_process(workdir, url):
    """Not in hpsearch's line, not in the driver's message it quotes, not echoed decoded or encoded."""
    from urllib.parse import unquote

    for args in (["grid", "--epochs", "1", "--storage", url], ["report", "--storage", url], ["report", "x"]):
        runner = CliRunner(env={"HPSEARCH_STORAGE": url} if "--storage" not in args else {})
        result = runner.invoke(main, args)
        assert result.exit_code in (1, 2) and result.stderr.count("\n") == 1, result.output
        assert not any(form in result.output for form in _forms(url)), result.output
    # a driver that echoes the password, decoded or not, is scrubbed too
    echo = f"driver: bad password '{unquote(url.rsplit('=', 1)[-1])}' in {url}"
    assert not any(form in scrub(echo, [url]) for form in _forms(url))


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
                            text=True, timeout=120, cwd=workdir, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    assert "regular file" in result.stderr or "no journal at" in result.stderr


GRID = ["--lr", "1e-1,1e-2", "--weight-decay", "0,1e-4", "--batch-size", "32,64", "--momentum", "0.9", "--epochs", "1"]


@pytest.mark.parametrize("how", ["jobs", "by-hand"])
def test_sqlite_workers_train_each_grid_point_exactly_once(workdir, how):
    """Two workers on one SQLite file: --jobs 2, or two commands started together."""
    url = "sqlite:///k.db"
    command = [sys.executable, "-m", "hpsearch", "grid", *GRID, "--study", "g", "--storage", url]
    commands = [command + ["--jobs", "2"]] if how == "jobs" else [command, command]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
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
