"""Every way a run can end badly becomes a clear outcome: Ctrl-C and SIGTERM, a torn journal, its repair.

The signal tests run the real command in a subprocess and send the real signal mid-training.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.journal import is_torn
from hpsearch.search import run_search
from hpsearch.spec import build_spec
from hpsearch.storage import open_storage

GRID = ["--lr", "0.1,0.01", "--weight-decay", "0,1e-4", "--batch-size", "32", "--device", "cpu"]


def _trials(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    store = open_storage(storage, create=False)
    return optuna.load_study(study_name=study, storage=store.storage).get_trials(deepcopy=False)


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_a_grid_records_interrupted_trials_and_a_resume_completes_it(tmp_path, one_thread, signum,
                                                                                      code):
    journal = tmp_path / "s.journal"
    command = [sys.executable, "-m", "hpsearch", "grid", *GRID, "--epochs", "20", "--study", "s",
               "--storage", str(journal)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # on busy cores, spinning threads would slow it tenfold
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=env)
    while not (journal.exists() and b'"intermediate_value"' in journal.read_bytes()):  # training has begun
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    assert err.decode().splitlines()[-1].startswith(f"Error: interrupted by {name}: 4 running trial(s)")
    assert b"Traceback" not in err
    assert b"Study s: best first" in out  # the results so far are printed
    stopped = [t for t in _trials(str(journal), "s") if t.user_attrs.get("outcome") == "interrupted"]
    assert len(stopped) == 4 and all(t.state == TrialState.FAIL for t in stopped)
    assert all(name in t.user_attrs["reason"] for t in stopped)
    outcome = run_search(build_spec("grid", lr="0.1,0.01", weight_decay="0,1e-4", batch_size="32", epochs=20,
                                    study="s", storage=str(journal), device="cpu"))
    assert outcome.trained == 4
    done = [t for t in _trials(str(journal), "s") if t.state == TrialState.COMPLETE]
    assert sorted(t.params["lr"] for t in done) == [0.01, 0.01, 0.1, 0.1]


@pytest.fixture(scope="module")
def journal(tmp_path_factory, one_thread) -> Path:
    """A real journal: a 12-point grid, 2 epochs."""
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
        journal, tmp_path):
    data = journal.read_bytes()
    cuts = sorted(random.Random(0).sample(range(1, len(data)), 18)) + [len(data) - 1, len(data)]
    refused = 0
    for cut in cuts:
        path = tmp_path / f"cut{cut}.journal"
        path.write_bytes(data[:cut])
        result = CliRunner().invoke(main, ["report", "g", "--storage", str(path)])
        torn = not data[:cut].endswith(b"\n")
        if torn:
            refused += 1
            assert result.exit_code == 1
            assert result.stderr.count("\n") == 1 and "hpsearch repair --storage" in result.stderr
            repaired = CliRunner().invoke(main, ["repair", "--storage", str(path)])
            assert repaired.exit_code == 0 and "dropped 1 torn" in repaired.stdout
            assert not is_torn(str(path))
        else:
            assert result.exit_code in (0, 2), result.output  # 2: the study was not created yet
        expected = _completed_before(data, cut)
        if expected:
            trials = {t._trial_id: t for t in _trials(str(path), "g")}
            assert {i: trials[i].value for i in expected} == expected
    assert refused >= 15  # most random cuts land inside a record


def test_a_search_never_appends_after_a_torn_record(journal, tmp_path):
    path = tmp_path / "torn.journal"
    path.write_bytes(journal.read_bytes()[:-7])
    before = path.read_bytes()
    result = CliRunner().invoke(main, ["grid", *GRID, "--epochs", "1", "--study", "h", "--storage", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [f"Error: {result.stderr.strip()[7:]}"]
    assert "torn record" in result.stderr and f"hpsearch repair --storage {path}" in result.stderr
    assert path.read_bytes() == before


def test_repair_says_when_there_is_nothing_to_repair(journal, tmp_path):
    path = tmp_path / "whole.journal"
    shutil.copyfile(journal, path)
    result = CliRunner().invoke(main, ["repair", "--storage", str(path)])
    assert result.exit_code == 0 and result.stdout.startswith("Nothing to repair")
    assert path.read_bytes() == journal.read_bytes()
    assert not list(tmp_path.glob("*.torn-*"))


def _raising_task(batch_size: int, error: str) -> str:
    """A plug-in task file whose model trains, except at ``batch_size``, where its forward raises ``error``."""
    return f'''
import torch
from torch import nn
from hpsearch import Task

g = torch.Generator().manual_seed(0)
x = torch.randn(200, 5, generator=g)
y = (x[:, 0] > 0).long()


class Raising(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(5, 2)

    def forward(self, inputs):
        if self.training and inputs.shape[-2] == {batch_size}:
            raise {error}
        return self.layer(inputs)


def make():
    return Task("raising", Raising, (x[:120], y[:120]), (x[120:160], y[120:160]), (x[160:], y[160:]), 2)
'''


# the user's bug at batch size 16; batch size 32 trains
FAILING_TASK = _raising_task(16, 'RuntimeError("boom in the user\'s model")')


@pytest.mark.parametrize("retries", [0, 2])
def test_a_failing_configuration_is_retried_then_reported_failed_with_its_reason(workdir, retries):
    (workdir / "fragile.py").write_text(FAILING_TASK)
    args = ["grid", "--task", "fragile.py:make", "--lr", "0.1", "--weight-decay", "0", "--batch-size", "16,32",
            "--epochs", "1", "--retries", str(retries), "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    trials = _trials("studies/hpsearch.journal", "make-grid")
    runs = [t for t in trials if t.params["batch_size"] == 16]
    assert len(runs) == retries + 1 and all(t.state == TrialState.FAIL for t in runs)
    assert [t.user_attrs.get("attempt", 1) for t in runs] == list(range(1, retries + 2))
    assert [bool(t.user_attrs.get("requeued")) for t in runs] == [True] * retries + [False]
    assert all("boom in the user's model" in t.user_attrs["reason"] for t in runs)
    assert [t.state for t in trials if t.params["batch_size"] == 32] == [TrialState.COMPLETE]
    again = CliRunner().invoke(main, args)  # a configuration failed for good is not run again
    assert again.exit_code == 0 and len(_trials("studies/hpsearch.journal", "make-grid")) == len(trials)


# at batch size 64 the device runs out of memory, as a GPU would; batch size 32 fits
GREEDY_TASK = _raising_task(64, 'torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")')


def test_out_of_memory_splits_the_population_then_records_each_configuration_and_goes_on(workdir):
    (workdir / "greedy.py").write_text(GREEDY_TASK)
    args = ["grid", "--task", "greedy.py:make", "--lr", "0.1,0.01,0.001", "--weight-decay", "0",
            "--batch-size", "32,64", "--epochs", "1", "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    trials = _trials("studies/hpsearch.journal", "make-grid")
    big = [t for t in trials if t.params["batch_size"] == 64]
    # the population of three was split until each configuration was tried alone: each one is recorded
    assert len(big) == 3 and all(t.state == TrialState.FAIL for t in big)
    assert all(t.user_attrs["outcome"] == "out_of_memory" for t in big)
    assert all(t.user_attrs["reason"] == "out of memory at batch size 64 (cpu)" for t in big)
    assert [t.state for t in trials if t.params["batch_size"] == 32] == [TrialState.COMPLETE] * 3  # the search went on
    report = CliRunner().invoke(main, ["report", "make-grid"])
    assert report.exit_code == 0 and "out of memory at batch size 64" in report.output


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_a_large_grid_is_queued_stops_it_between_chunks_keeping_what_was_queued(tmp_path, signum,
                                                                                               code):
    from hpsearch.search import ENQUEUE_CHUNK

    journal = tmp_path / "q.journal"
    # 1,000,000 points: queueing them all takes minutes; the signal comes once the first chunk is written
    command = [sys.executable, "-m", "hpsearch", "grid", "--lr", "1e-4:1e-1:500000", "--weight-decay", "0,1e-4",
               "--batch-size", "32", "--max-points", "1000000", "--epochs", "1", "--device", "cpu", "--study", "q",
               "--storage", str(journal)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 300
        while not (journal.exists() and journal.read_bytes().count(b"\n") > ENQUEUE_CHUNK):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the first chunk was not queued within 300 s"
            time.sleep(0.05)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code and b"Traceback" not in err
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    last = err.decode().splitlines()[-1]
    assert last.startswith(f"Error: interrupted by {name} while queueing the grid: ")
    assert "of its 1,000,000 points queued and kept, nothing trained; re-run the same command" in last
    trials = _trials(str(journal), "q")
    queued = int(last.split(": ")[2].split(" of")[0].replace(",", ""))
    assert len(trials) == queued and 0 < queued < 1_000_000 and queued % ENQUEUE_CHUNK == 0
    assert all(t.state == TrialState.WAITING for t in trials)
