"""hpsearch test: the chosen configuration trained again and evaluated once on the test split."""
from __future__ import annotations

import pytest
import torch

from hpsearch.search.records import param_config
from hpsearch.train import member_losses, train_and_test

from helpers import TOL, plain_study, run


@pytest.fixture()
def searched(workdir):
    result = run("grid", "--study", "s", "--lr", "1e-1,1e-2", "--weight-decay", "0", "--batch-size", "128",
                 "--epochs", "2")
    assert result.exit_code == 0, result.output
    return plain_study("s")


def test_the_retrained_member_is_the_trial_and_is_scored_on_the_test_split(searched, digits):
    trial = searched.best_trial
    [result] = train_and_test(digits, [param_config(trial.params, 0)], 2)
    assert result.train_loss == pytest.approx(trial.user_attrs["train_loss"], abs=TOL)  # the same training
    assert len(result.val_loss) == len(result.val_accuracy) == 1  # only the final evaluation is kept
    model = digits.make_model()
    model.load_state_dict(result.params)
    x, y = digits.test
    with torch.no_grad():
        outputs = model(x).unsqueeze(0)
    assert result.val_loss[0] == pytest.approx(float(member_losses("classification", outputs, y)[0]), abs=TOL)
    assert result.val_accuracy[0] == pytest.approx(float((outputs[0].argmax(-1) == y).float().mean()), abs=TOL)


def test_test_records_once_and_refuses_a_second_evaluation(searched):
    first = run("test", "--study", "s")
    assert first.exit_code == 0, first.output
    record = plain_study("s").user_attrs["test_result"]
    best = searched.best_trial
    assert record["trial"] == best.number and record["study"] == "s" and record["epochs"] == 2
    assert record["config"]["lr"] == best.params["lr"] and record["evaluations"] == 1
    assert 0 < record["test_accuracy"] <= 1 and record["test_loss"] > 0 and record["when"]
    assert f"test accuracy {record['test_accuracy']:.4f}" in first.stdout

    second = run("test", "--study", "s")
    assert second.exit_code == 2 and "tested already" in second.stderr and "--force" in second.stderr
    assert f"test accuracy {record['test_accuracy']:.4f}" in second.stdout  # the recorded result, shown
    assert plain_study("s").user_attrs["test_result"] == record

    forced = run("test", "--study", "s", "--force")
    assert forced.exit_code == 0, forced.output
    again = plain_study("s").user_attrs["test_result"]
    assert again["evaluations"] == 2 and again["test_accuracy"] == pytest.approx(record["test_accuracy"])
    assert "evaluated 2 times" in forced.stdout


def test_test_takes_another_trial_and_rejects_bad_ones(searched):
    other = next(t for t in searched.get_trials() if t.number != searched.best_trial.number)
    result = run("test", "--study", "s", "--trial", str(other.number))
    assert result.exit_code == 0, result.output
    assert plain_study("s").user_attrs["test_result"]["trial"] == other.number
    for args, message in ((["--study", "s", "--trial", "7", "--force"], "has no trial 7"),
                          (["--study", "nope"], "no study named 'nope'")):
        result = run("test", *args)
        assert result.exit_code == 2 and message in result.stderr, result.output


def test_test_trains_longer_with_a_schedule_and_records_both_trainings(searched, digits):
    """The recipe's last step: the choice trained longer with decay; the record says so beside the trial's own."""
    result = run("test", "--study", "s", "--epochs", "3", "--schedule", "cosine", "--warmup", "1")
    assert result.exit_code == 0, result.output
    record = plain_study("s").user_attrs["test_result"]
    assert (record["epochs"], record["schedule"], record["warmup"]) == (3, "cosine", 1)
    assert record["searched"] == {"epochs": 2, "schedule": "constant", "warmup": 0}
    assert "3 epochs, cosine, warm-up 1 epoch; the trial: 2 epochs" in result.stdout
    report = " ".join(run("report", "s").stdout.split())  # a long line wraps in the terminal
    assert "3 epochs, cosine, warm-up 1 epoch; the trial: 2 epochs" in report
    assert f"the trial's validation accuracy {searched.best_trial.value:.4f}" in report

    from hpsearch.optimizers import Schedule

    config = param_config(searched.best_trial.params, 0)
    [again] = train_and_test(digits, [config], 3, schedule=Schedule("cosine", 1))
    assert record["test_loss"] == pytest.approx(again.val_loss[-1], abs=TOL)  # the very training recorded


@pytest.mark.parametrize("flags, message", [
    (["--schedule", "linear"], "'linear' is not one of"),
    (["--epochs", "2", "--warmup", "2"], "--warmup 2: warm up for fewer epochs than the 2 trained"),
    (["--epochs", "0"], "--epochs 0: give an integer from 1"),
])
def test_test_refuses_a_bad_schedule_before_training(searched, flags, message):
    result = run("test", "--study", "s", *flags)
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert "test_result" not in plain_study("s").user_attrs
