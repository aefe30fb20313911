"""The journal file: files that are not journals, torn records anywhere, long records, failed writes,
plain Optuna writers sharing it, read-only journals, pickling, threads and the lock wait.

Real files, real optuna, real processes; plain Optuna (its own JournalFileBackend) is the yardstick
of what a journal reader replays.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileOpenLock, JournalFileSymlinkLock
from optuna.trial import TrialState

from hpsearch.errors import RuntimeFailure
from hpsearch.search.run import run_search
from hpsearch.spec import build_spec
from hpsearch.storage.journal import CHUNK, JournalLock, is_torn
from hpsearch.storage.store import open_storage

from helpers import one_thread_env, plain_storage, plain_study, run, snapshot, study_trials, tiny

optuna.logging.set_verbosity(optuna.logging.WARNING)
GRID = tiny(lr="0.1", weight_decay="0", batch_size="32", device="cpu", study="g")  # 1 trial


def _write_plain_journal(path: Path, trials: int = 4) -> None:
    """A small journal written by plain Optuna: one study, some finished trials."""
    study = optuna.create_study(storage=plain_storage(path), study_name="plain")
    for x in range(trials):
        trial = study.ask()
        trial.suggest_float("x", 0, 10)
        study.tell(trial, float(x))


def _replayed(path: Path) -> list[tuple[int, object, object]]:
    """What plain Optuna replays: every study's trials (number, state, value)."""
    storage = plain_storage(path)
    return [(t.number, t.state, t.value) for s in storage.get_all_studies()
            for t in storage.get_all_trials(s._study_id)]


NOT_JOURNALS = {
    "json-list": b"[1,2,3]\n",
    "json-object": b'{"hello": 1}\n',
    "unknown-op": b'{"op_code": 99}\n',
    "missing-fields": b'{"op_code":0,"worker_id":"w"}\n',
    "random-bytes": random.Random(0).randbytes(300),
    "readme": b"# My project\n\nRun it with `make`.\n",
    "one-newline": b"\n",
}


@pytest.mark.parametrize("command", [["report"], ["repair"], ["grid", *GRID]], ids=lambda c: c[0])
@pytest.mark.parametrize("name", NOT_JOURNALS)
def test_a_file_that_is_not_a_journal_is_refused_in_one_line_and_left_untouched(workdir, name, command):
    path = workdir / "f.journal"
    path.write_bytes(NOT_JOURNALS[name])
    result = run(*command, "--storage", str(path))
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "is not an Optuna journal (line " in result.stderr
    assert snapshot(workdir) == {"f.journal": NOT_JOURNALS[name]}  # nothing written, nothing created beside it


@pytest.mark.parametrize("where", ["first", "middle"])
def test_a_foreign_line_inside_a_journal_is_named(workdir, where):
    path = workdir / "f.journal"
    _write_plain_journal(path)
    lines = path.read_bytes().splitlines(keepends=True)
    at = 0 if where == "first" else len(lines) // 2
    path.write_bytes(b"".join(lines[:at] + [b"hello\n"] + lines[at:]))
    for command in (["report"], ["repair"]):
        result = run(*command, "--storage", str(path))
        assert result.exit_code == 2 and f"is not an Optuna journal (line {at + 1}: not JSON)" in result.stderr


TORN = b'{"op_code":4,"worker_id":"w","study_id":0,"datetime_st'


@pytest.mark.parametrize("damage", ["torn-line-in-the-middle", "torn-glued-to-the-next", "two-torn-and-the-tail"])
def test_repair_keeps_every_complete_record_around_torn_ones(workdir, damage):
    path = workdir / "j.journal"
    _write_plain_journal(path, trials=6)
    lines = path.read_bytes().splitlines(keepends=True)
    if damage == "torn-line-in-the-middle":
        broken, torn_at = lines[:3] + [TORN + b"\n"] + lines[3:], [4]
    elif damage == "torn-glued-to-the-next":  # a plain writer appended after a torn tail
        broken, torn_at = lines[:3] + [TORN + lines[3]] + lines[4:], [4]
    else:
        broken, torn_at = lines[:2] + [TORN + b"\n"] + lines[2:5] + [b"{\n"] + lines[5:] + [TORN], [3, 7, len(lines) + 3]
    path.write_bytes(b"".join(broken))
    complete = workdir / "complete.journal"  # the yardstick: the same journal without its torn lines
    complete.write_bytes(b"".join(line for i, line in enumerate(broken, 1) if i not in torn_at))

    report = run("report", "--storage", str(path))
    assert report.exit_code == 1 and report.stderr.count("\n") == 1
    where = "ends in a torn record" if damage == "two-torn-and-the-tail" else f"has a torn record at line {torn_at[0]}"
    assert where in report.stderr and f"hpsearch repair --storage {path}" in report.stderr

    repaired = run("repair", "--storage", str(path))
    assert repaired.exit_code == 0, repaired.output
    assert f"Kept {len(broken) - len(torn_at)} complete records, dropped {len(torn_at)} torn" in repaired.stdout
    assert path.read_bytes() == complete.read_bytes()
    assert _replayed(path) == _replayed(complete) and len(_replayed(path)) >= 5
    (backup,) = workdir.glob("j.journal.torn-*")
    assert backup.read_bytes() == b"".join(broken)
    assert run("report", "--storage", str(path)).exit_code == 0


@pytest.fixture(scope="module")
def grid_journal(tmp_path_factory, one_thread) -> Path:
    """A journal hpsearch wrote: a 12-point grid, 2 epochs."""
    path = tmp_path_factory.mktemp("j") / "hpsearch.journal"
    run_search(build_spec("grid", lr="0.1,0.03,0.01", weight_decay="0,1e-4", batch_size="32,64", epochs=2,
                          study="g", storage=str(path), device="cpu"))
    return path


def _completed_before(data: bytes, cut: int) -> dict[int, float]:
    """Trial id -> value for every trial whose COMPLETE record lies wholly before byte ``cut``."""
    done, offset = {}, 0
    for line in data.splitlines(keepends=True):
        offset += len(line)
        if offset > cut:
            break
        record = json.loads(line)
        if record.get("state") == TrialState.COMPLETE.value and "values" in record:
            done[record["trial_id"]] = record["values"][0]
    return done


def test_a_journal_cut_at_20_offsets_loads_or_refuses_in_one_line_and_repair_keeps_every_complete_trial(
        grid_journal, tmp_path):
    data = grid_journal.read_bytes()
    cuts = sorted(random.Random(0).sample(range(1, len(data)), 18)) + [len(data) - 1, len(data)]
    refused = 0
    for cut in cuts:
        path = tmp_path / f"cut{cut}.journal"
        path.write_bytes(data[:cut])
        result = run("report", "g", "--storage", str(path))
        torn = not data[:cut].endswith(b"\n")
        if torn:
            refused += 1
            assert result.exit_code == 1
            assert result.stderr.count("\n") == 1 and "hpsearch repair --storage" in result.stderr
            repaired = run("repair", "--storage", str(path))
            assert repaired.exit_code == 0 and "dropped 1 torn" in repaired.stdout
            assert not is_torn(str(path))
        else:
            assert result.exit_code in (0, 2), result.output  # 2: the study was not created yet
        expected = _completed_before(data, cut)
        if expected:
            trials = {t._trial_id: t for t in study_trials(str(path), "g")}
            assert {i: trials[i].value for i in expected} == expected
    assert refused >= 15  # most random cuts land inside a record


def test_a_search_never_appends_after_a_torn_record(grid_journal, tmp_path):
    path = tmp_path / "torn.journal"
    path.write_bytes(grid_journal.read_bytes()[:-7])
    before = path.read_bytes()
    result = run("grid", *tiny(batch_size="32", device="cpu"), "--study", "h", "--storage", str(path))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [f"Error: {result.stderr.strip()[7:]}"]
    assert "torn record" in result.stderr and f"hpsearch repair --storage {path}" in result.stderr
    assert path.read_bytes() == before


def test_repair_says_when_there_is_nothing_to_repair(grid_journal, tmp_path):
    path = tmp_path / "whole.journal"
    shutil.copyfile(grid_journal, path)
    result = run("repair", "--storage", str(path))
    assert result.exit_code == 0 and result.stdout.startswith("Nothing to repair")
    assert path.read_bytes() == grid_journal.read_bytes()
    assert not list(tmp_path.glob("*.torn-*"))


@pytest.mark.parametrize("length", [CHUNK + 10_000, 4 * CHUNK + 1])
def test_the_last_record_is_checked_however_long_it_is(workdir, length):
    path = workdir / "long.journal"
    storage = plain_storage(path)
    study = optuna.create_study(storage=storage, study_name="long")
    study.set_user_attr("notes", "x" * length)
    assert not is_torn(str(path))
    store = open_storage(str(path), create=True)  # a writer opens it and appends after it
    optuna.load_study(study_name="long", storage=store.storage).set_user_attr("more", 1)
    assert not is_torn(str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-1] + b'{"op_code":2,"worker_id":"w","study_id":0,"user_attr":{"a":"' + b"y" * length)
    with pytest.raises(RuntimeFailure, match="ends in a torn record"):
        open_storage(str(path), create=False)


def _limited(limit: int):
    """Run the child with a file size limit, so a write fails part way (EFBIG) as on a full disk (ENOSPC)."""
    def limit_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_size


def test_a_failed_write_keeps_what_was_written_cuts_the_half_record_and_the_next_run_works(workdir):
    path = workdir / "full.journal"
    _write_plain_journal(path)
    before = _replayed(path)
    command = [sys.executable, "-m", "hpsearch", "grid", *GRID, "--storage", str(path)]
    for extra in (100, 700):  # the limit falls inside a record: the study's creation, its settings
        size = path.stat().st_size
        result = subprocess.run(command, capture_output=True, text=True, env=one_thread_env(),
                                preexec_fn=_limited(size + extra))
        assert result.returncode == 1, result.stderr
        assert result.stderr.splitlines() == [f"Error: cannot write the journal {path}: File too large; "
                                              "the results so far are kept in it"]
        assert not is_torn(str(path)) and path.read_bytes().endswith(b"\n")
        assert _replayed(path) == before
    done = subprocess.run(command, capture_output=True, text=True, env=one_thread_env())
    assert done.returncode == 0, done.stderr
    assert "Study g: best first" in done.stdout


def test_repair_that_cannot_write_changes_nothing(workdir):
    path = workdir / "j.journal"
    _write_plain_journal(path, trials=30)
    path.write_bytes(path.read_bytes() + TORN)
    original = path.read_bytes()
    command = [sys.executable, "-m", "hpsearch", "repair", "--storage", str(path)]
    for limit in (100, len(original) // 2):  # room for the lock file only; for half the new journal
        result = subprocess.run(command, capture_output=True, text=True, env=one_thread_env(),
                                preexec_fn=_limited(limit))
        assert result.returncode == 1
        assert result.stderr.splitlines() == [f"Error: cannot repair {path}: File too large; nothing was changed"]
        assert path.read_bytes() == original
        assert sorted(p.name for p in workdir.iterdir()) == ["j.journal", "j.journal.flock"]


PLAIN_WRITER = textwrap.dedent("""
    import sys, time, optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage, {lock}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path, count = sys.argv[1], int(sys.argv[2])
    storage = JournalStorage(JournalFileBackend(path, lock_obj={lock}(path)))
    study = optuna.create_study(storage=storage, study_name="plain")
    print("ready", flush=True)
    for i in range(count):
        study.set_user_attr(f"a{{i}}", "p" * 400_000)  # records long enough to be read half-written
""")


@pytest.mark.parametrize("lock", [JournalFileSymlinkLock, JournalFileOpenLock], ids=lambda c: c.__name__)
def test_a_plain_optuna_writer_appending_meanwhile_is_never_taken_for_a_torn_record(workdir, lock):
    path = workdir / "shared.journal"
    store = open_storage(str(path), create=True)
    ours = optuna.create_study(storage=store.storage, study_name="ours")
    writer = subprocess.Popen([sys.executable, "-c", PLAIN_WRITER.format(lock=lock.__name__), str(path), "40"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=one_thread_env())
    assert writer.stdout.readline() == "ready\n", writer.communicate()
    rounds = 0
    while writer.poll() is None or rounds < 3:
        with store.batch():
            ours.enqueue_trial({"x": rounds})
            ours.set_user_attr(f"r{rounds}", rounds)
        reader = open_storage(str(path), create=False)  # a reader meanwhile: no lock, never "torn"
        assert "ours" in [s.study_name for s in reader.storage.get_all_studies()]
        rounds += 1
    assert writer.returncode == 0, writer.communicate()
    plain = plain_storage(path)
    studies = {s.study_name: s for s in plain.get_all_studies()}
    assert len(studies["plain"].user_attrs) == 40 and len(studies["ours"].user_attrs) == rounds  # every record whole
    assert len(optuna.load_study(study_name="ours", storage=plain).trials) == rounds
    assert not is_torn(str(path))


READ_ONLY_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'


def test_a_read_only_journal_is_reported_and_a_writer_says_it_cannot_write(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "ro.journal"
    _write_plain_journal(path)
    before = snapshot(folder)
    hpsearch = [sys.executable, "-m", "hpsearch"]
    if os.geteuid() == 0:  # root writes through any mode bits: mount the folder read-only for the command instead
        if subprocess.run(["unshare", "-m", "sh", "-c", READ_ONLY_MOUNT, str(folder), "true"]).returncode != 0:
            pytest.skip("running as root, and no mount namespace to make a folder read-only")
        hpsearch = ["unshare", "-m", "sh", "-c", READ_ONLY_MOUNT, str(folder), *hpsearch]
    else:
        path.chmod(0o444)
        folder.chmod(0o555)
    try:
        listing = subprocess.run([*hpsearch, "report", "--storage", str(path)], capture_output=True, text=True,
                                 env=one_thread_env())
        assert listing.returncode == 0 and "plain" in listing.stdout, listing.stderr
        grid = subprocess.run([*hpsearch, "grid", *GRID, "--storage", str(path)], capture_output=True, text=True,
                              env=one_thread_env())
        assert grid.returncode == 1
        (line,) = grid.stderr.splitlines()
        assert line.startswith(f"Error: cannot write the journal {path}: ") and line.endswith("; choose another --storage")
        assert snapshot(folder) == before
    finally:
        folder.chmod(0o755)


def test_the_storage_pickles_and_threads_share_it(workdir):
    store = open_storage(None, create=True)
    optuna.create_study(storage=store.storage, study_name="s")
    copy = pickle.loads(pickle.dumps(store.storage))
    assert [s.study_name for s in copy.get_all_studies()] == ["s"]
    study = optuna.load_study(study_name="s", storage=copy)

    def enqueue(start: int) -> None:
        for x in range(start, start + 10):
            if x % 2:
                with copy._backend.batch():  # batches and single writes from several threads at once
                    study.enqueue_trial({"x": x})
            else:
                study.enqueue_trial({"x": x})

    threads = [threading.Thread(target=enqueue, args=(10 * i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    xs = sorted(t.system_attrs["fixed_params"]["x"]
                for t in plain_study("s", workdir / "studies" / "hpsearch.journal").trials)
    assert xs == list(range(40))


@pytest.mark.parametrize("then, code", [("release", 0), (signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_writer_waiting_for_the_lock_says_so_and_can_be_stopped(workdir, spawned, then, code):
    path = workdir / "w.journal"
    _write_plain_journal(path)
    before = path.read_bytes()
    lock = JournalLock(str(path), str(path))
    lock.acquire()
    try:
        proc = spawned(workdir, ["grid", *GRID, "--storage", str(path)], text=True)
        line = proc.stderr.readline()  # the first thing it says: it is waiting
        assert line.startswith(f"waiting for the lock on {path}, held by another hpsearch process"), line
        if then == "release":
            lock.release()
        else:
            proc.send_signal(then)
        out, err = proc.communicate(timeout=300)
    finally:
        lock.release()
    assert proc.returncode == code, err
    if then == "release":
        assert "Study g: best first" in out
    else:
        assert err.strip() == "Error: interrupted" and path.read_bytes() == before  # nothing written


DISK_FULL = ('mount -t tmpfs -o size=64k tmpfs "$0" && cp "$1" "$0/j.journal" && py="$2" && shift 2 && '
             '(head -c 1M /dev/zero > "$0/filler"; true) && '
             '"$py" -m hpsearch "$@" --storage "$0/j.journal"; echo "rc=$?"; rm "$0/filler"; '
             '"$py" -m hpsearch "$@" --storage "$0/j.journal"; echo "rc=$?"')


def test_a_full_disk_says_so_keeps_the_results_and_the_same_command_works_once_there_is_room(tmp_path):
    journal = tmp_path / "j.journal"
    _write_plain_journal(journal, trials=3)
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("needs a mount namespace for a small full disk")
    command = ["unshare", "-m", "sh", "-c", DISK_FULL, str(folder), str(journal), sys.executable, "grid", *GRID]
    result = subprocess.run(command, capture_output=True, text=True, env=one_thread_env())
    full, freed = result.stdout.split("rc=1\n")
    assert full == "" and freed.rstrip().endswith("rc=0") and "Study g: best first" in freed, result.stdout
    assert [line for line in result.stderr.splitlines() if line.startswith("Error:")] == [
        f"Error: the disk is full: cannot write the journal {folder}/j.journal; the results so far are kept in it: "
        "free some space, then re-run the same command"], result.stderr
