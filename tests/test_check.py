"""hpsearch check: the recipe's sanity checks find planted mistakes; digits passes them."""
from __future__ import annotations

import math
from dataclasses import replace

import torch
from click.testing import CliRunner
from torch import nn

from hpsearch.check import initial_loss, memory, overfit_one_batch, parameter_count
from hpsearch.cli import main


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


def test_a_model_without_trainable_parameters_is_flagged(digits):
    def frozen() -> nn.Module:
        model = nn.Linear(64, 10)
        model.requires_grad_(False)
        return model

    finding = parameter_count(replace(digits, make_model=frozen))
    assert finding.warning and "no trainable parameters" in finding.text and "650 of them frozen" in finding.text


def test_an_overconfident_initialisation_is_a_warning(digits):
    def loud() -> nn.Module:
        model = nn.Linear(64, 10)
        with torch.no_grad():
            model.weight.mul_(100)
        return model

    (loss,) = initial_loss(replace(digits, make_model=loud))
    assert loss.warning and "too high" in loss.text


def test_check_on_the_command_line(workdir):
    result = CliRunner().invoke(main, ["check", "--task", "digits", "--population", "4"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0].split()[-1] for line in lines] == [
        "parameters", "loss", "overfit", "time", "time", "time", "time", "memory"]
    assert "batch size 256:" in result.stdout and "for 4 members" in result.stdout
    assert not (workdir / "studies").exists()


def test_check_has_help_with_an_example():
    result = CliRunner().invoke(main, ["check", "--help"])
    assert result.exit_code == 0 and "hpsearch check --task digits" in result.stdout
