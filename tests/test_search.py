"""The search stage against the real Optuna journal storage, on tiny grids and 1 epoch."""
from __future__ import annotations

from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.errors import BadInput, Interrupted
from hpsearch.search.run import run_search
from hpsearch.spec import build_spec

from helpers import TINY, completed_points
from helpers import plain_study as load  # what any Optuna user (or optuna-dashboard) reads from hpsearch's journal


def test_grid_writes_trials_plain_optuna_can_read(workdir):
    outcome = run_search(build_spec("grid", study="g", **{**TINY, "epochs": 2}))
    assert outcome.trained == 8 and outcome.already == 0
    study = load("g")
    assert len(study.trials) == 8 and study.direction == optuna.study.StudyDirection.MAXIMIZE
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        assert set(t.params) == {"lr", "weight_decay", "batch_size", "momentum", "optimizer"}
        assert sorted(t.intermediate_values) == [1, 2]
        assert t.value == t.intermediate_values[2] == t.user_attrs["val_accuracy"][-1]
        assert len(t.user_attrs["val_loss"]) == len(t.user_attrs["train_loss"]) == 2
        assert t.user_attrs["outcome"] == "completed" and t.user_attrs["seconds"] > 0
        assert t.user_attrs["step_ms"] > 0 and isinstance(t.user_attrs["seed"], int)
    assert study.user_attrs["hpsearch"]["epochs"] == 2
    assert {t.params["weight_decay"] for t in study.trials} == {0.0, 1e-4}


def test_a_finished_grid_trains_nothing_and_a_larger_one_only_the_new_points(workdir):
    run_search(build_spec("grid", study="g", **TINY))
    again = run_search(build_spec("grid", study="g", **TINY))
    assert again.trained == 0 and again.already == 8
    assert len(load("g").trials) == 8
    larger = run_search(build_spec("grid", study="g", **{**TINY, "lr": "1e-1,1e-2,1e-3"}))
    assert larger.trained == 4
    assert max(completed_points(load("g").trials).values()) == 1 and len(load("g").trials) == 12


def test_an_interrupted_grid_resumes_and_runs_every_point_once(workdir):
    calls = []

    def ctrl_c_during_the_second_population(progress):
        calls.append(progress)
        if progress.done > 4:  # the first population (4 trials) has been told
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="re-run the same command"):
        run_search(build_spec("grid", study="g", **TINY), ctrl_c_during_the_second_population)
    study = load("g")
    states = Counter(t.state for t in study.trials)
    assert states[TrialState.RUNNING] == 0
    assert states[TrialState.COMPLETE] == 4 and states[TrialState.FAIL] == 4
    assert {t.user_attrs["outcome"] for t in study.trials if t.state == TrialState.FAIL} == {"interrupted"}
    resumed = run_search(build_spec("grid", study="g", **TINY))
    assert resumed.trained == 4 and resumed.already == 4
    points = completed_points(load("g").trials)
    assert len(points) == 8 and max(points.values()) == 1


def test_random_tops_the_study_up_to_its_trial_budget(workdir):
    spec = {"trials": 5, "epochs": 1, "batch_size": "64,128"}
    assert run_search(build_spec("random", study="r", **spec)).trained == 5
    assert run_search(build_spec("random", study="r", **spec)).trained == 0
    more = run_search(build_spec("random", study="r", **{**spec, "trials": 9}))
    assert more.trained == 4
    study = load("r")
    assert len(study.trials) == 9
    configs = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(configs)) == 9  # a resumed random study does not replay its first draws


def test_tpe_samples_inside_the_space_with_zero_weight_decay_as_an_option(workdir):
    run_search(build_spec("tpe", study="t", trials=12, epochs=1, lr="1e-3:1", batch_size="64:128"))
    study = load("t")
    assert len(study.trials) == 12
    for t in study.trials:
        assert 1e-3 <= t.params["lr"] <= 1 and t.params["batch_size"] in (64, 128)
        assert 0 <= t.params["momentum"] <= 0.99
        assert t.params["weight_decay_zero"] or 1e-6 <= t.params["weight_decay"] <= 1e-2


def test_the_same_seed_gives_the_same_results_whatever_the_study(workdir):
    run_search(build_spec("grid", study="a", **TINY))
    run_search(build_spec("grid", study="b", **TINY))
    a = {tuple(sorted(t.params.items())): t.value for t in load("a").trials}
    b = {tuple(sorted(t.params.items())): t.value for t in load("b").trials}
    assert a == b


def test_changing_results_settings_on_an_existing_study_is_refused(workdir):
    run_search(build_spec("grid", study="g", **TINY))
    with pytest.raises(BadInput, match="epochs=1, not 3.*another --study"):
        run_search(build_spec("grid", study="g", **{**TINY, "epochs": 3}))
    with pytest.raises(BadInput, match="command=grid, not random"):
        run_search(build_spec("random", study="g", trials=2, epochs=1))


SMALL = {"lr": "1,1e-1,1e-2,1e-3,1e-4", "weight_decay": "0", "batch_size": "64,128", "momentum": "0.9", "epochs": 4}


@pytest.mark.parametrize("pruner", ["asha", "median", "hyperband"])
def test_pruned_members_leave_the_population_and_the_best_survives(workdir, pruner):
    run_search(build_spec("grid", study="full", **SMALL))
    run_search(build_spec("grid", study="pruned", prune=pruner, **SMALL))
    full, pruned = load("full"), load("pruned")
    stopped = [t for t in pruned.trials if t.user_attrs["outcome"] == "pruned"]
    assert stopped, "nothing was pruned"
    for t in stopped:
        assert t.state == TrialState.PRUNED and t.user_attrs["stopped_epoch"] < 4
        assert sorted(t.intermediate_values) == list(range(1, t.user_attrs["stopped_epoch"] + 1))
        assert len(t.user_attrs["val_accuracy"]) == t.user_attrs["stopped_epoch"] == t.user_attrs["epochs"]
    assert pruned.best_value >= full.best_value - 0.02


def test_random_and_tpe_prune_too(workdir):
    for command in ("random", "tpe"):
        run_search(build_spec(command, study=command, trials=16, epochs=3, batch_size="128", prune="asha"))
        states = Counter(t.state for t in load(command).trials)
        assert states[TrialState.PRUNED] >= 1 and states[TrialState.COMPLETE] >= 1
        assert sum(states.values()) == 16


def test_tpe_does_not_train_a_configuration_twice_on_comma_lists():
    # A configuration's result depends only on its values and --seed: a repeat would teach TPE nothing.
    from hpsearch.search.samplers import TrialSeededTPE

    xs, ys = [0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5]
    study = optuna.create_study(direction="maximize", sampler=TrialSeededTPE(0))
    study.optimize(lambda t: -(t.suggest_categorical("x", xs) - 3) ** 2 - (t.suggest_categorical("y", ys) - 1) ** 2,
                   n_trials=40)
    points = [(t.params["x"], t.params["y"]) for t in study.trials]
    for i in range(10, len(points)):  # after the random start-up trials, TPE's own picks
        assert points[i] not in points[:i], f"trial {i} repeats {points[i]}"
    assert (3, 1) in points
