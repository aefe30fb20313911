"""Every way a search can end badly becomes a clear outcome: Ctrl-C and SIGTERM while training or queueing,
a configuration that fails, one that runs out of memory. (A torn journal: test_journal.py.)

The signal tests run the real command in a subprocess and send the real signal mid-training.
"""
from __future__ import annotations

import signal

import pytest
from optuna.trial import TrialState

from hpsearch.search.run import run_search
from hpsearch.spec import build_spec

from helpers import holding_task, run, running_trials, study_trials, tiny, wait_for


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_a_grid_records_interrupted_trials_and_a_resume_completes_it(tmp_path, one_thread, spawned,
                                                                                      signum, code):
    journal = tmp_path / "s.journal"
    task = holding_task(tmp_path)  # training waits in its first step until the signal has landed
    proc = spawned(tmp_path, ["grid", "--task", task, *tiny(batch_size="32", device="cpu", epochs=2), "--study", "s",
                              "--storage", str(journal)])
    wait_for(lambda: proc.poll() is not None or len(running_trials(str(journal), "s")) == 4, "the 4 trials to train")
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    assert err.decode().splitlines()[-1].startswith(f"Error: interrupted by {name}: 4 running trial(s)")
    assert b"Traceback" not in err
    assert b"Study s: best first" in out  # the results so far are printed
    stopped = [t for t in study_trials(str(journal), "s") if t.user_attrs.get("outcome") == "interrupted"]
    assert len(stopped) == 4 and all(t.state == TrialState.FAIL for t in stopped)
    assert all(name in t.user_attrs["reason"] for t in stopped)
    (tmp_path / "hold").unlink()
    outcome = run_search(build_spec("grid", task=task, lr="0.1,0.01", weight_decay="0,1e-4", batch_size="32",
                                    momentum="0.9", epochs=2, study="s", storage=str(journal), device="cpu"))
    assert outcome.trained == 4
    done = [t for t in study_trials(str(journal), "s") if t.state == TrialState.COMPLETE]
    assert sorted(t.params["lr"] for t in done) == [0.01, 0.01, 0.1, 0.1]


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
# the user's model ends the process at batch size 16, with a status or a message: it fails its trials, not hpsearch
EXITING_TASKS = {"sys.exit(5)": _raising_task(16, "SystemExit(5)"),
                 "sys.exit('no more')": _raising_task(16, 'SystemExit("no more")')}
REASONS = {"raises": "boom in the user's model", **{k: f"the model called {k} while training" for k in EXITING_TASKS}}


@pytest.mark.parametrize("retries", [0, 2])
@pytest.mark.parametrize("how", list(REASONS))
def test_a_failing_configuration_is_retried_then_reported_failed_with_its_reason(workdir, retries, how):
    name = "fragile.py" if how == "raises" else f"exiting{len(how)}.py"  # load_task caches a file by its name
    (workdir / name).write_text(EXITING_TASKS.get(how, FAILING_TASK))
    args = ["grid", "--task", f"{name}:make", "--lr", "0.1", "--weight-decay", "0", "--batch-size", "16,32",
            "--epochs", "1", "--retries", str(retries), "--device", "cpu"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    trials = study_trials("studies/hpsearch.journal", "make-grid")
    runs = [t for t in trials if t.params["batch_size"] == 16]
    assert len(runs) == retries + 1 and all(t.state == TrialState.FAIL for t in runs)
    assert [t.user_attrs.get("attempt", 1) for t in runs] == list(range(1, retries + 2))
    assert [bool(t.user_attrs.get("requeued")) for t in runs] == [True] * retries + [False]
    assert all(REASONS[how] in t.user_attrs["reason"] for t in runs), [t.user_attrs["reason"] for t in runs]
    assert [t.state for t in trials if t.params["batch_size"] == 32] == [TrialState.COMPLETE]
    again = run(*args)  # a configuration failed for good is not run again
    assert again.exit_code == 0 and len(study_trials("studies/hpsearch.journal", "make-grid")) == len(trials)


# at batch size 64 the device runs out of memory, as a GPU would; batch size 32 fits
GREEDY_TASK = _raising_task(64, 'torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")')


def test_out_of_memory_splits_the_population_then_records_each_configuration_and_goes_on(workdir):
    (workdir / "greedy.py").write_text(GREEDY_TASK)
    args = ["grid", "--task", "greedy.py:make", "--lr", "0.1,0.01,0.001", "--weight-decay", "0",
            "--batch-size", "32,64", "--epochs", "1", "--device", "cpu"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    trials = study_trials("studies/hpsearch.journal", "make-grid")
    big = [t for t in trials if t.params["batch_size"] == 64]
    # the population of three was split until each configuration was tried alone: each one is recorded
    assert len(big) == 3 and all(t.state == TrialState.FAIL for t in big)
    assert all(t.user_attrs["outcome"] == "out_of_memory" for t in big)
    assert all(t.user_attrs["reason"] == "out of memory at batch size 64 (cpu)" for t in big)
    assert [t.state for t in trials if t.params["batch_size"] == 32] == [TrialState.COMPLETE] * 3  # the search went on
    report = run("report", "make-grid")
    assert report.exit_code == 0 and "out of memory at batch size 64" in report.output


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_a_large_grid_is_queued_stops_it_between_chunks_keeping_what_was_queued(tmp_path, spawned,
                                                                                               signum, code):
    from hpsearch.search.run import ENQUEUE_CHUNK

    journal = tmp_path / "q.journal"
    # 1,000,000 points: queueing them all takes minutes; the signal comes once the first chunk is written
    proc = spawned(tmp_path, ["grid", "--lr", "1e-4:1e-1:500000", "--weight-decay", "0,1e-4", "--batch-size", "32",
                              "--max-points", "1000000", "--epochs", "1", "--device", "cpu", "--study", "q",
                              "--storage", str(journal)])
    wait_for(lambda: proc.poll() is not None or (journal.exists()
                                                 and journal.read_bytes().count(b"\n") > ENQUEUE_CHUNK),
             "the first chunk to be queued")
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code and b"Traceback" not in err
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    last = err.decode().splitlines()[-1]
    assert last.startswith(f"Error: interrupted by {name} while queueing the grid: ")
    assert "of its 1,000,000 points queued and kept, nothing trained; re-run the same command" in last
    trials = study_trials(str(journal), "q")
    queued = int(last.split(": ")[2].split(" of")[0].replace(",", ""))
    assert len(trials) == queued and 0 < queued < 1_000_000 and queued % ENQUEUE_CHUNK == 0
    assert all(t.state == TrialState.WAITING for t in trials)


@pytest.mark.slow
def test_a_search_started_with_ctrl_c_ignored_keeps_ignoring_it_even_while_it_writes(tmp_path, one_thread):
    """A command started in the background by a script inherits SIGINT ignored: Ctrl-C on the terminal
    must spare it at every moment, its storage writes (where hpsearch holds signals back) included."""
    import subprocess
    import sys
    import time

    from helpers import one_thread_env

    journal = tmp_path / "bg.journal"
    args = [sys.executable, "-m", "hpsearch", "grid", *tiny(batch_size="32", device="cpu", epochs=30), "--study", "bg",
            "--storage", str(journal)]
    proc = subprocess.Popen(args, cwd=tmp_path, env=one_thread_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    wait_for(lambda: proc.poll() is not None or journal.exists(), "the search to start")
    sent = 0
    while proc.poll() is None:  # a Ctrl-C every 5 ms until it ends: many land inside its writes
        proc.send_signal(signal.SIGINT)
        sent += 1
        time.sleep(0.005)
    assert proc.wait() == 0, proc.stderr.read().decode()
    assert sent > 0
    assert sorted(t.state for t in study_trials(str(journal), "bg")) == [TrialState.COMPLETE] * 4
