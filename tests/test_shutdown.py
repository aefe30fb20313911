"""hpsearch.shutdown: a command ends without Python's teardown, and loses nothing the teardown would have kept.

Each test runs the real console entry (``python -m hpsearch``) or ``leave`` in a subprocess: a task file
that leaves a file open and unflushed, registers an exit handler and starts a thread, and the exit
statuses of success, bad input and sys.exit's other forms.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import one_thread_env, study_trials, tiny

# A task file doing what user code may do: a log file written and never closed (its last line is still
# in the buffer), an exit handler, and a non-daemon thread that finishes after the search.
TASK = '''
import atexit, os, threading, time
import torch
from torch import nn
from hpsearch import Task

HERE = os.path.dirname(os.path.abspath(__file__))
log = open(os.path.join(HERE, "unclosed.log"), "w")
log.write("first line\\n")
atexit.register(lambda: open(os.path.join(HERE, "atexit.txt"), "w").write("ran"))


def late():
    time.sleep(float(os.environ.get("LATE", "0")))
    open(os.path.join(HERE, "thread.txt"), "w").write("done")


def make():
    log.write("task made\\n")  # stays in the buffer: only an exit that flushes open files writes it
    if os.environ.get("LATE"):
        threading.Thread(target=late).start()  # not a daemon: Python waits for it at exit
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return Task("tiny", lambda: nn.Linear(4, 2), (x[:48], y[:48]), (x[48:], y[48:]), None, 2)
'''


def hpsearch(folder, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=folder, check=False, capture_output=True,
                          text=True, env=one_thread_env(**env), timeout=300)


def test_a_search_ends_with_its_output_files_and_exit_handlers_complete(tmp_path):
    (tmp_path / "task.py").write_text(TASK)
    proc = hpsearch(tmp_path, "grid", "--task", "task.py:make", "--study", "s", "--storage", "s.journal",
                    *tiny(batch_size="16"))
    assert proc.returncode == 0, proc.stderr
    assert "Trained 4 trials" in proc.stdout  # stdout is a pipe: it was flushed
    assert (tmp_path / "unclosed.log").read_text().splitlines()[-1] == "task made"
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert len(study_trials(str(tmp_path / "s.journal"), "s")) == 4


def test_a_running_thread_is_waited_for(tmp_path):
    (tmp_path / "task.py").write_text(TASK)
    proc = hpsearch(tmp_path, "grid", "--task", "task.py:make", "--study", "s", "--storage", "s.journal",
                    *tiny(batch_size="16"), LATE="1.5")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "thread.txt").read_text() == "done"


def test_bad_input_keeps_its_line_and_status(tmp_path):
    proc = hpsearch(tmp_path, "grid", "--task", "digits", "--lr", "fast")
    assert proc.returncode == 2
    assert proc.stderr.startswith("Error: ") and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("code, status, stderr", [("None", 0, ""), ("3", 3, ""), ("'stopped here'", 1, "stopped here")])
def test_leave_exits_as_sys_exit_would(code, status, stderr):
    script = f"import torch\nfrom hpsearch.shutdown import leave\nprint('out', end='')\nleave({code})\nprint('never')"
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr.strip()) == (status, "out", stderr)
