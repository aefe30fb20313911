"""Results read while workers write: the trial's state decides what a row says, never a half-written record."""
from __future__ import annotations

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from hpsearch.cli import main
from hpsearch.results import load_results
from hpsearch.storage import DEFAULT_JOURNAL


def _mid_tell(state_attrs: dict[str, object]) -> None:
    """An hpsearch grid study whose second trial a worker is telling: its attributes written, its state not yet."""
    result = CliRunner().invoke(main, ["grid", "--study", "s", "--lr", "0.1", "--weight-decay", "0", "--batch-size", "64",
                                       "--epochs", "1"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(DEFAULT_JOURNAL))))
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(0.01, 0.1)})
    for key, value in state_attrs.items():
        trial.set_user_attr(key, value)


@pytest.mark.parametrize("attrs", [
    {"outcome": "completed", "reason": "", "epochs": 1},  # before the curves
    {"outcome": "completed", "reason": "", "epochs": 1, "train_loss": [0.5], "val_loss": [0.4]},  # before val_accuracy
    {"outcome": "diverged", "reason": "loss nan", "stopped_epoch": 1},
])
def test_a_trial_still_running_is_running_whatever_its_attributes_say(workdir, attrs):
    _mid_tell(attrs)
    frame = load_results(["s"])
    assert frame.set_index("trial").loc[1, "outcome"] == "running"
    assert frame.set_index("trial").loc[0, "outcome"] == "completed"
    result = CliRunner().invoke(main, ["report", "s"])
    assert result.exit_code == 0, result.output
    assert "Best: val acc" in result.stdout
    assert [t.state for t in optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(DEFAULT_JOURNAL)))).trials] == [TrialState.COMPLETE,
                                                                                       TrialState.RUNNING]
