"""hpsearch refine: the neighbourhood rule in pure Python, then the command on a tiny digits study."""
from __future__ import annotations

import math
import os
import shutil

import numpy as np
import optuna
import pytest

from hpsearch.recipe.refine import half_step, neighbourhood

from helpers import plain_storage, plain_study, run, tiny

DECADE = math.log(10) / 2  # the refined step of a grid spaced by decades: half a decade


# --- the rule ---


def test_refined_step_is_half_the_smallest_coarse_gap():
    assert half_step("lr", [1e-3, 1e-2, 1e-1]) == pytest.approx(DECADE)
    assert half_step("lr", [1e-4, 1e-2, 1e-1]) == pytest.approx(DECADE)  # the finest gap wins
    assert half_step("weight_decay", [0, 1e-5, 1e-4]) == pytest.approx(DECADE)  # 0 has no log
    assert half_step("lr", [0.1]) == pytest.approx(DECADE)  # no spacing: a decade
    assert half_step("momentum", [0.9, 0.99]) == pytest.approx(DECADE)  # on 1 - m
    assert half_step("batch_size", [32, 128]) == 1.0  # one power of two


def test_a_best_value_inside_the_range_gets_one_refined_step_either_side():
    assert neighbourhood("lr", 1e-2, DECADE) == (0.00316, 0.01, 0.0316)
    assert neighbourhood("weight_decay", 1e-4, DECADE) == (3.16e-5, 1e-4, 3.16e-4)
    assert neighbourhood("batch_size", 64, 1.0) == (32, 64, 128)
    assert neighbourhood("momentum", 0.9, DECADE) == (0.684, 0.9, 0.9684)


def test_a_best_value_on_an_edge_widens_that_side_by_a_whole_coarse_step():
    assert neighbourhood("lr", 0.1, DECADE, "high") == (0.0316, 0.1, 0.316, 1.0)
    assert neighbourhood("lr", 1e-4, DECADE, "low") == (1e-5, 3.16e-5, 1e-4, 3.16e-4)
    assert neighbourhood("batch_size", 128, 1.0, "high") == (64, 128, 256, 512)
    assert neighbourhood("momentum", 0.99, DECADE, "high") == (0.9684, 0.99, 0.99684, 0.999)


def test_weight_decay_zero_and_momentum_zero_stay():
    assert neighbourhood("weight_decay", 0.0, DECADE, lowest_nonzero=1e-5) == (0.0, 3.16e-6)
    assert neighbourhood("weight_decay", 0.0, DECADE) == (0.0,)  # nothing nonzero was searched
    assert neighbourhood("momentum", 0.0, DECADE) == (0.0, 0.684)  # never below 0
    assert neighbourhood("momentum", 0.5, DECADE, "low") == (0.0, 0.5, 0.842)  # widened down to 0
    assert neighbourhood("batch_size", 1, 1.0) == (1, 2)


# --- the command ---

# On digits after 2 epochs (seed 0), lr 1e-1 is the best of 1e-3, 1e-2, 1e-1: the largest searched.
# Batch size 256: 5 steps an epoch keep the refined runs short.
COARSE = tiny(lr="1e-3,1e-2,1e-1", batch_size="256", epochs=2)


@pytest.fixture(scope="module")
def coarse_journal(tmp_path_factory):
    path = tmp_path_factory.mktemp("coarse") / "coarse.journal"
    result = run("grid", "--study", "coarse", "--storage", str(path), *COARSE)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture()
def storage(coarse_journal, workdir):
    """A copy of the coarse study's journal for one test."""
    path = workdir / "studies.journal"
    shutil.copy(coarse_journal, path)
    return str(path)


def completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def top3(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return sorted(completed(study), key=lambda t: (-t.value, t.user_attrs["val_loss"][-1], t.number))[:3]


def near(a: float, b: float, factor: float, below_zero: float = 0.0) -> bool:
    """``a`` lies within ``factor`` of ``b`` on a log scale; around 0: 0 or below ``below_zero``."""
    if b == 0:
        return a < below_zero or a == 0
    return a > 0 and abs(math.log(a / b)) <= math.log(factor) * 1.001


def test_refined_grid_lies_around_the_top_trials_and_widens_upward(storage):
    result = run("refine", "--from", "coarse", "--study", "fine", "--epochs", "1", "--storage", storage)
    assert result.exit_code == 0, result.output
    coarse, fine = plain_study("coarse", storage), plain_study("fine", storage)
    best = top3(coarse)
    assert best[0].params["lr"] == 0.1  # the premise: the best lr is the largest searched
    points = [t.params for t in fine.get_trials()]
    assert len(points) == len({tuple(sorted(p.items())) for p in points})  # no duplicates
    for p in points:  # each point: within a coarse step (a decade) of one top trial on every parameter
        assert any(near(p["lr"], t.params["lr"], 10) and near(p["weight_decay"], t.params["weight_decay"], 10, 1e-4)
                   and p["batch_size"] == t.params["batch_size"] and p["momentum"] == t.params["momentum"]
                   for t in best), p
    lrs = sorted({p["lr"] for p in points})
    assert lrs == [0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0]  # above the old maximum 0.1: widened upward
    assert 0.0 in {t.params["weight_decay"] for t in best}  # among the best (second)...
    assert 0.0 in {p["weight_decay"] for p in points}  # ...so it stays a candidate
    source = fine.user_attrs["hpsearch"]["source"]
    assert source["studies"] == ["coarse"] and source["top"] == 3 and source["rule"]
    assert [t["trial"] for t in source["trials"]] == [t.number for t in best]
    again = run("refine", "--from", "coarse", "--study", "fine", "--epochs", "1", "--storage", storage)
    assert "Nothing to train" in again.stdout


def test_refine_trains_longer_by_default_and_keeps_the_seed(storage):
    result = run("refine", "--from", "coarse", "--sampler", "random", "--trials", "2", "--study", "long",
                 "--storage", storage)
    assert result.exit_code == 0, result.output
    study = plain_study("long", storage)
    settings = study.user_attrs["hpsearch"]
    assert settings["epochs"] == 10 and settings["seed"] == 0 and settings["task"] == "digits"
    assert [t.user_attrs["epochs"] for t in completed(study)] == [10, 10]
    table = run("report", "coarse", "long", "--format", "csv", "--storage", storage).stdout
    assert "refine" in table  # the phase


def test_show_prints_the_space_and_trains_nothing(storage):
    result = run("refine", "--from", "coarse", "--show", "--storage", storage)
    assert result.exit_code == 0, result.output
    assert "lr (log scale, refined step x3.16)" in result.stdout
    assert "best 0.1 is the highest value searched -> widened upward: 0.0316, 0.1, 0.316, 1" in result.stdout
    assert "28 configurations" in result.stdout and "batch_size (searched at one value)" in result.stdout
    names = [s.study_name for s in plain_storage(storage).get_all_studies()]
    assert names == ["coarse"]


def test_random_and_tpe_sample_inside_the_refined_ranges(storage):
    result = run("refine", "--from", "coarse", "--sampler", "tpe", "--trials", "4", "--epochs", "1",
                 "--study", "fine-tpe", "--storage", storage)
    assert result.exit_code == 0, result.output
    trials = plain_study("fine-tpe", storage).get_trials()
    assert len(trials) == 4
    for t in trials:
        assert 0.00316 <= t.params["lr"] <= 1.0
        assert t.params.get("weight_decay_zero") or 3.16e-5 <= t.params["weight_decay"] <= 1e-3


@pytest.mark.parametrize("args, message", [
    (["--from", "nope"], "no study named 'nope'"),
    (["--from", "coarse", "--study", "coarse"], "choose a name other than its sources'"),
    (["--from", "coarse", "--trials", "5"], "--trials is for --sampler random or tpe"),
    (["--from", "coarse", "--top", "0"], "--top"),
])
def test_bad_refine_requests_exit_2(storage, args, message):
    result = run("refine", *args, "--storage", storage)
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_source_without_completed_trials_or_of_another_task_exits_2(storage, workdir):
    # lr 3 makes the digits MLP's loss explode in its first epoch: no trial completes
    assert run("grid", "--study", "exploded", "--lr", "3", "--weight-decay", "0", "--batch-size", "64",
               "--epochs", "1", "--storage", storage).exit_code == 0
    result = run("refine", "--from", "exploded", "--storage", storage)
    assert result.exit_code == 2 and "no completed trials" in result.stderr, result.output
    data = workdir / "tiny.npz"
    np.savez(data, x_train=np.eye(8, dtype=np.float32), y_train=np.arange(8) % 2)
    assert run("grid", "--study", "other", "--data", str(data), "--lr", "0.1", "--weight-decay", "0",
               "--batch-size", "8", "--epochs", "1", "--storage", storage).exit_code == 0
    result = run("refine", "--from", "coarse", "--from", "other", "--storage", storage)
    assert result.exit_code == 2 and "of task " + str(data) in result.stderr, result.output


def test_refine_takes_the_searches_worker_options(storage):
    """--jobs, --retries and --max-points mean for refine what they mean for grid (one option group)."""
    result = run("refine", "--from", "coarse", "--study", "fine", "--epochs", "1", "--jobs", "2", "--retries", "0",
                 "--storage", storage)
    assert result.exit_code == 0, result.output
    fine = plain_study("fine", storage)
    points = [tuple(sorted(t.params.items())) for t in fine.get_trials()]
    assert len(completed(fine)) == len(points) == len(set(points)) > 2  # every refined point once, by 2 workers
    pids = {int(t.user_attrs["worker"].split(":")[1]) for t in fine.get_trials()}
    assert os.getpid() not in pids  # trained by --jobs worker processes, not in this one
    refused = run("refine", "--from", "coarse", "--study", "small", "--max-points", "2", "--storage", storage)
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert f"the grid holds {len(points)} points" in refused.output and "--max-points" in refused.output
    taken = run("refine", "--from", "coarse", "--study", "fine", "--max-points", str(len(points)), "--show",
                "--storage", storage)
    assert taken.exit_code == 0, taken.output
