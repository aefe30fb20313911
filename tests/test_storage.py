from __future__ import annotations

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage

from hpsearch.errors import BadInput, RuntimeFailure
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


def test_passwords_are_hidden():
    assert redact("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert redact("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(RuntimeFailure) as caught:
        open_storage("postgresql://me:s3cret@127.0.0.1:1/none", create=True)
    assert "s3cret" not in str(caught.value)


def test_an_unwritable_journal_is_a_runtime_error(workdir):
    (workdir / "blocker").write_text("a file where a folder should be")
    with pytest.raises(RuntimeFailure, match="cannot write the journal blocker/x.journal"):
        open_storage("blocker/x.journal", create=True)
