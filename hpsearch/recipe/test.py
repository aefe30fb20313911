"""The end of the recipe: the chosen configuration, trained again, evaluated once on the test split.

The search ranks on the validation split only. The test split is touched once, at the very end,
for the configuration chosen: a test figure that could be looked at again and again would end up
steering the choice, and would then no longer estimate how the model does on unseen data. So
the result is recorded on the study (user attribute ``test_result``) and a second evaluation is
refused unless asked for with ``force``; the record counts the evaluations.

The recipe's last step may train the choice longer and with decay before that single evaluation
(``epochs``, ``schedule``, ``warmup``): the search ranked configurations at a constant rate, the final
model is trained the way it will be used. The record says which epochs and schedule were used,
beside the trial's own.
"""
from __future__ import annotations

import datetime
import statistics
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from hpsearch.errors import BadInput, RuntimeFailure, listed
from hpsearch.objective import Failure, objective_for
from hpsearch.report.render import training_text
from hpsearch.report.results import TIES_NAMED, binomial_se, combined_se, rank, ties_with_best, trials_frame
from hpsearch.search.records import (OUTCOME, SETTINGS_ATTR, TEST_ATTR, VAL_ACCURACY, VAL_LOSS, decode_params,
                                     made_by_hpsearch, not_hpsearch, param_config, write_test_result)
from hpsearch.space import repeat_seeds
from hpsearch.spec import Config, bounds_text, build_spec, check_int, check_schedule, in_bounds, point_problem
from hpsearch.storage.store import Store, load_study, logs_folder, open_storage

if TYPE_CHECKING:
    from hpsearch.train import MemberResult

class AlreadyTested(BadInput):
    """The study's test result is recorded already; ``recorded`` holds it."""

    def __init__(self, message: str, recorded: dict[str, Any]) -> None:
        super().__init__(message)
        self.recorded = recorded


def _chosen(study: optuna.Study, number: int | None) -> tuple[optuna.trial.FrozenTrial, list[int]]:
    """The trial to test: the study's best by the mean (``hpsearch.report.results.rank``), or trial ``number``,
    completed; and the trials that tie with the best within noise (none when ``number`` was given)."""
    trials = study.get_trials(deepcopy=False)
    ties: list[int] = []
    if number is None:
        ranked = rank(trials_frame(study))
        done = ranked[ranked["outcome"] == "completed"]
        if done.empty:
            raise BadInput(f"study '{study.study_name}' has no completed trial to test")
        number = int(done.iloc[0]["trial"])
        ties = [int(t) for t in ties_with_best(ranked)["trial"]]
    found = [t for t in trials if t.number == number]
    if not found:
        raise BadInput(f"study '{study.study_name}' has no trial {number} (trials 0 to {len(trials) - 1})")
    if found[0].state != TrialState.COMPLETE:
        outcome = found[0].user_attrs.get(OUTCOME, found[0].state.name.lower())
        raise BadInput(f"trial {number} of study '{study.study_name}' did not complete ({outcome}); test a completed one")
    return found[0], ties


def final_test(name: str, trial: int | None = None, force: bool = False, storage: str | None = None,
               device: str = "auto", epochs: int | None = None, schedule: str | None = None,
               warmup: int | None = None) -> dict[str, Any]:
    """Train the chosen trial's configuration (its seed; the study's epochs and schedule unless given),
    evaluate it on the test split, record the result on the study and return it.

    Raises AlreadyTested when a result is recorded and ``force`` is not given.
    """
    if epochs is not None:
        check_int("epochs", epochs)
    store = open_storage(storage, create=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(store.storage, store.shown, name)
    if not made_by_hpsearch(study):
        raise not_hpsearch(name, "test takes a study that hpsearch searched")
    settings = study.user_attrs[SETTINGS_ATTR]
    recorded = study.user_attrs.get(TEST_ATTR)
    if recorded and not force:
        raise AlreadyTested(f"study '{name}' was tested already ({recorded.get('when')}): the test set is used once, "
                            "so that it cannot steer the search; --force evaluates again (and says so in the record)",
                            recorded)
    chosen, ties = _chosen(study, trial)
    # Values an older hpsearch stored (batch size 1e20, seed -5) train nothing meaningful: refused, not tried.
    problem = point_problem(decode_params(chosen.params))
    for key in ("seed", "epochs"):
        if problem is None and not in_bounds(key, settings.get(key)):
            problem = f"{key} {settings.get(key)!r} is not {bounds_text(key)}"
    if problem is not None:
        raise BadInput(f"trial {chosen.number} of study '{name}' cannot be trained again ({problem}); "
                       "test another trial with --trial N")
    config = param_config(chosen.params, int(settings["seed"]))
    searched = (int(settings["epochs"]), str(settings.get("schedule", "constant")), int(settings.get("warmup", 0)))
    given = (epochs, schedule, warmup)
    epochs, schedule, warmup = (searched[k] if given[k] is None else given[k] for k in range(3))  # type: ignore[assignment]
    assert epochs is not None and schedule is not None and warmup is not None
    # A study of K seeds (--repeats) chose by the mean of K models: the test evaluates those K models too.
    seeds = repeat_seeds(config, int(settings.get("repeats", 1)))
    if settings.get("objective") or settings.get("run"):
        results = _own_code_test(name, settings, store, chosen.number, seeds, epochs, device, schedule, warmup)
    else:
        check_schedule(schedule, warmup, epochs)

        from hpsearch.optimizers import Schedule
        from hpsearch.tasks.builtin import load_task
        from hpsearch.train import resolve_device, train_and_test

        task = load_task(str(settings["task"]), settings.get("target"), settings.get("kind")).to(resolve_device(device))
        results = train_and_test(task, seeds, epochs, schedule=Schedule(schedule, warmup))
    if isinstance(results, Failure):
        raise RuntimeFailure(f"trial {chosen.number}'s configuration failed on the test split: {results.reason}")
    for result in results:
        if result.outcome != "completed":
            raise RuntimeFailure(f"trial {chosen.number}'s configuration did not train to the end this time: "
                                 f"{result.reason}")
    record = {
        "study": name,
        "trial": chosen.number,
        "config": config.params(),
        "seed": config.seed,
        "epochs": epochs,
        "schedule": schedule,
        "warmup": warmup,
        # the trial's own training, when the test trained otherwise (the recipe: longer, with decay)
        "searched": None if (epochs, schedule, warmup) == searched else
        {"epochs": searched[0], "schedule": searched[1], "warmup": searched[2]},
        "val_accuracy": _last(chosen.user_attrs.get(VAL_ACCURACY)),
        "val_loss": _last(chosen.user_attrs.get(VAL_LOSS)),
        **test_figures(results),
        "ties": ties,  # the trials that tied with the chosen one on validation, within noise
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with store.batch():  # counted under the storage's lock: a concurrent evaluation is counted too
        latest = study.user_attrs.get(TEST_ATTR)
        record["evaluations"] = int(latest.get("evaluations", 1)) + 1 if latest else 1
        write_test_result(study, record)
    return record


def test_figures(results: list[MemberResult]) -> dict[str, Any]:
    """The test split's figures of the K models of a configuration (K = 1 without --repeats): the means, the
    accuracy's standard error (its seeds' combined with the test split's binomial one, as on validation), and
    each seed's figures when K > 1."""
    losses = [r.val_loss[-1] for r in results]
    accuracies = [r.val_accuracy[-1] for r in results if r.val_accuracy]
    n = results[0].val_examples
    figures: dict[str, Any] = {
        "test_loss": statistics.fmean(losses),
        "test_accuracy": statistics.fmean(accuracies) if len(accuracies) == len(results) else None,
        "test_examples": n,
    }
    if figures["test_accuracy"] is not None and n:
        sd = statistics.stdev(accuracies) if len(accuracies) > 1 else None
        figures["test_accuracy_se"] = combined_se(sd, len(accuracies), binomial_se(figures["test_accuracy"], n))
    if len(results) > 1:
        figures.update(seeds=[r.config.seed for r in results],
                       per_seed={"test_loss": losses, "test_accuracy": accuracies or None})
    return figures


def _own_code_test(name: str, settings: dict[str, Any], store: Store, trial: int, configs: list[Config], epochs: int,
                   device: str, schedule: str, warmup: int) -> list[MemberResult] | Failure:
    """The user's function or command run once per seed of the configuration (``configs``) with split "test"
    (its logs in logs/STUDY/test/)."""
    spec = build_spec("grid", objective=settings.get("objective"), run=settings.get("run") or (),
                      metric=settings.get("metric"), timeout=settings.get("timeout"), epochs=epochs, device=device,
                      schedule=schedule, warmup=warmup, study=name)
    objective = objective_for(spec, logs_folder(store, name) / "test", split="test")
    objective.prepare()
    out: list[MemberResult] = []
    for _, results in objective.train(configs, epochs, lambda members, report: [], [trial] * len(configs)):
        if isinstance(results, Failure):
            return results
        out += results
    return out


def _last(curve: list[float] | None) -> float | None:
    return curve[-1] if curve else None


def describe(record: dict[str, Any]) -> str:
    """A recorded test result as one line for a person."""
    config = ", ".join(f"{key}={value if isinstance(value, str) else format(value, 'g')}"
                       for key, value in record["config"].items())
    metrics = [f"test {key} {record[f'test_{key}']:.4f}" for key in ("accuracy", "loss") if record.get(f"test_{key}") is not None]
    if isinstance(record.get("test_accuracy_se"), float):
        seeds = f"mean of {len(record['seeds'])} seeds, " if record.get("seeds") else ""
        metrics[0] += f" ± {record['test_accuracy_se']:.4f} ({seeds}{record.get('test_examples')} examples)"
    if record.get("val_accuracy") is not None:
        metrics.append(f"validation accuracy {record['val_accuracy']:.4f}")
    times = record.get("evaluations", 1)
    trained = training_text(record)
    if record.get("searched"):
        trained += f"; the trial: {training_text(record['searched'])}"
    ties = record.get("ties") or []
    tied = (f"; chosen by the mean from {len(ties) + 1} configurations that tie within noise (also trials "
            f"{listed(ties, TIES_NAMED)})") if ties else ""
    return (f"Test of study {record['study']}, trial {record['trial']} ({config}; {trained}): "
            f"{', '.join(metrics)}; evaluated {'once' if times == 1 else f'{times} times'}, last {record['when']}{tied}")

