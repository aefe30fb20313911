"""Shared fixtures: the real digits task (cached per session), a working folder per test, one torch thread,
torch.optim.SGD as a yardstick, hpsearch subprocesses that never outlive their test.

Plain helpers (run, tiny, study_trials, wait_for, ...) are in helpers.py.
"""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from helpers import one_thread_env

# Started in the background by a script, this pytest inherits SIGINT ignored, and so would every hpsearch
# process the tests start (hpsearch then keeps ignoring it, as it should): the tests that send Ctrl-C to
# one would wait for an exit that never comes. Tests run as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def digits():
    from hpsearch.tasks.builtin import load_task

    return load_task("digits")


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """Run in an empty folder, so the default journal lands in tmp_path/studies/."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on cores shared with other jobs, spinning threads make training ten times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def torch_sgd():
    """Train one configuration the plain way, as its own yardstick (helpers.torch_train: torch.optim.SGD
    unless the configuration names another optimizer); returns the trained model."""
    from helpers import torch_train

    return torch_train


@pytest.fixture()
def spawned():
    """``spawned(folder, args)`` starts ``python -m hpsearch ARGS`` there (one torch thread, stdout and stderr
    piped, bytes unless ``text=True``); whatever a failed test leaves running is killed."""
    procs: list[subprocess.Popen] = []

    def popen(cwd, args: list[str], text: bool = False) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "hpsearch", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=cwd, env=one_thread_env(), text=text)
        procs.append(proc)
        return proc

    yield popen
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
