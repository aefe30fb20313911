"""How sure a ranking is: standard errors on every row, --repeats K, ties, --rank lcb (README: How sure is the ranking)."""
from __future__ import annotations

import json
import math
import statistics

import pandas as pd
import pytest
import torch

from hpsearch.objective.hp import MetricError, check_metrics
from hpsearch.report.results import TIE_Z, binomial_se, rank
from hpsearch.search.records import merge, param_config
from hpsearch.space import make_config, repeat_seeds
from hpsearch.train import MemberResult, example_losses, member_losses, train_population

from helpers import TOL, plain_study, run, tiny

pytestmark = pytest.mark.usefixtures("workdir", "one_thread")


def test_the_first_of_k_seeds_is_the_configurations_own_and_the_others_differ():
    config = make_config({"lr": 0.1, "weight_decay": 0.0, "batch_size": 64, "momentum": 0.9}, 7)
    seeds = [c.seed for c in repeat_seeds(config, 4)]
    assert seeds[0] == config.seed and len(set(seeds)) == 4
    assert [c.seed for c in repeat_seeds(config, 2)] == seeds[:2]  # K seeds hold the K - 1 of a smaller K
    assert all(c.key() == config.key() for c in repeat_seeds(config, 4))  # the same configuration


def test_each_seed_of_a_repeated_configuration_equals_its_solo_run_and_optuna_stores_their_mean(digits):
    result = run("grid", *tiny(lr="0.1", weight_decay="1e-4", batch_size="64", epochs=2), "--repeats", "3",
                 "--study", "r")
    assert result.exit_code == 0, result.output
    [trial] = plain_study("r").trials
    attrs = trial.user_attrs
    assert attrs["repeats"] == 3 and len(attrs["seeds"]) == 3 and attrs["seed"] == attrs["seeds"][0]
    config = param_config(trial.params, 0)
    solo = [train_population(digits, [seeded], 2)[0] for seeded in repeat_seeds(config, 3)]
    assert [c.seed for c in repeat_seeds(config, 3)] == attrs["seeds"]
    for k, alone in enumerate(solo):
        assert attrs["per_seed"]["val_accuracy"][k] == pytest.approx(alone.val_accuracy[-1], abs=TOL)
        assert attrs["seed_curves"]["val_loss"][k] == pytest.approx(alone.val_loss, rel=1e-4)
    finals = attrs["per_seed"]["val_accuracy"]
    assert trial.value == pytest.approx(statistics.fmean(finals))  # what plain Optuna reads: the mean
    assert attrs["val_accuracy"][-1] == pytest.approx(trial.value)  # the curves are the seeds' mean curves
    assert trial.intermediate_values[1] == pytest.approx(statistics.fmean(c[0] for c in attrs["seed_curves"]["val_accuracy"]))
    assert attrs["seed_std"]["val_accuracy"] == pytest.approx(statistics.stdev(finals))
    assert len(set(finals)) > 1 or len(set(attrs["per_seed"]["val_loss"])) > 1  # three seeds, three models
    # the loss's standard error over the validation examples, from the trained model itself
    model = digits.make_model()
    model.load_state_dict(solo[0].params, strict=False)
    with torch.no_grad():
        each = torch.nn.functional.cross_entropy(model.eval()(digits.val[0]), digits.val[1], reduction="none")
    assert solo[0].val_loss_se == pytest.approx((each.std() / math.sqrt(len(each))).item(), rel=1e-3)


def test_a_row_of_one_seed_carries_the_binomial_and_the_per_example_standard_errors(digits):
    result = run("grid", *tiny(), "--study", "g")
    assert result.exit_code == 0, result.output
    frame = json.loads(run("report", "g", "--format", "json").stdout)["trials"]
    n = len(digits.val[0])
    for row in frame:
        attrs = row["attrs"]
        assert attrs["val_examples"] == n
        assert row["val_accuracy_se"] == pytest.approx(binomial_se(row["val_accuracy"], n))
        assert 0 < row["val_loss_se"] < row["val_loss"]  # the per-example one (the loss is a mean of 359 losses)
        assert row["repeats"] == 1
    table = run("report", "g").stdout
    best = frame[0]
    assert f"Best: val acc {best['val_accuracy']:.4f} ± {best['val_accuracy_se']:.4f}" in table


def test_the_loss_standard_error_is_over_the_validation_examples():
    torch.manual_seed(0)
    outputs, targets = torch.randn(3, 50, 4), torch.randint(0, 4, (50,))
    each = example_losses("classification", outputs, targets)
    assert each.shape == (3, 50)
    assert torch.allclose(each.mean(1), member_losses("classification", outputs, targets))
    regression = example_losses("regression", outputs, torch.randn(50, 4))
    assert regression.shape == (3, 50)
    assert binomial_se(1.0, 360) > 0 and binomial_se(0.5, 100) == pytest.approx(0.05)  # a perfect score is not ± 0


def _frame(rows: list[dict]) -> pd.DataFrame:
    base = {"study": "s", "outcome": "completed", "val_loss": 0.5, "lr": 0.1}
    return pd.DataFrame([{**base, "trial": i, **row} for i, row in enumerate(rows)])


def test_ties_follow_the_documented_rule_on_both_sides_of_the_line():
    se = 0.01
    edge = TIE_Z * math.sqrt(2) * se  # the largest gap that still ties two rows of this standard error
    ranked = rank(_frame([{"val_accuracy": 0.90, "val_accuracy_se": se},
                          {"val_accuracy": 0.90 - edge * 0.99, "val_accuracy_se": se},   # just inside
                          {"val_accuracy": 0.90 - edge * 1.01, "val_accuracy_se": se},   # just outside
                          {"val_accuracy": 0.95 - 0.1, "val_accuracy_se": None}]))       # unknown: no call
    assert pd.isna(ranked["tie"].iloc[0])  # the best itself
    assert bool(ranked["tie"].iloc[1]) and not bool(ranked["tie"].iloc[2]) and pd.isna(ranked["tie"].iloc[3])
    loss = rank(_frame([{"val_accuracy": None, "val_loss": 1.0, "val_loss_se": 0.1},     # regression: by the loss
                        {"val_accuracy": None, "val_loss": 1.2, "val_loss_se": 0.1},
                        {"val_accuracy": None, "val_loss": 1.4, "val_loss_se": 0.1}]))
    assert loss["tie"].tolist()[1:] == [True, False]


def test_rank_lcb_prefers_the_steady_configuration_and_mean_the_higher_one():
    frame = _frame([{"val_accuracy": 0.92, "val_accuracy_se": 0.04},   # lucky: higher mean, wide
                    {"val_accuracy": 0.91, "val_accuracy_se": 0.005}])  # steady
    assert rank(frame)["trial"].tolist() == [0, 1]
    by_bound = rank(frame, "lcb")
    assert by_bound["trial"].tolist() == [1, 0]
    assert by_bound["bound"].tolist() == pytest.approx([0.91 - TIE_Z * 0.005, 0.92 - TIE_Z * 0.04])
    assert by_bound["delta"].iloc[1] == pytest.approx(0.01)  # the distance to the first row, which may be positive


def test_report_rank_lcb_on_a_real_study_orders_rows_by_their_bound():
    assert run("grid", *tiny(), "--repeats", "2", "--study", "g").exit_code == 0
    rows = json.loads(run("report", "g", "--format", "json", "--rank", "lcb").stdout)["trials"]
    bounds = [r["bound"] for r in rows if r["outcome"] == "completed"]
    assert bounds == sorted(bounds, reverse=True)
    for r in rows:
        if r["outcome"] == "completed":
            assert r["bound"] == pytest.approx(r["val_accuracy"] - TIE_Z * r["val_accuracy_se"])
    bad = run("report", "g", "--rank", "median")
    assert bad.exit_code == 2 and "mean" in bad.output and "Traceback" not in bad.output


def test_repeats_is_a_setting_of_the_study_and_a_bad_count_is_refused():
    assert run("grid", *tiny(lr="0.1"), "--study", "g").exit_code == 0
    again = run("grid", *tiny(lr="0.1"), "--study", "g", "--repeats", "3")
    assert again.exit_code == 2 and "repeats=1, not 3" in again.output
    for bad in ("0", "101"):
        result = run("grid", *tiny(), "--repeats", bad)
        assert result.exit_code == 2 and "--repeats" in result.output and "Traceback" not in result.output


def test_merge_makes_a_configuration_diverged_when_one_seed_diverged():
    config = make_config({"lr": 1.0, "weight_decay": 0.0, "batch_size": 32, "momentum": 0.9}, 0)
    seeds = repeat_seeds(config, 3)
    fine = [MemberResult(seeds[k], val_accuracy=[0.5, 0.6 + k / 10], val_loss=[1.0, 0.8], train_loss=[1.1, 0.9])
            for k in (0, 2)]
    broken = MemberResult(seeds[1], outcome="diverged", val_accuracy=[0.4], val_loss=[1.2], train_loss=[1.3],
                          stopped_epoch=2, diverged_step=5, reason="training loss not finite at epoch 2, step 5")
    merged = merge([fine[0], broken, fine[1]], 3)
    assert merged.outcome == "diverged" and merged.stopped_epoch == 2 and merged.diverged_step == 5
    assert merged.reason == "seed 2 of 3: training loss not finite at epoch 2, step 5"
    assert merged.val_accuracy == pytest.approx([statistics.fmean([0.5, 0.4, 0.5])])  # the epochs all reached
    whole = merge(fine, 2)
    assert whole.outcome == "completed" and whole.val_accuracy == pytest.approx([0.5, 0.7])


OBJECTIVE = r'''
import json, pathlib

def steady(hp):
    """Accuracy depends on the seed a little; seed-dependent divergence when hp.lr is large."""
    with open("calls.jsonl", "a") as calls:
        calls.write(json.dumps({"trial": hp.trial, "seed": hp.seed}) + "\n")
    for epoch in range(1, hp.epochs + 1):
        loss = float("nan") if hp.lr > 0.5 and len(pathlib.Path("calls.jsonl").read_text().splitlines()) == 1 else 0.5
        hp.report(epoch, val_accuracy=0.8 + (hp.seed % 7) / 100, val_loss=0.5, train_loss=loss, val_examples=200)
'''


def test_your_own_function_runs_once_per_seed_with_each_seed_and_a_log_each(workdir):
    (workdir / "mine.py").write_text(OBJECTIVE)
    result = run("grid", "--objective", "mine.py:steady", "--lr", "0.1", "--weight-decay", "0", "--batch-size", "32",
                 "--epochs", "2", "--repeats", "3", "--study", "own")
    assert result.exit_code == 0, result.output
    calls = [json.loads(line) for line in (workdir / "calls.jsonl").read_text().splitlines()]
    [trial] = plain_study("own").trials
    assert [c["seed"] for c in calls] == trial.user_attrs["seeds"] and len(calls) == 3
    expected = statistics.fmean(0.8 + (seed % 7) / 100 for seed in trial.user_attrs["seeds"])
    assert trial.value == pytest.approx(expected)
    logs = sorted(p.name for p in (workdir / "studies").rglob("trial-0-seed-*.log"))
    assert logs == ["trial-0-seed-1.log", "trial-0-seed-2.log", "trial-0-seed-3.log"]
    row = json.loads(run("report", "own", "--format", "json").stdout)["trials"][0]
    sd = statistics.stdev(trial.user_attrs["per_seed"]["val_accuracy"])
    assert row["val_accuracy_se"] == pytest.approx(math.sqrt(sd**2 / 3 + binomial_se(expected, 200) ** 2))
    tested = run("test", "--study", "own")  # the test runs your code once per seed too
    assert tested.exit_code == 0, tested.output
    assert "mean of 3 seeds" in tested.output
    calls = [json.loads(line) for line in (workdir / "calls.jsonl").read_text().splitlines()]
    assert [c["seed"] for c in calls[3:]] == trial.user_attrs["seeds"]


def test_a_seed_that_diverges_ends_its_configuration_and_its_other_seeds_are_not_run(workdir):
    (workdir / "mine.py").write_text(OBJECTIVE)
    result = run("grid", "--objective", "mine.py:steady", "--lr", "1", "--weight-decay", "0", "--batch-size", "32",
                 "--epochs", "2", "--repeats", "3", "--study", "own")
    assert result.exit_code == 0, result.output
    [trial] = plain_study("own").trials
    assert trial.user_attrs["outcome"] == "diverged" and trial.user_attrs["reason"].startswith("seed 1 of 3:")
    assert len((workdir / "calls.jsonl").read_text().splitlines()) == 1  # seeds 2 and 3 never started


def test_a_reported_example_count_is_a_whole_number():
    assert check_metrics(1, {"val_accuracy": 0.5, "val_examples": 200})["val_examples"] == 200
    for bad in (0, 2.5, True, "200"):
        with pytest.raises(MetricError, match="val_examples"):
            check_metrics(1, {"val_accuracy": 0.5, "val_examples": bad})


def test_refine_carries_the_sources_repeats_names_the_ties_and_test_evaluates_every_seed():
    assert run("grid", *tiny(lr="0.1,0.05", weight_decay="0", batch_size="64", epochs=1), "--repeats", "2",
               "--study", "c").exit_code == 0
    ranked = json.loads(run("report", "c", "--format", "json").stdout)["trials"]
    shown = run("refine", "--from", "c", "--study", "f", "--show", "--top", "1")
    assert shown.exit_code == 0, shown.output
    ties = [r["trial"] for r in ranked if r["tie"]]
    assert ("tie with the best" in shown.output) == bool(ties)
    refined = run("refine", "--from", "c", "--study", "f", "--top", "1", "--epochs", "1")
    assert refined.exit_code == 0, refined.output
    assert {t.user_attrs.get("repeats") for t in plain_study("f").trials} == {2}  # carried from the source
    tested = run("test", "--study", "c")
    assert tested.exit_code == 0, tested.output
    assert f"trial {ranked[0]['trial']} " in tested.output and " ± " in tested.output
    assert ("tie within noise" in tested.output) == bool(ties)
    record = plain_study("c").user_attrs["test_result"]  # the K models the mean chose, each on the test split
    chosen = next(t for t in plain_study("c").trials if t.number == ranked[0]["trial"])
    assert record["seeds"] == chosen.user_attrs["seeds"] and len(record["per_seed"]["test_accuracy"]) == 2
    assert record["test_accuracy"] == pytest.approx(statistics.fmean(record["per_seed"]["test_accuracy"]))
    assert "mean of 2 seeds" in tested.output


def test_the_noise_note_appears_exactly_when_the_best_seeds_spread_more_than_its_lead(workdir):
    assert run("grid", *tiny(weight_decay="0", epochs=1), "--repeats", "3", "--study", "g").exit_code == 0
    document = json.loads(run("report", "g", "--format", "json").stdout)
    best, second = document["trials"][:2]
    spread = best["attrs"]["seed_std"]["val_accuracy"]
    noted = any("seeds spread more" in line for line in document["noise"])
    assert noted == (spread > abs(best["val_accuracy"] - second["val_accuracy"]))
    plotted = run("report", "g", "--plots", "plots")  # with error bars
    assert plotted.exit_code == 0, plotted.output
    assert (workdir / "plots" / "metric_vs_lr.png").stat().st_size > 0


def test_a_pruned_configuration_stops_all_its_seeds_at_once_in_a_sampled_search():
    result = run("random", "--trials", "16", "--prune", "asha", "--repeats", "2", "--epochs", "3", "--lr", "1e-5:1",
                 "--batch-size", "64", "--study", "p")
    assert result.exit_code == 0, result.output
    trials = plain_study("p").trials
    assert {t.user_attrs["repeats"] for t in trials} == {2}
    pruned = [t for t in trials if t.user_attrs["outcome"] == "pruned"]
    assert pruned and len(pruned) < len(trials)  # learning rates over five decades: ASHA stops the slowest
    for t in pruned:  # both seeds stopped in the epoch the mean was pruned at, and never reported beyond it
        assert t.user_attrs["per_seed"]["outcome"] == ["stopped", "stopped"]
        assert max(t.intermediate_values) == t.user_attrs["stopped_epoch"]
        assert all(len(c) == t.user_attrs["stopped_epoch"] for c in t.user_attrs["seed_curves"]["val_accuracy"])


def test_a_study_file_keeps_the_repeats_and_re_runs_the_same_study(workdir):
    assert run("grid", *tiny(lr="0.1"), "--repeats", "2", "--study", "g").exit_code == 0
    written = run("report", "g", "--format", "toml", "--output", "g.toml")
    assert written.exit_code == 0, written.output
    assert "repeats = 2" in (workdir / "g.toml").read_text()
    again = run("grid", "--config", "g.toml")
    assert again.exit_code == 0, again.output
    assert "Nothing to train" in again.output
