"""--dry-run and the time estimate: the plan is printed, nothing is trained or written."""
from __future__ import annotations

import re

import pytest
from rich.progress import Progress

from hpsearch.recipe.estimate import Population, estimate_plan, plan_search
from hpsearch.report.render import _Eta
from hpsearch.spec import build_spec

from helpers import run


def test_a_dry_run_of_the_default_grid_prints_its_24_configurations_and_writes_nothing(workdir):
    result = run("grid", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "24 configurations to train (0 already in study 'digits-grid'), 5 epochs each, in 2 populations" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if re.fullmatch(r"\s*\d+(\s+\S+){5}\s*", line)]
    assert [int(r[0]) for r in rows] == list(range(1, 25))
    assert {(r[1], r[2], r[3], r[4], r[5]) for r in rows} == {
        (lr, wd, bs, "0.9", "sgd") for lr in ("0.1", "0.01", "0.001", "0.0001") for wd in ("0", "1e-05", "0.0001")
        for bs in ("32", "128")}
    assert re.search(r"Estimated time: (\d+\.\d s|\d+:\d\d:\d\d) ", result.stdout)
    assert "batch size 32, 12 members" in result.stdout and "batch size 128, 12 members" in result.stdout
    assert not (workdir / "studies").exists()


@pytest.mark.parametrize("command", ["random", "tpe"])
def test_a_dry_run_of_a_sampler_prints_the_sampler_space_and_budget(workdir, command):
    result = run(command, "--dry-run", "--trials", "6", "--batch-size", "32,64", "--config", "study.toml")
    assert result.exit_code == 2  # the file does not exist: nothing to run a dry run of
    result = run(command, "--dry-run", "--trials", "6", "--batch-size", "32,64")
    assert result.exit_code == 0, result.output
    assert f"Sampler: {command} (seed 0), 6 trials in all; space: lr 1e-05:1, weight_decay 0,1e-06:0.01" in result.stdout
    assert "6 configurations to train" in result.stdout and "Estimated time" in result.stdout
    assert not (workdir / "studies").exists()


def test_a_dry_run_of_a_grid_under_way_counts_only_what_is_missing(workdir):
    first = run("grid", "--study", "g", "--lr", "0.1,0.01", "--weight-decay", "0", "--batch-size", "64", "--epochs", "1")
    assert first.exit_code == 0, first.output
    journal = workdir / "studies" / "hpsearch.journal"
    before = journal.read_bytes()
    result = run("grid", "--study", "g", "--lr", "0.1,0.01,0.001", "--weight-decay", "0", "--batch-size", "64",
                 "--epochs", "1", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "1 configurations to train (2 already in study 'g')" in result.stdout
    assert journal.read_bytes() == before


def test_the_plan_splits_populations_as_the_search_does(digits):
    spec = build_spec("grid", lr="1e-1,1e-2,1e-3,1e-4", weight_decay="1e-7:1e-3:5,0", batch_size="16:128", study="p",
                      storage="unused.journal")
    plan = plan_search(spec)  # 4 x 6 x 4 = 96 points: a first population of 64 holds batch sizes 16 and 32
    assert plan.to_train == 96 and sum(p.members for p in plan.populations) == 96
    assert plan.populations == [Population(16, 24), Population(32, 24), Population(64, 16), Population(64, 8),
                                Population(128, 24)]
    repeated = plan_search(build_spec("grid", lr="1e-1,1e-2,1e-3,1e-4", weight_decay="1e-7:1e-3:5,0",
                                      batch_size="16:128", study="p", storage="unused.journal", repeats=3))
    # 3 seeds a configuration: 21 configurations (63 members) asked at a time, so populations stay <= 64
    assert repeated.to_train == 96 and sum(p.members for p in repeated.populations) == 3 * 96
    assert max(p.members for p in repeated.populations) <= 64 and all(p.members % 3 == 0 for p in repeated.populations)
    estimate = estimate_plan(plan_search(build_spec("grid", batch_size="128", epochs=2, storage="unused.journal")),
                             digits)
    assert set(estimate.step_ms) == {(128, 12)} and estimate.seconds > 0


def test_the_bar_counts_the_estimate_down_until_the_trials_set_the_pace():
    bar = Progress()
    task = bar.add_task("grid", total=24)
    eta = _Eta(100.0)
    assert str(eta.render(bar.tasks[task])) in ("0:01:40", "0:01:39")
    assert str(_Eta(None).render(bar.tasks[task])) == "-:--:--"


HUNDRED = ",".join(f"{i}e-3" for i in range(1, 101))
HUGE = [  # a range count; a product of several lists
    (["--lr", "1e-4:1e-1:10000000"], "the grid holds 60,000,000 points (10,000,000 lr x 3 weight_decay x 2 batch_size"),
    (["--lr", HUNDRED, "--weight-decay", HUNDRED.replace("e-3", "e-6"), "--batch-size", "16,32,64,128,256", "--momentum",
      "0.1,0.5,0.9"], "the grid holds 150,000 points (100 lr x 100 weight_decay x 5 batch_size x 3 momentum)"),
]


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
@pytest.mark.parametrize(("flags", "message"), HUGE)
def test_a_huge_grid_is_refused_with_its_size_and_the_override_and_nothing_is_written(workdir, flags, message, dry_run):
    result = run("grid", *flags, *dry_run)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "more than the limit of 100,000" in result.stderr and "--max-points N" in result.stderr
    assert result.stdout == "" and not (workdir / "studies").exists()


def test_a_dry_run_of_a_large_grid_summarises_its_points(workdir):
    # 12,800 points (200 populations of 64): within the limit, far too many to list
    result = run("grid", "--lr", "1e-4:1e-1:6400", "--weight-decay", "0,1e-4", "--batch-size", "128", "--epochs", "1",
                 "--device", "cpu", "--dry-run")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines() if re.fullmatch(r"\s*\d+(\s+\S+){5}\s*", line)]
    assert [int(r[0]) for r in rows] == [*range(1, 11), *range(12791, 12801)]
    assert "the first and last 10 of 12,800 configurations" in " ".join(result.stdout.split())
    assert "12800 configurations to train" in result.stdout
    assert not (workdir / "studies").exists()
