"""Shared fixtures: the real digits task (cached per session) and a working folder per test."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def digits():
    from hpsearch.tasks import load_task

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
