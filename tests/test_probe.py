"""The learning-rate probe (hpsearch check --lr-probe): its range holds the rate a real coarse grid picks."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from hpsearch.recipe.probe import RATES, STEPS, coarse_grid, lr_probe
from hpsearch.report.plots import PNG_MAGIC
from hpsearch.report.results import read_results
from hpsearch.spec import parse_values
from hpsearch.tasks.builtin import load_task

from helpers import run
from test_check import IgnoresInput

pytestmark = pytest.mark.usefixtures("one_thread")

# A small real coarse grid: one value a decade over the probe's span, the probe's weight decay and batch size.
GRID = ["--lr", "1e-4:10:6", "--weight-decay", "1e-4", "--batch-size", "64", "--epochs", "2"]


def best_lr_of_grid(task: str) -> float:
    """The learning rate of the best trial of GRID on ``task``, as hpsearch ranks it."""
    result = run("grid", "--task", task, *GRID, "--study", "coarse")
    assert result.exit_code == 0, result.output
    return float(read_results(["coarse"]).frame.iloc[0]["lr"])


@pytest.mark.parametrize("task", ["digits", "mnist1d"])
def test_the_range_holds_the_best_rate_of_a_coarse_grid_and_the_suggested_grid_covers_it(workdir, task):
    best = best_lr_of_grid(task)
    probe = lr_probe(load_task(task))
    assert probe.good is not None and not probe.warning, probe.summary
    low, high = probe.good
    assert low <= best <= high, f"grid's best lr {best} outside the probe's range {low}..{high}"
    suggested = parse_values("lr", probe.grid).grid()
    assert min(suggested) <= low and high <= max(suggested)  # the decades cover the range
    assert all(math.log10(v) == round(math.log10(v)) for v in suggested) and len(suggested) >= 3
    # every rate in the range dropped the loss, the rates just outside it did not
    inside = [loss for rate, loss in zip(probe.rates, probe.losses) if low <= rate <= high]
    assert all(probe.dropped(loss) for loss in inside)
    at = probe.rates.index(low), probe.rates.index(high)
    assert at[0] == 0 or not probe.dropped(probe.losses[at[0] - 1])
    assert at[1] == len(probe.rates) - 1 or not probe.dropped(probe.losses[at[1] + 1])


def test_a_model_that_cannot_learn_has_no_range_and_a_warning(digits):
    probe = lr_probe(replace(digits, make_model=IgnoresInput))
    assert probe.warning and probe.good is None and probe.grid is None
    assert probe.summary.startswith("no learning rate from 1e-05 to 10 brought the loss below 0.8x its initial")
    assert "suggested" not in "\n".join(probe.lines())


def test_adam_spans_the_same_rates_and_diverges_at_the_top(digits):
    probe = lr_probe(digits, optimizer="adam")
    assert probe.rates == RATES and probe.good is not None
    assert not math.isfinite(probe.losses[-1])  # lr 10 for Adam
    assert "--optimizer adam --lr " + probe.grid in probe.lines(["--task", "digits"])[-1]


def test_a_narrow_range_grows_to_three_decades_toward_the_lowest_loss():
    assert coarse_grid(0.005, 1.0, 0.2) == "1e-3:1:4"  # the decades that cover it
    assert coarse_grid(0.02, 0.05, 0.05) == "1e-2:1:3"  # nearer 0.1 than 0.01: grows upward
    assert coarse_grid(0.02, 0.05, 0.02) == "1e-3:1e-1:3"  # nearer 0.01: grows downward
    assert coarse_grid(0.1, 0.1, 0.1) == "1e-2:1:3"
    for text in ("1e-3:1:4", "1e-2:1:3", "1e-3:1e-1:3", "10:1000:3"):
        assert parse_values("lr", text).grid()  # the suggestion is valid VALUES for --lr
    assert coarse_grid(20, 200, 50) == "10:1000:3"


def test_check_lr_probe_prints_the_table_and_the_grid_and_writes_the_plot(workdir, digits):
    result = run("check", "--lr-probe", "--task", "digits", "--plots", "plots")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["lr", "loss", "after", str(STEPS), "steps", "x", "initial"]
    table = lines[2:2 + len(RATES)]
    assert [float(row.split()[0]) for row in table] == list(RATES)
    assert any(row.endswith("dropped, lowest") for row in table) and any(row.endswith("dropped") for row in table)
    probe = lr_probe(digits)  # the library's verdict, as the command gave it
    assert lines[-2] == f"range: {probe.good[0]:g} to {probe.good[1]:g} (lowest loss at lr {probe.best:g})"
    assert lines[-1] == f"suggested: hpsearch grid --task digits --lr {probe.grid}"
    assert (workdir / "plots" / "lr_probe.png").read_bytes().startswith(PNG_MAGIC)
    assert not (workdir / "studies").exists()


def test_check_lr_probe_of_a_regression_data_file(workdir):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    np.savez(workdir / "r.npz", x_train=x, y_train=x @ np.array([1.0, -2.0, 0.5, 0.0], dtype=np.float32))
    result = run("check", "--lr-probe", "--data", "r.npz")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith("suggested: hpsearch grid --data r.npz --lr ")


@pytest.mark.parametrize("args, message", [
    (["--plots", "a-file"], "Error: --plots a-file is not a folder; give the path of a folder for the PNG files"),
    (["--plots", "taken"], "Error: --plots taken/lr_probe.png exists and is"),
    (["--task", "nosuch"], "Error: unknown task 'nosuch'; built-in tasks: digits, mnist1d"),
])
def test_check_lr_probe_refuses_bad_plot_folders_in_one_line_before_training(workdir, args, message):
    (workdir / "a-file").write_text("mine")
    (workdir / "taken").mkdir()
    (workdir / "taken" / "lr_probe.png").write_text("my notes")
    result = run("check", "--lr-probe", *args)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(message)
    assert result.stdout == "" and (workdir / "taken" / "lr_probe.png").read_text() == "my notes"


def test_plots_without_lr_probe_is_refused(workdir):
    result = run("check", "--plots", "plots")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --plots draws the learning-rate probe: give it with --lr-probe")
