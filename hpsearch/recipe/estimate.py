"""Plans and time estimates before a search: what would be trained, and how long it would take.

The recipe says: get precise per-iteration timings and estimate the total time before launching
a long search. The estimate comes from the real population trainer: for each (batch size,
population size) the search would train, a few steps on a slice of the data (the same share of
the training and validation splits, so an epoch's evaluation is counted too), then
steps per epoch x epochs per population, plus the measured set-up of each population and the
storage's cost per trial. ``hpsearch --dry-run`` prints it; the progress bar starts from it;
``hpsearch check`` reports the step times.
"""
from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from hpsearch.errors import BadInput
from hpsearch.space import names as param_names
from hpsearch.spec import StudySpec, make_config

if TYPE_CHECKING:
    from hpsearch.tasks.builtin import Task

PROBE_STEPS = 5  # steps per measured epoch: enough to average, cheap even at 500 ms a step
PROBE_EPOCHS = 3  # the median counts: the first pays one-off allocations, any of them a busy machine's spike
WHOLE_EPOCH_S = 2.0  # an epoch estimated below this is measured whole (a slice would scale its fixed costs)
# Storage writes per trial (ask, per-epoch reports, attributes, tell): about 4 ms a trial with the
# journal file, measured here (cProfile of the default grid: run_search less training and start-up).
TRIAL_OVERHEAD_S = 0.005
SLOW_STEP_MS = 500.0  # the recipe: an iteration over ~500 ms makes a search hard to afford


@dataclass(frozen=True)
class Population:
    """Configurations the search would train together: one batch size, ``members`` of them."""

    batch_size: int
    members: int


@dataclass(frozen=True)
class Plan:
    """What a search would do: the grid points still to train (grid) or the sampler's budget."""

    spec: StudySpec
    points: list[dict[str, float]]  # grid points still to train; empty for random / TPE
    to_train: int  # trials this run would train
    already: int  # trials the study holds already
    populations: list[Population]


@dataclass(frozen=True)
class Estimate:
    seconds: float  # the whole run, start-up included
    startup: float  # of which: importing torch and loading the task (a run in this process pays them no more)
    step_ms: dict[tuple[int, int], float]  # (batch size, members) -> wall time of one population step
    epoch_seconds: dict[tuple[int, int], float]  # the same, for one epoch with its evaluation


def plan_search(spec: StudySpec) -> Plan:
    """The populations a run of ``spec`` would train.

    Reads the study when it exists (a resumed search trains only what is missing) and writes nothing.
    """
    finished = _finished_points(spec)
    k = spec.repeats  # each configuration trains as K members (--repeats)
    per_ask = spec.trials_at_once
    if spec.command == "grid":
        done = set(finished)
        points = [p for p in spec.iter_grid_points() if make_config(p, 0).key() not in done]
        populations = []
        for start in range(0, len(points), per_ask):  # as search._Runner.grid splits them
            sizes = Counter(int(p["batch_size"]) for p in points[start:start + per_ask])
            populations += [Population(size, count * k) for size, count in sizes.items()]
        return Plan(spec, points, len(points), len(finished), populations)
    from hpsearch.search.run import Strategy

    ask_batch = min(Strategy().batch(spec), per_ask)
    remaining = max(0, (spec.trials or 0) - len(finished))
    sizes = [int(v) for v in spec.space.batch_size.grid()]
    populations = []
    for start in range(0, remaining, ask_batch):  # each asked batch splits by batch size; assume an even spread
        asked = min(ask_batch, remaining - start)
        share = asked / len(sizes)
        populations += [Population(size, max(1, round(share)) * k) for size in sizes[:asked]]
    return Plan(spec, [], remaining, len(finished), populations)


def _finished_points(spec: StudySpec) -> list[tuple[float, ...]]:
    """The configurations of the study's finished trials; none when the storage or the study does not exist yet."""
    from hpsearch.storage.store import storage_location

    location = storage_location(spec.storage)
    if location.startswith("sqlite:///") and not Path(location.removeprefix("sqlite:///")).exists():
        return []  # opening it would create it
    from hpsearch.report.results import load_results

    try:
        frame = load_results([spec.study], spec.storage)
    except BadInput:  # no journal, or no such study: nothing done yet
        return []
    done = frame[~frame["outcome"].isin(["running", "interrupted"])]
    return [make_config(row, 0).key() for row in done[list(param_names())].to_dict("records")]


def probe_task(task: "Task", batch_size: int, steps: int = PROBE_STEPS) -> tuple["Task", float]:
    """A slice of ``task`` that trains ``steps`` steps an epoch, and the share of the data it holds."""
    x, y = task.train
    n = min(len(x), steps * batch_size)
    share = n / len(x)
    xv, yv = task.val
    nv = max(1, round(len(xv) * share))
    return replace(task, train=(x[:n], y[:n]), val=(xv[:nv], yv[:nv])), share


def measure(task: "Task", batch_size: int, members: int, optimizer: str = "sgd") -> tuple[float, float]:
    """(set-up seconds, seconds of one full epoch) of a population of ``members`` training with ``optimizer``.

    A few epochs on a slice of the data, the median counting; when a whole epoch is cheap, on the
    whole data instead, so that each epoch's fixed costs are not scaled up with the slice's.
    """
    setup, epoch = _measure(task, batch_size, members, PROBE_STEPS, optimizer)
    if epoch < WHOLE_EPOCH_S:
        setup, epoch = _measure(task, batch_size, members, math.ceil(len(task.train[0]) / batch_size), optimizer)
    return setup, epoch


def _measure(task: "Task", batch_size: int, members: int, steps: int, optimizer: str) -> tuple[float, float]:
    from hpsearch.train import EpochReport, train_population

    probe, share = probe_task(task, batch_size, steps)
    configs = [make_config({"lr": 1e-4, "weight_decay": 0.0, "batch_size": batch_size, "momentum": 0.9,
                            "optimizer": optimizer}, seed)
               for seed in range(members)]  # a small lr: no member diverges and leaves early
    epochs: list[float] = []

    def on_epoch(report: EpochReport) -> list[int]:
        epochs.append(report.seconds)
        return []

    started = time.perf_counter()
    train_population(probe, configs, PROBE_EPOCHS, on_epoch)
    setup = max(0.0, time.perf_counter() - started - sum(epochs))
    return setup, statistics.median(epochs) / share


def step_ms(task: "Task", batch_size: int, epoch_seconds: float) -> float:
    """Milliseconds of one step, its share of the epoch's evaluation included."""
    return 1000 * epoch_seconds / math.ceil(len(task.train[0]) / batch_size)


def estimate_plan(plan: Plan, task: "Task") -> Estimate:
    """The run time of ``plan`` on ``task`` (already on its device), from measured epochs."""
    measured: dict[tuple[int, int], tuple[float, float]] = {}
    # the costliest optimizer searched (Adam's step does more than SGD's): an estimate errs long, not short
    optimizers = plan.spec.space["optimizer"].grid() if "optimizer" in plan.spec.space else ("sgd",)
    optimizer = next((o for o in ("adamw", "adam", "rmsprop", "nesterov") if o in optimizers), "sgd")
    if plan.populations:
        measure(task, plan.populations[0].batch_size, 1, optimizer)  # warm-up: the first call pays one-off costs
    for p in plan.populations:
        if (p.batch_size, p.members) not in measured:
            measured[(p.batch_size, p.members)] = measure(task, p.batch_size, p.members, optimizer)
    seconds = plan.to_train * TRIAL_OVERHEAD_S
    for p in plan.populations:
        setup, epoch = measured[(p.batch_size, p.members)]
        seconds += setup + plan.spec.epochs * epoch
    return Estimate(seconds, 0.0,
                    {key: step_ms(task, key[0], epoch) for key, (_, epoch) in measured.items()},
                    {key: epoch for key, (_, epoch) in measured.items()})


def estimate_search(spec: StudySpec) -> tuple[Plan, Estimate]:
    """Plan ``spec``'s run and estimate its time: loads the task, trains a few steps, writes nothing.

    The user's own code cannot be timed without running a trial of it, which a dry run does not do:
    its estimate is NaN (unknown).
    """
    plan = plan_search(spec)
    if spec.own_code:
        return plan, Estimate(math.nan, 0.0, {}, {})
    started = time.perf_counter()
    from hpsearch.tasks.builtin import load_task  # importing torch counts: a search in a new process pays it too
    from hpsearch.train import resolve_device

    task = load_task(spec.task, spec.target, spec.kind).to(resolve_device(spec.device))
    startup = time.perf_counter() - started if plan.to_train else 0.0
    estimate = estimate_plan(plan, task)
    return plan, replace(estimate, seconds=estimate.seconds + startup, startup=startup)


def training_seconds(spec: StudySpec) -> float:
    """The estimated seconds of training left in ``spec``'s run in this process (a progress bar's first ETA;
    NaN for the user's own code: the bar's ETA then comes from the trials as they end)."""
    measured = estimate_search(spec)[1]
    return measured.seconds - measured.startup
