"""Results: the diagnosis of the curves, edge flags, distance to the best and phase, on hand-made rows; and rows read
while workers write, where the trial's state decides what a row says, never a half-written record."""
from __future__ import annotations

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from hpsearch.report.results import diagnose, edge_flags, load_results, phase, rank, searched_ranges

from helpers import plain_study, run


# --- the diagnosis, one hand-made curve per rule ---

@pytest.mark.parametrize("outcome, train, val, expected", [
    ("completed", [2.3, 2.3, 2.3], [2.3, 2.3, 2.3], "not learning"),            # dead ReLUs: flat at ln(10)
    ("completed", [2.31, 2.30, 2.295], [2.3, 2.3, 2.29], "not learning"),       # lr far too low: < 1% fall
    ("completed", [1.0, 0.4, 0.2, 0.1, 0.05], [0.5, 0.3, 0.35, 0.4, 0.45], "overfitting"),
    ("completed", [2.30, 2.26, 2.23, 2.20, 2.17], [2.3, 2.27, 2.24, 2.21, 2.18], "underfitting"),
    ("completed", [1.0, 0.3, 0.2, 0.19, 0.188], [0.4, 0.3, 0.28, 0.27, 0.27], "healthy"),
    # a single bump in the last epoch is noise, not overfitting; a flattened training loss is not underfitting
    ("completed", [1.0, 0.3, 0.2, 0.15, 0.149], [0.4, 0.3, 0.2, 0.15, 0.2], "healthy"),
    # near zero the training loss still falls by a large ratio, but by little of its whole fall
    ("completed", [0.5, 0.1, 0.05, 0.03, 0.02], [0.3, 0.2, 0.19, 0.19, 0.18], "healthy"),
    ("completed", [1.0], [0.9], "too short"),
])
def test_diagnosis_of_completed_curves(outcome, train, val, expected):
    assert diagnose(outcome, train, val) == expected


def test_diagnosis_of_trials_that_did_not_finish():
    assert diagnose("diverged", [2.3], [], stopped_epoch=2) == "diverged at epoch 2"
    assert diagnose("pruned", [2.3, 2.0], [2.2, 2.1], stopped_epoch=2) == "pruned at epoch 2"
    assert diagnose("failed", [], [], reason="CUDA out of memory") == "failed: CUDA out of memory"
    assert diagnose("interrupted", [], []) == "interrupted"
    assert diagnose("out_of_memory", [], [], reason="batch size 4096") == "out_of_memory: batch size 4096"


# --- edges, distance to the best, phase ---

def _frame(rows: list[dict]) -> pd.DataFrame:
    base = {"study": "s", "weight_decay": 0.0, "batch_size": 32, "momentum": 0.9, "optimizer": "sgd", "epochs": 2, "val_loss": 0.5,
            "train_loss": 0.4, "outcome": "completed", "stopped_epoch": None, "seconds": 0.1, "reason": "",
            "phase": "grid", "diagnosis": "healthy"}
    return pd.DataFrame([{**base, "trial": i, **row} for i, row in enumerate(rows)])


def test_searched_ranges_count_every_value_tried_and_edges_skip_fixed_and_zero():
    frame = _frame([{"lr": 0.1, "weight_decay": 0.0, "val_accuracy": 0.9},
                    {"lr": 0.01, "weight_decay": 1e-4, "val_accuracy": 0.8},
                    {"lr": 3.0, "weight_decay": 1e-5, "val_accuracy": None, "outcome": "diverged"}])
    ranges = searched_ranges(frame)
    assert ranges["lr"] == (0.01, 3.0)  # the diverged learning rate was searched too
    assert ranges["momentum"] == (0.9, 0.9)
    assert edge_flags({"lr": 0.1, "weight_decay": 0.0, "batch_size": 32, "momentum": 0.9}, ranges) == {}
    assert edge_flags({"lr": 3.0, "weight_decay": 1e-4}, ranges) == {"lr": "high", "weight_decay": "high"}
    assert edge_flags({"lr": 0.01, "weight_decay": 1e-5}, ranges) == {"lr": "low"}


def test_rank_adds_the_distance_to_the_best_and_the_best_rows_edges():
    frame = _frame([{"lr": 0.01, "val_accuracy": 0.8}, {"lr": 0.1, "val_accuracy": 0.9},
                    {"lr": 3.0, "val_accuracy": None, "val_loss": None, "outcome": "diverged"}])
    ranked = rank(frame)
    assert ranked["delta"].tolist()[:2] == [0.0, pytest.approx(-0.1)] and pd.isna(ranked["delta"].iloc[2])
    assert ranked["edges"].tolist() == ["", "", ""]  # the best lr 0.1 lies inside 0.01..3
    regression = rank(_frame([{"lr": 0.01, "val_accuracy": None, "val_loss": 0.7},
                              {"lr": 0.1, "val_accuracy": None, "val_loss": 0.2}]))
    assert regression["delta"].tolist() == [0.0, pytest.approx(0.5)]  # the loss above the lowest
    assert regression["edges"].iloc[0] == "lr high"


def test_phase_is_refine_when_the_study_came_from_others():
    assert phase({"command": "grid"}) == "grid"
    assert phase({"command": "grid", "source": {"studies": ["coarse"], "trials": [1], "top": 3}}) == "refine"


# --- rows read while a worker writes ---

def _mid_tell(state_attrs: dict[str, object]) -> None:
    """An hpsearch grid study whose second trial a worker is telling: its attributes written, its state not yet."""
    result = run("grid", "--study", "s", "--lr", "0.1", "--weight-decay", "0", "--batch-size", "64", "--epochs", "1")
    assert result.exit_code == 0, result.output
    trial = plain_study("s").ask({"lr": optuna.distributions.FloatDistribution(0.01, 0.1)})
    for key, value in state_attrs.items():
        trial.set_user_attr(key, value)


@pytest.mark.parametrize("attrs", [
    {"outcome": "completed", "reason": "", "epochs": 1},  # before the curves
    {"outcome": "completed", "reason": "", "epochs": 1, "train_loss": [0.5], "val_loss": [0.4]},  # before val_accuracy
    {"outcome": "diverged", "reason": "loss nan", "stopped_epoch": 1},
])
def test_a_trial_still_running_is_running_whatever_its_attributes_say(workdir, attrs):
    _mid_tell(attrs)
    frame = load_results(["s"]).set_index("trial")
    assert frame.loc[1, "outcome"] == "running" and frame.loc[0, "outcome"] == "completed"
    result = run("report", "s")
    assert result.exit_code == 0, result.output
    assert "Best: val acc" in result.stdout
    assert [t.state for t in plain_study("s").trials] == [TrialState.COMPLETE, TrialState.RUNNING]
