"""Your own training code as a function (--objective FILE.py:NAME), called in hpsearch's process with hp."""
from __future__ import annotations

import csv
import io
import json
import time

import pytest

from hpsearch.objective.hp import HP, MetricError, check_metrics, hparams

from helpers import plain_study, run

OBJECTIVES = r'''
import json, math, random, time

import torch

def curve(hp):
    """Peaks at lr 1e-2; prints a line, records what it saw."""
    for epoch in range(1, hp.epochs + 1):
        accuracy = max(0.05, 1 - abs(math.log10(hp.lr) + 2) / 4) * epoch / hp.epochs
        print(f"epoch {epoch} of trial {hp.trial}")
        try:
            hp.report(epoch, val_accuracy=accuracy, val_loss=1.1 - accuracy, train_loss=1.05 - accuracy)
        except Exception:  # a user's broad except must not swallow hpsearch's stop
            pass
        if hp.lr > 0.05:
            time.sleep(0.5)
    open(f"seen-{hp.trial}.json", "w").write(json.dumps({"lr": hp.lr, "params": hp.params, "epochs": hp.epochs,
        "seed": hp.seed, "split": hp.split, "device": hp.device, "draw": torch.rand(1).item(), "py": random.random()}))

def final_only(hp):
    return {"val_accuracy": 0.25, "val_loss": 2.0}

def raises(hp):
    hp.report(1, val_accuracy=0.5)
    raise ValueError("the user's code broke\nsecond line")

def sleeps(hp):
    if hp.lr > 0.05:
        time.sleep(30)
    hp.report(1, val_accuracy=0.5)

def diverges(hp):
    hp.report(1, val_accuracy=0.5, train_loss=1.0)
    hp.report(2, val_accuracy=0.1, train_loss=50.0)
    raise AssertionError("never reached: the report above ends the trial")

def diverges_at_once(hp):
    hp.report(1, val_accuracy=0.1, train_loss=float("nan"))

def silent(hp):
    pass

def bad_metric(hp):
    hp.report(1, accuracy=0.5)

def exits(hp):
    raise SystemExit(4)

not_a_function = 3

def no_argument():
    pass
'''

GRID = ["--lr", "1e-1,1e-2,1e-3", "--weight-decay", "0", "--batch-size", "32", "--epochs", "2"]


@pytest.fixture()
def objectives(workdir):
    (workdir / "objs.py").write_text(OBJECTIVES)
    (workdir / "broken.py").write_text("import no_such_module_xyz\n")
    return "objs.py"


def rows(study: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(run("report", study, "--format", "csv").stdout)))


def test_the_function_gets_hp_its_reports_are_the_curves_and_its_prints_the_log(objectives, workdir):
    result = run("grid", "--study", "f", *GRID, "--objective", "objs.py:curve")
    assert result.exit_code == 0, result.output
    trials = plain_study("f").trials
    best = max(trials, key=lambda t: t.value)
    assert best.params["lr"] == 1e-2 and best.value == pytest.approx(1.0) and best.user_attrs["val_accuracy"] == [0.5, 1.0]
    seen = json.loads((workdir / f"seen-{best.number}.json").read_text())
    assert seen["params"] == {"lr": 0.01, "weight_decay": 0.0, "batch_size": 32, "momentum": 0.9, "optimizer": "sgd"}
    assert (seen["epochs"], seen["seed"], seen["split"], seen["device"]) == (2, best.user_attrs["seed"], "val", "cpu")
    import random

    import torch

    torch.manual_seed(seed := best.user_attrs["seed"])
    random.seed(seed)
    assert seen["draw"] == torch.rand(1).item() and seen["py"] == random.random()  # seeded before the call
    log = (workdir / "studies" / "logs" / "f" / f"trial-{best.number}.log").read_text()
    assert f"epoch 2 of trial {best.number}" in log and "epoch 2 of trial" not in result.output
    assert plain_study("f").user_attrs["hpsearch"]["objective"] == "objs.py:curve"


def test_pruning_ends_the_function_even_through_a_broad_except(objectives, workdir):
    started = time.monotonic()
    result = run("grid", "--study", "p", "--lr", "1e-4,1e-2,1e-1", *GRID[2:], "--prune", "asha",
                 "--objective", "objs.py:curve")
    assert result.exit_code == 0, result.output
    outcomes = {t.params["lr"]: t.user_attrs["outcome"] for t in plain_study("p").trials}
    assert outcomes == {1e-4: "completed", 1e-2: "completed", 0.1: "pruned"}
    pruned = next(t for t in plain_study("p").trials if t.params["lr"] == 0.1)
    assert not (workdir / f"seen-{pruned.number}.json").exists()  # nothing after the pruned report ran
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("name, outcome, words", [
    ("raises", "failed", "ValueError: the user's code broke (log: studies/logs/"),
    ("silent", "failed", "objs.py:silent reported no epoch: call hp.report(epoch, val_accuracy=...) each epoch"),
    ("bad_metric", "failed", "unknown metric 'accuracy'"),
    ("exits", "failed", "objs.py:exits called sys.exit(4)"),
    ("diverges", "diverged", "train_loss 50 > 10x its first at epoch 2"),
    ("diverges_at_once", "diverged", "train_loss not finite at epoch 1"),  # no epoch kept: still diverged
])
def test_a_function_that_misbehaves_is_one_trial_outcome_and_the_search_goes_on(objectives, workdir, name, outcome, words):
    result = run("grid", "--study", name, "--lr", "0.1,0.01", *GRID[2:], "--retries", "0",
                 "--objective", f"objs.py:{name}")
    assert result.exit_code == 0, result.output
    found = rows(name)
    assert len(found) == 2 and {r["outcome"] for r in found} == {outcome}
    assert words in found[0]["reason"], found[0]["reason"]
    if name == "raises":  # the whole traceback is in the log
        log = (workdir / "studies" / "logs" / name / "trial-0.log").read_text()
        assert "Traceback" in log and "second line" in log


def test_a_returned_dict_is_the_final_epoch(objectives):
    result = run("grid", "--study", "d", "--lr", "0.1", *GRID[2:], "--objective", "objs.py:final_only")
    assert result.exit_code == 0, result.output
    (row,) = rows("d")
    assert row["outcome"] == "completed" and float(row["val_accuracy"]) == 0.25 and row["epochs"] == "1"


def test_a_timeout_stops_the_function_and_the_search_goes_on(objectives):
    started = time.monotonic()
    result = run("grid", "--study", "t", *GRID, "--timeout", "1", "--objective", "objs.py:sleeps")
    assert result.exit_code == 0, result.output
    by_lr = {float(r["lr"]): r["outcome"] for r in rows("t")}
    assert by_lr == {0.1: "timed_out", 0.01: "completed", 0.001: "completed"}
    assert time.monotonic() - started < 25


@pytest.mark.parametrize("reference, words", [
    ("missing.py:f", "objective file missing.py not found"),
    ("objs.py:nothing", "objs.py has no function 'nothing' (it defines: curve"),
    ("objs.py:not_a_function", "'not_a_function' is not a function"),
    ("objs.py:no_argument", "no_argument() must take one argument, hp"),
    ("broken.py:f", "objective file broken.py raised ModuleNotFoundError: No module named 'no_such_module_xyz' while being imported"),
    ("objs.py:has-dash", "--objective objs.py:has-dash: give FILE.py:FUNCTION or package.module:FUNCTION"),
])
def test_a_bad_objective_is_one_line_before_anything_is_written(objectives, workdir, reference, words):
    result = run("grid", "--study", "bad", *GRID, "--objective", reference)
    assert result.exit_code == 2 and words in result.stderr, result.output
    assert "Traceback" not in result.output


def test_the_test_split_reaches_the_function_and_is_locked(objectives, workdir):
    assert run("grid", "--study", "s", *GRID, "--objective", "objs.py:curve").exit_code == 0
    tested = run("test", "--study", "s", "--epochs", "3")
    assert tested.exit_code == 0, tested.output
    record = plain_study("s").user_attrs["test_result"]
    assert record["epochs"] == 3 and record["searched"]["epochs"] == 2 and record["test_accuracy"] == pytest.approx(1.0)
    trial = record["trial"]
    assert json.loads((workdir / f"seen-{trial}.json").read_text())["split"] == "test"
    assert run("test", "--study", "s").exit_code == 2


def test_hp_reports_are_checked_and_a_command_gets_hp_from_its_environment(monkeypatch, capsys):
    with pytest.raises(MetricError, match="val_accuracy 1.5 at epoch 1 is not an accuracy in"):
        check_metrics(1, {"val_accuracy": 1.5})
    with pytest.raises(MetricError, match="epoch -1 is not a whole number"):
        check_metrics(-1, {"val_loss": 1.0})
    assert check_metrics(2, {"val_loss": float("nan")}) == {"val_loss": pytest.approx(float("nan"), nan_ok=True)}
    with pytest.raises(RuntimeError, match="not running under hpsearch"):
        hparams()
    hp = HP({"lr": 0.1, "batch_size": 32}, 3, 5, "cpu", "val", 7)
    for key, value in hp.environment().items():
        monkeypatch.setenv(key, value)
    again = hparams()
    assert (again.lr, again.batch_size, again.epochs, again.seed, again.trial) == (0.1, 32, 3, 5, 7)
    again.report(1, val_accuracy=0.5)
    assert json.loads(capsys.readouterr().out) == {"epoch": 1, "val_accuracy": 0.5}
    with pytest.raises(AttributeError, match="hp has no 'learning_rate'"):
        again.learning_rate  # noqa: B018
