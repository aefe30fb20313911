"""Models beyond a plain MLP in the population: BatchNorm, Dropout, regression, and models vmap cannot batch."""
from __future__ import annotations

import logging

import optuna
import pytest
import torch
from torch import nn

from hpsearch.spec import make_config
from hpsearch.tasks.builtin import Task
from hpsearch.train import train_population

from helpers import TOL, close, plain_study, run, tiny


def configs(batch_size: int = 32) -> list:
    return [make_config({"lr": lr, "weight_decay": wd, "batch_size": batch_size, "momentum": 0.9}, 0)
            for lr in (0.1, 0.01) for wd in (0.0, 1e-4)]


def data(n: int = 96, regression: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = x[:, :2].sum(1) if regression else (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return x, y


def batchnorm_model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def dropout_model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))


def task(make_model, regression: bool = False) -> Task:
    x, y = data(regression=regression)
    split = (x[:64], y[:64]), (x[64:], y[64:])
    if regression:
        split = tuple((a, b.unsqueeze(1)) for a, b in split)
        return Task("r", make_model, split[0], split[1], split[1], 1, "regression")
    return Task("t", make_model, split[0], split[1], split[1], 3)


def test_batchnorm_members_equal_their_solo_runs():
    """Running statistics are stacked per member: each member's evaluation uses its own."""
    population = train_population(task(batchnorm_model), configs(), epochs=2)
    for i in (0, 3):
        alone = train_population(task(batchnorm_model), [configs()[i]], epochs=2)[0]
        assert close(population[i].params, alone.params) < TOL
        assert population[i].val_loss == pytest.approx(alone.val_loss, abs=TOL)  # eval mode: running stats


def test_batchnorm_members_left_behind_take_their_statistics_with_them():
    """Members 0 and 2 stopped after epoch 1 (rows not contiguous): the others' running statistics stay their own,
    so they still equal their solo runs through the evaluation-mode loss."""
    population = configs()

    def stop(report):
        return [0, 2] if report.epoch == 1 else []

    together = train_population(task(batchnorm_model), population, epochs=3, on_epoch=stop)
    assert [r.outcome for r in together] == ["stopped", "completed", "stopped", "completed"]
    for i in (1, 3):
        alone = train_population(task(batchnorm_model), [population[i]], epochs=3)[0]
        assert close(together[i].params, alone.params) < TOL
        assert together[i].val_loss == pytest.approx(alone.val_loss, abs=TOL)


def test_dropout_draws_different_masks_per_member():
    """Two members with the same configuration start equal; different masks make them part.

    Equality with a solo run therefore holds only for models without randomness.
    """
    same = [configs()[0]] * 2
    with_dropout = train_population(task(dropout_model), same, epochs=1)
    assert close(with_dropout[0].params, with_dropout[1].params) > 1e-4
    without = train_population(task(batchnorm_model), same, epochs=1)
    assert close(without[0].params, without[1].params) < TOL


class Branching(nn.Module):
    """Python control flow on the data: vmap cannot batch it. The branch is always taken."""

    def __init__(self):
        super().__init__()
        self.net = batchnorm_model()

    def forward(self, x):
        if float(x.abs().sum()) >= 0:
            return self.net(x)
        return -self.net(x)


class Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = batchnorm_model()

    def forward(self, x):
        return self.net(x)


def test_a_model_vmap_cannot_batch_trains_one_member_at_a_time(caplog):
    caplog.set_level(logging.WARNING, logger="hpsearch")
    looped = train_population(task(Branching), configs(), epochs=2)
    train_population(task(Branching), configs()[:1], epochs=1)
    vmapped = train_population(task(Wrapped), configs(), epochs=2)
    for a, b in zip(looped, vmapped):  # the same arithmetic, BatchNorm statistics included
        assert a.outcome == "completed"
        assert close(a.params, b.params) < TOL
        assert a.val_loss == pytest.approx(b.val_loss, abs=TOL)
    notes = [r.getMessage() for r in caplog.records if "cannot vectorise" in r.getMessage()]
    assert len(notes) == 1 and "Branching" in notes[0] and "one at a time" in notes[0]


def linear_model() -> nn.Module:
    return nn.Linear(6, 1)


def test_regression_trains_with_mean_squared_error_and_has_no_accuracy(torch_sgd):
    config = configs()[2]
    regression = task(linear_model, regression=True)
    ours = train_population(regression, [config], 2)[0]
    assert ours.val_accuracy == [] and len(ours.val_loss) == 2 and ours.val_loss[1] < ours.val_loss[0]
    model = torch_sgd(linear_model, *regression.train, config, 2, nn.functional.mse_loss)
    assert close(dict(model.named_parameters()), ours.params) < TOL


REGRESSION_TASK = '''
import torch
from torch import nn
from hpsearch import Task

def make():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(120, generator=g)
    return Task("linear-regression", lambda: nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1)),
                (x[:80], y[:80]), (x[80:100], y[80:100]), (x[100:], y[100:]), 1, "regression")
'''

BN_DROPOUT_TASK = '''
import torch
from torch import nn
from hpsearch import Task

def make():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 4, generator=g)
    y = (x[:, 0] > 0).long()
    model = lambda: nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
    return Task("bn-dropout", model, (x[:80], y[:80]), (x[80:100], y[80:100]), (x[100:], y[100:]), 2)
'''

GRID = tiny(weight_decay="0", batch_size="16,32", epochs=2)  # 4 trials


def test_a_regression_task_runs_through_grid_minimising_validation_loss(workdir):
    (workdir / "reg.py").write_text(REGRESSION_TASK)
    result = run("grid", "--task", f"{workdir / 'reg.py'}:make", *GRID)
    assert result.exit_code == 0, result.output
    assert "Best: val loss" in result.stdout and "Trained 4 trials" in result.stdout
    study = plain_study("make-grid", workdir / "studies" / "hpsearch.journal")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.user_attrs["hpsearch"]["metric"] == "val_loss"
    for trial in study.trials:
        assert trial.value == trial.user_attrs["val_loss"][-1]
        assert list(trial.intermediate_values.values()) == trial.user_attrs["val_loss"]
        assert not trial.user_attrs.get("val_accuracy")
    from hpsearch.report.results import load_results

    frame = load_results(["make-grid"])
    assert list(frame["val_loss"]) == sorted(frame["val_loss"]) and frame["rank"].tolist() == [1, 2, 3, 4]
    assert study.best_trial.number == int(frame["trial"].iloc[0])


def test_a_batchnorm_and_dropout_task_runs_through_grid(workdir):
    (workdir / "bn.py").write_text(BN_DROPOUT_TASK)
    result = run("grid", "--task", f"{workdir / 'bn.py'}:make", "--study", "bn", *GRID)
    assert result.exit_code == 0, result.output
    assert "Best: val acc" in result.stdout and "Trained 4 trials" in result.stdout and "failed" not in result.stdout
