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
