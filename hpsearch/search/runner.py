"""The search in this process: ask a batch of trials -> an objective trains them -> tell.

It opens the storage, enqueues a grid (or asks random / TPE in batches), hands plain
configurations to an objective (hpsearch.objective), reports each epoch's metric to the trial,
and tells the outcome. What it writes opens with plain ``optuna.load_study``; the stored-trial
format is hpsearch.search.records's, the samplers and pruners hpsearch.search.samplers's. Several processes
(``--jobs``, hpsearch.search.jobs; or other machines) run this same loop on one study.
"""
from __future__ import annotations

import contextlib
import itertools
import statistics
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, Trial, TrialState

from hpsearch.errors import BadInput, HpsearchError, Interrupted, RuntimeFailure
from hpsearch.objective import Failure, Objective, objective_for
from hpsearch import signals
from hpsearch.search import samplers
from hpsearch.search.records import (SETTINGS_ATTR, Outcome, attempt, beat, claimable, fail, finished,
                                     not_hpsearch, param_config, queued_params, requeue, tell, write_settings)
from hpsearch.search.workers import Heartbeat, Worker, lock_folder, reap, running_elsewhere
from hpsearch.space import param, params as space_params, repeat_seeds
from hpsearch.spec import BUILTIN_TASKS, Config, Dimension, SearchSpace, StudySpec, Value, make_config
from hpsearch.storage.store import Store, logs_folder, open_storage, study_names

if TYPE_CHECKING:
    from hpsearch.train import EpochReport, MemberResult

# Grid points enqueued per hold of the storage's lock. A whole large grid in one hold kept Ctrl-C,
# SIGTERM and every other process out for minutes; a chunk of this size takes about a second on
# the journal file, so a signal is answered, and another process let in, within about that.
ENQUEUE_CHUNK = 2000


@dataclass(frozen=True)
class Progress:
    done: float  # trials finished, fractions included for the population in flight
    total: int
    best: float | None


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class SearchOutcome:
    study: str
    storage: str  # as shown to people (password hidden)
    trained: int  # trials trained by this run
    already: int  # trials finished before this run
    failed: int  # trials of this run that failed
    running_elsewhere: int = 0  # trials still RUNNING in other live processes when this run ended
    warnings: tuple[str, ...] = ()  # what went wrong on the way without changing the results (a worker died)


def best_value(trials: Sequence[optuna.trial.FrozenTrial], minimize: bool = False) -> float | None:
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return (min if minimize else max)(values) if values else None


# Settings keys added after studies already existed, and what a study without them meant.
_LEGACY = {"metric": "val_accuracy"}
# Settings written only when not at their default (StudySpec.settings), and that default.
_OMITTED: dict[str, object] = {"schedule": "constant", "warmup": 0, "repeats": 1, "objective": None, "run": None}


def _metric(spec: StudySpec) -> str:
    """The objective: validation accuracy for classification, validation loss for regression."""
    if spec.metric is not None:
        return spec.metric
    if spec.own_code:  # the user's code reports what it reports: accuracy unless --metric val_loss says otherwise
        return "val_accuracy"
    if spec.task in BUILTIN_TASKS:  # all classification: no need to load them
        return "val_accuracy"
    from hpsearch.tasks.builtin import load_task

    return "val_loss" if load_task(spec.task, spec.target, spec.kind).kind == "regression" else "val_accuracy"


def _check_settings(study: optuna.Study, spec: StudySpec) -> None:
    wanted = spec.settings()
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        write_settings(study, wanted)
        return
    # A re-run may top up a budget or grow a grid: recorded as the latest, never refused.
    revisable = ("trials", "space", "timeout") if spec.command == "grid" else ("trials", "timeout")
    latest = {key: wanted[key] for key in revisable if key in wanted and stored.get(key) != wanted[key]}
    for key in [*wanted, *(k for k in _OMITTED if k in stored and k not in wanted)]:
        value = wanted.get(key, _OMITTED.get(key))
        was = stored.get(key, _LEGACY.get(key, _OMITTED.get(key)))
        if key not in revisable and was != value:
            raise BadInput(
                f"study '{spec.study}' was run with {key}={was}, not {value}; "
                f"re-run with the same settings to continue it, or choose another --study name"
            )
    if latest:
        write_settings(study, {**stored, **latest})


# --- how each command's space is stored in Optuna (one distribution per name, see README) ---


def _grid_distributions(points: Iterable[dict[str, float]]) -> dict[str, BaseDistribution]:
    """Linear distributions that hold every grid point, 0 included; ranges may grow on re-runs (one pass).

    A categorical parameter holds all its choices: a re-run that adds one stays compatible.
    """
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    numeric = [q for q in space_params() if not q.categorical]
    for p in points:
        for q in numeric:
            value = float(p[q.name])  # type: ignore[arg-type]
            low[q.name] = min(low.get(q.name, value), value)
            high[q.name] = max(high.get(q.name, value), value)
    # floats first, then integers, then choices: the order every stored grid study has
    dists: dict[str, BaseDistribution] = {q.name: FloatDistribution(low[q.name], high[q.name])
                                          for q in numeric if not q.integer}
    dists.update({q.name: IntDistribution(int(low[q.name]), int(high[q.name])) for q in numeric if q.integer})
    dists.update({q.name: CategoricalDistribution(q.choices) for q in space_params() if q.categorical})
    return dists


def _suggest(trial: Trial, dim: Dimension) -> Value:
    """Sample one dimension of a random / TPE space on its natural scale."""
    name, p = dim.name, param(dim.name)
    if p.categorical:
        return str(trial.suggest_categorical(name, list(dim.grid())))
    if not dim.is_continuous:
        choices = [p.cast(v) for v in dim.grid()]
        return float(trial.suggest_categorical(name, choices))
    assert dim.range is not None
    low, high = dim.range.low, dim.range.high
    if not p.scale.sample_log:
        return trial.suggest_float(name, low, high)  # Optuna has no 1 - m scale; see README
    if p.zero_flag is not None and dim.values:
        if trial.suggest_categorical(p.zero_flag, [False, True]):
            return 0.0
    return trial.suggest_float(name, low, high, log=True)


def _sample(trial: Trial, space: SearchSpace) -> dict[str, Value]:
    return {dim.name: _suggest(trial, dim) for dim in space.dimensions()}


# --- the run ---


@dataclass(frozen=True)
class Strategy:
    """How a search asks: its sampler and pruner, and how many trials it asks at once."""

    sampler: Callable[[StudySpec], optuna.samplers.BaseSampler] = samplers.sampler
    pruner: Callable[[StudySpec], optuna.pruners.BasePruner] = samplers.pruner
    # TPE asks this many at once (constant liar): small keeps the search adaptive, at the price of smaller
    # (slower per epoch) populations; chosen with bench/search_replay.py (see the README's performance section).
    tpe_batch: int = 4
    random_batch: int = 64  # random asks cost nothing, so batches are as large as a population

    def batch(self, spec: StudySpec) -> int:
        return self.tpe_batch if spec.command == "tpe" else self.random_batch


class _Runner:
    def __init__(self, spec: StudySpec, study: optuna.Study, store: Store, objective: Objective,
                 strategy: Strategy, progress: ProgressCallback | None) -> None:
        self.spec = spec
        self.store = store
        self.study = study
        self.objective = objective
        self.progress = progress
        trials = study.get_trials(deepcopy=False)
        self.already = sum(finished(t) for t in trials)
        self.minimize = spec.metric == "val_loss"
        self.best = best_value(trials, self.minimize)
        study.sampler = strategy.sampler(spec)
        self.worker = Worker(lock_folder(store))
        # PostgreSQL is shared across machines, where lock files cannot be seen: a heartbeat shows life
        self.heartbeat = Heartbeat(study) if isinstance(store.storage, optuna.storages.RDBStorage) else None
        self.signals = signals.Held()
        # Trials this process asked and has not yet told or failed: wherever a stop lands (between asking
        # and training too), these are recorded as interrupted and queued again, never left RUNNING.
        self.held: dict[int, Trial] = {}
        self.trained = 0
        self.failed = 0
        self.total = 0

    def close(self) -> None:
        if self.heartbeat:
            self.heartbeat.stop()
        self.worker.close()

    def _tick(self, extra: float = 0.0) -> None:
        if self.progress:
            self.progress(Progress(self.already + self.trained + extra, self.total, self.best))

    def run_batch(self, trials: list[Trial], configs: list[Config]) -> None:
        """Train asked trials through the objective, and tell each trial once all its seeds have ended.

        With --repeats K each configuration trains as K members (member j belongs to trial j // K, seed j % K):
        an epoch's intermediate value is their mean, told once every seed has reached that epoch; a pruned
        trial stops all its seeds, and one diverging stops its siblings (the trial is diverged).
        """
        k = self.spec.repeats
        members = [seeded for config in configs for seeded in repeat_seeds(config, k)]
        reached: dict[tuple[int, int], list[float]] = {}  # (trial index, epoch) -> the seeds' values so far
        results: dict[int, dict[int, MemberResult]] = {}  # trial index -> seed -> result
        ended: set[int] = set()  # trial indices told or failed

        def siblings(i: int) -> range:
            return range(i * k, (i + 1) * k)

        def on_epoch(group: Sequence[int], report: EpochReport) -> list[int]:
            stop: list[int] = []
            with self._writes():
                values = report.val_loss if self.minimize else report.val_accuracy
                last = report.epoch == self.spec.epochs
                for j, value in zip(report.members, values):
                    i = j // k
                    seen = reached.setdefault((i, report.epoch), [])
                    seen.append(value)
                    if len(seen) == 1:  # once a trial an epoch: each beat is a write to the storage
                        beat(trials[i])
                    if len(seen) < k:
                        continue
                    trials[i].report(statistics.fmean(seen), report.epoch)
                    if not last and self.spec.prune != "none" and trials[i].should_prune():
                        stop.extend(siblings(i))
                for j in report.diverged:  # its configuration is diverged: its other seeds need not go on
                    stop.extend(siblings(j // k))
            self._tick((len(results_in_flight()) + len(group) * report.epoch / self.spec.epochs) / k)
            return stop

        def results_in_flight() -> list[MemberResult]:
            return [r for i, seeds in results.items() if i not in ended for r in seeds.values()]

        def concluded(i: int) -> bool:  # every seed ended, or one diverged or was stopped: the trial's outcome is known
            seeds = results.get(i, {})
            return len(seeds) == k or any(r.outcome != "completed" for r in seeds.values())

        try:
            numbers = [t.number for t in trials for _ in range(k)]
            for group, outcome in self.objective.train(members, self.spec.epochs, on_epoch, numbers):
                open_trials = sorted({j // k for j in group} - ended)
                if isinstance(outcome, Failure):
                    ended.update(open_trials)
                    self._failed([trials[i] for i in open_trials], outcome)
                else:
                    for j, result in zip(group, outcome):
                        results.setdefault(j // k, {})[j % k] = result
                    done = [i for i in open_trials if concluded(i)]
                    with self._writes():
                        for i in done:
                            self._tell(trials[i], [results[i][r] for r in sorted(results[i])])
                    ended.update(done)
                    self.trained += len(done)
                self._tick()
                if len(ended) == len(trials):  # the rest of a failed or diverged trial's seeds need not run
                    break
        except KeyboardInterrupt as stop:
            self.interrupted(stop)
        finally:
            if self.heartbeat:
                self.heartbeat.forget([t._trial_id for t in trials])

    def _failed(self, group: list[Trial], failure: Failure) -> None:
        """A group's training raised: queue each configuration again while it has retries left.

        Out of memory alone (a population of one) is not retried: it would run out again.
        """
        with self._writes():
            for trial in group:
                run = attempt(trial)
                if failure.out_of_memory:
                    self._fail(trial, Outcome.OUT_OF_MEMORY, failure.reason)
                elif failure.timed_out:
                    self._fail(trial, Outcome.TIMED_OUT, failure.reason)
                elif run <= self.spec.retries:
                    self._fail(trial, Outcome.FAILED, f"{failure.reason} (attempt {run}; retry queued)", requeued=True)
                    requeue(self.study, trial, run + 1)
                    continue
                else:
                    self._fail(trial, Outcome.FAILED,
                               failure.reason if run == 1 else f"{failure.reason} (after {run} attempts)")
                self.failed += 1
                self.trained += 1

    @contextlib.contextmanager
    def _writes(self, swallow: bool = False) -> Iterator[None]:
        """Write to the storage in one batch, with Ctrl-C held back until the writes are done.

        So no write is cut in half, and Ctrl-C lands only where the trials in flight are known
        (popping a waiting trial and recording its parameters is not one write).
        """
        with self.signals.hold(swallow), self.store.batch():
            yield

    def interrupted(self, stop: KeyboardInterrupt) -> None:
        """Ctrl-C or SIGTERM: record the trials held as interrupted, queue their configurations again, stop."""
        signum = signals.signum(stop)
        by = signals.by(signum)
        trials = list(self.held.values())
        with self._writes(swallow=True):
            for trial in trials:
                self._fail(trial, Outcome.INTERRUPTED, f"stopped by {by}; queued again for the next run", requeued=True)
                requeue(self.study, trial)
        what = f": {len(trials)} running trial(s) recorded as interrupted and queued again" if trials else ""
        raise Interrupted.by(signum, f"interrupted by {by}{what}; re-run the same command to finish study "
                                     f"'{self.spec.study}'") from None

    def _ask(self, how_many: Callable[[list[FrozenTrial]], int],
             distributions: dict[str, BaseDistribution] | None = None) -> list[Trial]:
        """Pop or sample trials under the storage's lock, so that workers never take the same one.

        In one batch: fail and queue again the trials of dead workers, count what the study holds
        (``how_many`` decides from its trials), ask, and sign each trial with this worker's name.
        Ctrl-C leaves none RUNNING.
        """
        asked: list[Trial] = []
        try:
            with self._writes():
                reap(self.study, self.worker)
                for _ in range(how_many(self.study.get_trials(deepcopy=False))):
                    trial = self.study.ask(distributions)
                    self.held[trial.number] = trial
                    self.worker.mark(trial)
                    asked.append(trial)
        except KeyboardInterrupt as stop:
            self.interrupted(stop)
        if self.heartbeat:
            self.heartbeat.watch([t._trial_id for t in asked])
        return asked

    def _fail(self, trial: Trial, outcome: Outcome, reason: str, requeued: bool = False) -> None:
        fail(self.study, trial._trial_id, outcome, reason, requeued)
        self.held.pop(trial.number, None)

    def _tell(self, trial: Trial, results: list[MemberResult]) -> None:
        value = tell(self.study, trial, results, self.spec.prune, self.minimize, self.spec.repeats)
        self.held.pop(trial.number, None)
        if value is not None:
            self.best = value if self.best is None else (min if self.minimize else max)(self.best, value)

    def grid(self) -> None:
        waiting = self._enqueue_grid()
        self.total = self.already + len(waiting)
        dists = _grid_distributions(itertools.chain(self.spec.iter_grid_points(), (queued_params(t) for t in waiting)))
        if waiting:
            self.objective.prepare()
        self._tick()

        def waiting_now(trials: list[FrozenTrial]) -> int:  # ask() would sample a fresh point when none waits
            return min(self.spec.trials_at_once, sum(t.state == TrialState.WAITING for t in trials))

        while asked := self._ask(waiting_now, dists):
            self.run_batch(asked, [param_config(t.params, self.spec.seed) for t in asked])

    def _enqueue_grid(self) -> list[FrozenTrial]:
        """Queue every grid point the study does not hold yet, ENQUEUE_CHUNK points per hold of the lock.

        Under the lock, workers starting together enqueue each point once (each chunk is compared with
        every trial there is, those other workers queued included). Between chunks Ctrl-C or SIGTERM
        stops the run, with the points queued so far kept. Returns the waiting trials.
        """
        points = self.spec.iter_grid_points()
        taken: set[tuple[float, float, int, float]] = set()
        seen = queued = 0  # trials compared so far: a trial once counted stays counted (a retry is a new trial)
        try:
            while True:
                chunk = list(itertools.islice(points, ENQUEUE_CHUNK))
                with self._writes():
                    if seen == 0:
                        reap(self.study, self.worker)
                    trials = self.study.get_trials(deepcopy=False)
                    taken.update(param_config(queued_params(t), 0).key() for t in trials[seen:]
                                 if finished(t) or t.state in (TrialState.WAITING, TrialState.RUNNING))
                    seen = len(trials)
                    for p in chunk:
                        key = make_config(p, 0).key()
                        if key not in taken:
                            self.study.enqueue_trial(p)
                            taken.add(key)
                            queued += 1
                    if not chunk:
                        return self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        except KeyboardInterrupt as stop:
            signum = signals.signum(stop)
            raise Interrupted.by(signum, f"interrupted by {signals.by(signum)} while queueing the grid: {queued:,} of its "
                                         f"{self.spec.grid_size():,} points queued and kept, nothing trained; re-run "
                                         f"the same command to finish study '{self.spec.study}'") from None

    def sample(self, batch: int) -> None:
        """Ask until the study holds its budget: finished, running (on any worker) and queued trials all count."""
        self.total = max(self.spec.trials or 0, self.already)
        if self.total > self.already:
            self.objective.prepare()
        self._tick()

        def room(trials: list[FrozenTrial]) -> int:
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            counted = sum(finished(t) or t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
            return min(batch, waiting + max(0, self.total - counted))

        batch = min(batch, self.spec.trials_at_once)
        while asked := self._ask(room):
            with self._writes():
                configs = [param_config(_sample(t, self.spec.space), self.spec.seed) for t in asked]
            self.run_batch(asked, configs)


def prepare_study(spec: StudySpec, strategy: Strategy = Strategy()) -> tuple[StudySpec, Store, optuna.Study]:
    """Open the storage and the study (created on first use), checking that its settings match.

    Returns the spec with its metric known, the storage and the study.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = replace(spec, metric=_metric(spec))  # a bad plug-in or data file stops here, before any write
    direction = optuna.study.StudyDirection.MINIMIZE if spec.metric == "val_loss" else optuna.study.StudyDirection.MAXIMIZE
    store = open_storage(spec.storage, create=True, jobs=spec.jobs)
    shown = store.shown
    # Under the storage's lock (journal files, PostgreSQL): another hpsearch process never sees the study
    # created but not yet claimed with its settings.
    with store.batch():
        try:
            exists = spec.study in study_names(store.storage)
            if exists and not claimable(optuna.load_study(study_name=spec.study, storage=store.storage)):
                raise not_hpsearch(spec.study, "choose another --study")  # before anything is written into it
            study = optuna.create_study(storage=store.storage, study_name=spec.study, direction=direction,
                                        load_if_exists=True, pruner=strategy.pruner(spec))
        except HpsearchError:
            raise
        except Exception as error:  # storage errors: one line, password hidden
            raise RuntimeFailure(f"cannot open study '{spec.study}' in {shown}: {type(error).__name__}") from None
        if study.direction != direction:
            raise BadInput(f"study '{spec.study}' in {shown} is not an hpsearch study of a {spec.metric} task "
                           f"(it {'maximises' if study.direction.name == 'MAXIMIZE' else 'minimises'}); "
                           "choose another --study name")
        _check_settings(study, spec)
    return spec, store, study


def run_here(spec: StudySpec, progress: ProgressCallback | None = None, objective: Objective | None = None,
             strategy: Strategy = Strategy()) -> SearchOutcome:
    """Run (or continue) the study ``spec`` describes in this process (see hpsearch.search.run.run_search)."""
    spec, store, study = prepare_study(spec, strategy)
    with signals.terminate_interrupts():
        objective = objective or objective_for(spec, logs_folder(store, spec.study))
        runner = _Runner(spec, study, store, objective, strategy, progress)
        try:
            if spec.command == "grid":
                runner.grid()
            else:
                runner.sample(strategy.batch(spec))
            elsewhere = running_elsewhere(study, runner.worker)
        except KeyboardInterrupt as stop:
            if runner.held:  # asked but not yet training (the stop landed between the two)
                runner.interrupted(stop)
            raise Interrupted.by(signals.signum(stop),
                                 f"interrupted; re-run the same command to finish study '{spec.study}'") from None
        finally:
            runner.close()
    return SearchOutcome(spec.study, store.shown, runner.trained, runner.already, runner.failed, elsewhere)
