"""hpsearch check: the recipe's sanity checks find planted mistakes; digits passes them."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from hpsearch.errors import BadInput
from hpsearch.recipe.check import initial_loss, memory, overfit_one_batch, parameter_count, run_checks

from helpers import run


class IgnoresInput(nn.Module):
    """Predicts the same logits whatever the input: it cannot fit a batch of several classes."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


def test_digits_passes_the_checks(digits):
    assert parameter_count(digits).text.startswith("9,610 parameters")  # 64*128 + 128 + 128*10 + 10
    (loss,) = initial_loss(digits)
    assert not loss.warning and f"ln(10) = {math.log(10):.3f}" in loss.text
    fitted = overfit_one_batch(digits, steps=200)
    assert not fitted.warning and fitted.text.startswith("can overfit one batch of 32: loss")
    assert memory(digits).text == "on CPU: memory not probed"


def test_a_softmax_before_the_cross_entropy_is_caught(digits):
    softmax = replace(digits, make_model=lambda: nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10),
                                                               nn.Softmax(dim=1)))
    findings = initial_loss(softmax)
    assert abs(float(findings[0].text.split()[2].rstrip(",")) - math.log(10)) < 0.1  # the loss alone looks fine
    (outputs,) = [f for f in findings if f.check == "outputs"]
    assert outputs.warning and "softmax before the cross-entropy loss" in outputs.text and "return logits" in outputs.text


def test_a_model_that_ignores_its_input_cannot_overfit_one_batch(digits):
    finding = overfit_one_batch(replace(digits, make_model=IgnoresInput), steps=60)
    assert finding.warning
    assert finding.text.startswith("could not overfit one batch of 32 in 60 steps")
    assert "check that the output depends on the input" in finding.text


FROZEN_TASK = """
import torch
from torch import nn
from hpsearch import Task

def frozen():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    model.requires_grad_(False)
    return model

def make():
    x = torch.randn(64, 4)
    return Task('frozen', frozen, (x, (x[:, 0] > 0).long()), None, None, 2)
"""


def test_a_model_without_trainable_parameters_is_refused_not_checked(digits):
    def frozen() -> nn.Module:
        model = nn.Linear(64, 10)
        model.requires_grad_(False)
        return model

    task = replace(digits, make_model=frozen)
    with pytest.raises(BadInput, match=r"has no trainable parameter \(all 650 of its parameters have requires_grad"):
        run_checks(task)
    with pytest.raises(BadInput, match="has no trainable parameter"):  # never "can overfit one batch"
        overfit_one_batch(task, steps=5)


@pytest.mark.parametrize("command", [["check"], ["grid", "--epochs", "1"]])
def test_a_frozen_plugin_model_is_one_line_and_exit_2(workdir, command):
    (workdir / "frozen.py").write_text(FROZEN_TASK)
    result = run(*command, "--task", "frozen.py:make")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "Error: frozen.py:make: the Sequential model has no trainable parameter "
        "(all 58 of its parameters have requires_grad=False); unfreeze the parameters to tune"]
    assert "overfit" not in result.stdout and not (workdir / "studies").exists()


def test_a_partly_frozen_model_is_counted(digits):
    def half() -> nn.Module:
        model = nn.Sequential(nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, 10))
        model[0].requires_grad_(False)
        return model

    assert parameter_count(replace(digits, make_model=half)).text == "760 parameters in the Sequential model, 650 of them frozen"


def test_an_overconfident_initialisation_is_a_warning(digits):
    def loud() -> nn.Module:
        model = nn.Linear(64, 10)
        with torch.no_grad():
            model.weight.mul_(100)
        return model

    (loss,) = initial_loss(replace(digits, make_model=loud))
    assert loss.warning and "too high" in loss.text


def test_check_on_the_command_line(workdir):
    result = run("check", "--task", "digits", "--population", "4")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0].split()[-1] for line in lines] == [
        "parameters", "loss", "overfit", "probe", "time", "time", "time", "time", "memory"]
    assert "batch size 256:" in result.stdout and "for 4 members" in result.stdout
    assert not (workdir / "studies").exists()


def test_check_has_help_with_an_example():
    result = run("check", "--help")
    assert result.exit_code == 0 and "hpsearch check --task digits" in result.stdout


@pytest.mark.parametrize("optimizer, named", [("adam", "Adam lr"), ("rmsprop", "RMSprop lr"), ("nesterov", "Nesterov")])
def test_the_overfit_check_trains_with_the_optimizer_searched(digits, optimizer, named):
    fitted = overfit_one_batch(digits, steps=200, optimizer=optimizer)
    assert not fitted.warning and fitted.text.startswith("can overfit one batch of 32") and named in fitted.text


def test_check_refuses_an_unknown_optimizer(digits):
    with pytest.raises(BadInput, match="--optimizer lion: choose one of sgd, nesterov, adam, adamw, rmsprop"):
        run_checks(digits, optimizer="lion")
    result = run("check", "--optimizer", "lion")
    assert result.exit_code == 2 and "'lion' is not one of" in result.stderr
