"""The parameter registry: a hyperparameter registered in one call flows from its flag to the stored trial,
the table and CSV, the plots and refine's next grid; the built-in four keep their seeds."""
from __future__ import annotations

import csv
import io

import optuna
import pytest

from helpers import run
from hpsearch import space
from hpsearch.report.plots import importance, importance_chart
from hpsearch.space import LOG, Param, make_config


def _toy_problem(value: float) -> str | None:
    return None if value > 0 else f"a toy value must be > 0, not {value:g}"


TOY = Param("toy", LOG, _toy_problem, "Toy knob", "\ntoy", "t", "Toy knobs", ("log scale", "log scale"),
            "1e-2", "1e-3:1e-1", fixed=1e-2)  # the trainer ignores it: only the seed it feeds changes results


@pytest.fixture()
def toy():
    space.register(TOY)
    yield TOY
    space.unregister("toy")


def test_the_four_parameters_keep_their_order_and_seeds():
    assert space.names() == ("lr", "weight_decay", "batch_size", "momentum", "optimizer")
    config = make_config({"lr": 0.1, "weight_decay": 0.0, "batch_size": 32, "momentum": 0.9}, 0)
    assert config.key() == (0.1, 0.0, 32, 0.9, "sgd") and config.lr == 0.1 and dict(config)["batch_size"] == 32
    assert config.seed == 1224450121  # the seed every stored study of these values was trained with
    # the optimizer at its default feeds no seed; another optimizer is another configuration, with its own seed
    assert make_config({**config, "optimizer": "sgd"}, 0).seed == 1224450121
    assert make_config({**config, "optimizer": "adam"}, 0).seed != config.seed


def test_a_registered_parameter_flows_from_flag_to_table_plot_and_refine(toy, workdir):
    assert "--toy VALUES" in run("grid", "--help").output
    assert "Toy knobs (log scale). [default: 1e-3:1e-1]" in " ".join(run("random", "--help").output.split())
    assert "--toy 0: a toy value must be > 0, not 0" in run("grid", "--toy", "0").output

    coarse = ["--lr", "1e-1", "--weight-decay", "0", "--batch-size", "256", "--momentum", "0.9", "--epochs", "1"]
    result = run("grid", "--study", "toy", *coarse, "--toy", "1e-3,1e-2,1e-1")
    assert result.exit_code == 0, result.output

    study = optuna.load_study(study_name="toy", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend("studies/hpsearch.journal")))
    stored = sorted(t.params["toy"] for t in study.trials)
    assert stored == [1e-3, 1e-2, 1e-1]
    assert isinstance(study.trials[0].distributions["toy"], optuna.distributions.FloatDistribution)
    assert study.user_attrs["hpsearch"]["space"]["toy"] == "0.001,0.01,0.1"

    table = run("report", "toy")
    assert table.exit_code == 0 and "toy" in table.output
    rows = list(csv.DictReader(io.StringIO(run("report", "toy", "--format", "csv").output)))
    assert sorted(float(r["toy"]) for r in rows) == [1e-3, 1e-2, 1e-1]
    assert list(rows[0])[3:9] == ["lr", "weight_decay", "batch_size", "momentum", "optimizer", "toy"]

    shares = importance(study)
    assert set(shares.shares) == {"toy"} and "toy knob mattered most" in shares.sentence
    figure = importance_chart([shares])
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["Toy knob"]

    refined = run("refine", "--from", "toy", "--top", "1", "--show")
    assert refined.exit_code == 0, refined.output
    assert "toy (log scale, refined step x3.16):" in refined.output
    best = float(rows[0]["toy"])  # refine's next grid: the best value and one refined step (x3.16) either side
    points = [line.split() for line in refined.output.splitlines() if line.startswith("  lr=")]
    toys = sorted(float(dict(item.split("=") for item in point)["toy"]) for point in points)
    assert best in toys and len(toys) >= 3 and float(f"{best * 10 ** 0.5:.3g}") in toys
    assert all(best / 10 <= t <= best * 10 for t in toys)


def test_unregistered_again_the_cli_and_tables_are_as_before():
    assert "--toy" not in run("grid", "--help").output
    assert "toy" not in space.names()


def test_the_optimizer_flows_from_flag_to_storage_table_and_refine(workdir):
    result = run("grid", "--study", "o", "--optimizer", "adam,sgd", "--lr", "1e-1,1e-3", "--weight-decay", "0",
                 "--batch-size", "128", "--epochs", "1")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="o", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend("studies/hpsearch.journal")))
    assert sorted((t.params["optimizer"], t.params["lr"]) for t in study.trials) == [
        ("adam", 1e-3), ("adam", 0.1), ("sgd", 1e-3), ("sgd", 0.1)]
    assert isinstance(study.trials[0].distributions["optimizer"], optuna.distributions.CategoricalDistribution)
    assert study.user_attrs["hpsearch"]["space"]["optimizer"] == "sgd,adam"  # the declared order
    rows = list(csv.DictReader(io.StringIO(run("report", "o", "--format", "csv").output)))
    assert sorted(r["optimizer"] for r in rows) == ["adam", "adam", "sgd", "sgd"]
    best = rows[0]

    refined = run("refine", "--from", "o", "--top", "1", "--show")
    assert refined.exit_code == 0, refined.output
    assert "optimizer (searched at one value):" in refined.output or "optimizer (choices" in refined.output
    points = [dict(item.split("=") for item in line.split()) for line in refined.output.splitlines()
              if line.startswith("  lr=")]
    assert points and {p["optimizer"] for p in points} == {best["optimizer"]}  # the top trial's, kept
    both = run("refine", "--from", "o", "--top", "4", "--show")
    points = [dict(item.split("=") for item in line.split()) for line in both.output.splitlines()
              if line.startswith("  lr=")]
    assert {p["optimizer"] for p in points} == {"sgd", "adam"}
    assert "optimizer (choices: those of the top trials are kept):" in both.output


def test_a_study_queued_before_the_optimizer_existed_trains_as_sgd_with_its_old_seeds(workdir):
    """A grid point an older hpsearch queued names four parameters: it trains at the optimizer's default,
    with the seed it always had, and the study's settings compare equal."""
    from hpsearch.search.records import SETTINGS_ATTR
    from hpsearch.spec import build_spec

    flags = {"lr": "1e-1,1e-2", "weight_decay": "0", "batch_size": "128", "momentum": "0.9"}
    spec = build_spec("grid", study="old", epochs=1, **flags)
    settings = {**spec.settings(), "metric": "val_accuracy"}
    assert "optimizer" not in settings["space"] and "schedule" not in settings  # as an older hpsearch wrote them
    (workdir / "studies").mkdir()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend("studies/hpsearch.journal"))
    old = optuna.create_study(study_name="old", storage=storage, direction="maximize")
    old.set_user_attr(SETTINGS_ATTR, settings)
    for lr in (0.1, 0.01):
        old.enqueue_trial({"lr": lr, "weight_decay": 0.0, "batch_size": 128, "momentum": 0.9})

    result = run("grid", "--study", "old", "--epochs", "1", *(item for name, value in flags.items()
                                                               for item in (f"--{name.replace('_', '-')}", value)))
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="old", storage=storage).trials
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert {t.params["optimizer"] for t in trials} == {"sgd"}
    for t in trials:  # the seed each point had before the optimizer existed
        four = {name: t.params[name] for name in ("lr", "weight_decay", "batch_size", "momentum")}
        assert t.user_attrs["seed"] == make_config(four, 0).seed == make_config({**four, "optimizer": "sgd"}, 0).seed
    rows = list(csv.DictReader(io.StringIO(run("report", "old", "--format", "csv").output)))
    assert [r["optimizer"] for r in rows] == ["sgd", "sgd"]
