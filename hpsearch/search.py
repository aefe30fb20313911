"""The search: the only stage that talks to Optuna.

It opens the storage, enqueues a grid (or asks random / TPE in batches), hands plain
configurations to the population trainer, reports each epoch's validation accuracy to the trial,
and tells the outcome. What it writes opens with plain ``optuna.load_study``.

Trial attributes written here (the names later stages and scripts read):

    outcome        completed | diverged | pruned | failed | interrupted
    reason         why a trial did not complete (empty when it did)
    epochs         epochs trained
    train_loss     per-epoch mean training loss (list)
    val_loss       per-epoch validation loss (list)
    val_accuracy   per-epoch validation accuracy (list); also reported as intermediate values
    seconds        the trial's share of its population's wall time
    step_ms        mean wall time of one training step of its population, in milliseconds
    seed           the configuration's seed (from --seed and the values)
    stopped_epoch  the epoch a diverged or pruned trial stopped in; diverged_step: the step within it
"""
from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import Trial, TrialState

from hpsearch.errors import BadInput, Interrupted, RuntimeFailure
from hpsearch.spec import Config, Dimension, SearchSpace, StudySpec, make_config
from hpsearch.storage import Store, open_storage

SETTINGS_ATTR = "hpsearch"  # study user attribute: the settings a study was created with
TPE_BATCH = 8  # TPE asks this many at once (constant liar); small keeps the search adaptive
RANDOM_BATCH = 64  # random asks cost nothing, so batches are as large as a population


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


def _finished(trial: optuna.trial.FrozenTrial) -> bool:
    """Complete, diverged, or failed for a real reason; interrupted trials are queued again."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get("outcome") != "interrupted"


def _best(trials: Sequence[optuna.trial.FrozenTrial]) -> float | None:
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return max(values) if values else None


def _check_settings(study: optuna.Study, spec: StudySpec) -> None:
    wanted = spec.settings()
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, wanted)
        return
    for key, value in wanted.items():
        if stored.get(key) != value:
            raise BadInput(
                f"study '{spec.study}' was run with {key}={stored.get(key)}, not {value}; "
                f"re-run with the same settings to continue it, or choose another --study name"
            )


def decode_params(params: dict[str, object]) -> dict[str, object]:
    """The four values from a trial's stored parameters (weight decay may be stored as zero)."""
    values = dict(params)
    if values.pop("weight_decay_zero", False):
        values["weight_decay"] = 0.0
    return values


def param_config(params: dict[str, object], seed: int) -> Config:
    """A trial's configuration from its stored parameters."""
    return make_config(decode_params(params), seed)  # type: ignore[arg-type]


# --- how each command's space is stored in Optuna (one distribution per name, see README) ---


def _grid_distributions(points: Sequence[dict[str, float]]) -> dict[str, BaseDistribution]:
    """Linear distributions that hold every grid point, 0 included; ranges may grow on re-runs."""
    dists: dict[str, BaseDistribution] = {}
    for name in ("lr", "weight_decay", "momentum"):
        values = [p[name] for p in points]
        dists[name] = FloatDistribution(min(values), max(values))
    sizes = [int(p["batch_size"]) for p in points]
    dists["batch_size"] = IntDistribution(min(sizes), max(sizes))
    return dists


def _suggest(trial: Trial, dim: Dimension) -> float:
    """Sample one dimension of a random / TPE space on its natural scale."""
    name = dim.name
    if not dim.is_continuous:
        choices = [int(v) if name == "batch_size" else v for v in dim.grid()]
        return float(trial.suggest_categorical(name, choices))
    assert dim.range is not None
    low, high = dim.range.low, dim.range.high
    if name == "momentum":
        return trial.suggest_float(name, low, high)  # Optuna has no 1 - m scale; see README
    if name == "weight_decay" and dim.values:
        if trial.suggest_categorical("weight_decay_zero", [False, True]):
            return 0.0
    return trial.suggest_float(name, low, high, log=True)


def _sample(trial: Trial, space: SearchSpace) -> dict[str, float]:
    return {dim.name: _suggest(trial, dim) for dim in space.dimensions()}


# --- the run ---


class _Runner:
    def __init__(self, spec: StudySpec, study: optuna.Study, store: Store, progress: ProgressCallback | None) -> None:
        self.spec = spec
        self.store = store
        self.study = study
        self.progress = progress
        self.task = None  # loaded on first use: a finished study needs no data
        trials = study.get_trials(deepcopy=False)
        self.already = sum(_finished(t) for t in trials)
        self.best = _best(trials)
        study.sampler = _sampler(spec, len(trials))
        self.trained = 0
        self.failed = 0
        self.total = 0
        self._depth = 0  # nesting of _writes()

    def _tick(self, extra: float = 0.0) -> None:
        if self.progress:
            self.progress(Progress(self.already + self.trained + extra, self.total, self.best))

    def _load_task(self):  # noqa: ANN202 - torch types stay out of this module's signatures
        if self.task is None:
            from hpsearch.tasks import load_task
            from hpsearch.train import resolve_device

            device = resolve_device(self.spec.device)
            self.task = load_task(self.spec.task).to(device)
        return self.task

    def run_batch(self, trials: list[Trial], configs: list[Config]) -> None:
        """Train asked trials, one population per batch size, and tell every one of them."""
        from hpsearch.train import EpochReport, train_population

        task = self._load_task()
        pending = dict(zip([t.number for t in trials], trials))
        by_size: dict[int, list[int]] = {}
        for i, c in enumerate(configs):
            by_size.setdefault(c.batch_size, []).append(i)
        try:
            for members in by_size.values():
                group = [trials[i] for i in members]
                group_configs = [configs[i] for i in members]

                def on_epoch(report: EpochReport, group: list[Trial] = group) -> list[int]:
                    with self._writes():
                        for i, acc in zip(report.members, report.val_accuracy):
                            group[i].report(acc, report.epoch)
                        last = report.epoch == self.spec.epochs
                        prune = [] if last or self.spec.prune == "none" else [
                            i for i in report.members if group[i].should_prune()]
                    self._tick(len(group) * report.epoch / self.spec.epochs)
                    return prune

                try:
                    results = train_population(task, group_configs, self.spec.epochs, on_epoch)
                except Exception as error:  # a failure of this population, not of the search
                    reason = f"{type(error).__name__}: {error}".splitlines()[0]
                    with self._writes():
                        for trial in group:
                            self._fail(trial, "failed", reason)
                            pending.pop(trial.number)
                    self.failed += len(group)
                    self.trained += len(group)
                    continue
                with self._writes():
                    for trial, result in zip(group, results):
                        self._tell(trial, result)
                        pending.pop(trial.number)
                self.trained += len(group)
                self._tick()
        except KeyboardInterrupt:
            self._interrupted(list(pending.values()))

    @contextlib.contextmanager
    def _writes(self, swallow: bool = False) -> Iterator[None]:
        """Write to the storage in one batch, with Ctrl-C held back until the writes are done.

        So no write is cut in half, and Ctrl-C lands only where the trials in flight are known
        (popping a waiting trial and recording its parameters is not one write).
        """
        caught: list[int] = []
        previous = None
        if self._depth == 0 and threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, lambda *_: caught.append(1))
        self._depth += 1
        try:
            with self.store.batch():
                yield
        finally:
            self._depth -= 1
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if caught and not swallow:
            raise KeyboardInterrupt

    def _interrupted(self, trials: list[Trial]) -> None:
        """Ctrl-C: record the running trials as interrupted, queue their configurations again, stop."""
        with self._writes(swallow=True):
            for trial in trials:
                self._fail(trial, "interrupted", "stopped by Ctrl-C; queued again for the next run")
                self.study.enqueue_trial(trial.params)
        raise Interrupted(
            f"interrupted: {len(trials)} running trial(s) recorded as interrupted and queued again; "
            f"re-run the same command to finish study '{self.spec.study}'"
        ) from None

    def _ask(self, count: int, distributions: dict[str, BaseDistribution] | None = None) -> list[Trial]:
        """Pop or sample ``count`` trials in one batch of writes; Ctrl-C leaves none RUNNING."""
        asked: list[Trial] = []
        try:
            with self._writes():
                for _ in range(count):
                    asked.append(self.study.ask(distributions))
        except KeyboardInterrupt:
            self._interrupted(asked)
        return asked

    def _fail(self, trial: Trial, outcome: str, reason: str) -> None:
        trial.set_user_attr("outcome", outcome)
        trial.set_user_attr("reason", reason)
        self.study.tell(trial, state=TrialState.FAIL)

    def _tell(self, trial: Trial, result) -> None:  # noqa: ANN001 - a train.MemberResult
        attrs = {
            "outcome": result.outcome,
            "reason": result.reason,
            "epochs": len(result.val_accuracy),
            "train_loss": result.train_loss,
            "val_loss": result.val_loss,
            "val_accuracy": result.val_accuracy,
            "seconds": round(result.seconds, 6),
            "step_ms": round(result.step_ms, 4),
            "seed": result.config.seed,
        }
        if result.outcome == "stopped":  # the trainer stops what the pruner asks it to
            attrs["outcome"] = "pruned"
            attrs["reason"] = f"pruned by {self.spec.prune} after epoch {result.stopped_epoch}"
        if result.outcome != "completed":
            attrs["stopped_epoch"] = result.stopped_epoch
        if result.outcome == "diverged":
            attrs["diverged_step"] = result.diverged_step
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if result.outcome == "completed":
            value = result.val_accuracy[-1]
            self.study.tell(trial, value)
            self.best = value if self.best is None else max(self.best, value)
        else:
            self.study.tell(trial, state=TrialState.PRUNED)  # diverged or pruned: TPE still learns from the curve

    def grid(self) -> None:
        points = self.spec.space.grid()
        trials = self.study.get_trials(deepcopy=False)
        taken = {param_config(t.params or t.system_attrs.get("fixed_params", {}), 0).key()
                 for t in trials if _finished(t) or t.state in (TrialState.WAITING, TrialState.RUNNING)}
        with self._writes():
            for p in points:
                if make_config(p, 0).key() not in taken:
                    self.study.enqueue_trial(p)
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        self.total = self.already + len(waiting)
        dists = _grid_distributions(points + [t.system_attrs["fixed_params"] for t in waiting])
        if waiting:
            self._load_task()
        self._tick()
        for start in range(0, len(waiting), self.spec.max_population):
            asked = self._ask(len(waiting[start:start + self.spec.max_population]), dists)
            self.run_batch(asked, [param_config(t.params, self.spec.seed) for t in asked])

    def sample(self, batch: int) -> None:
        self.total = max(self.spec.trials or 0, self.already)
        remaining = self.total - self.already
        if remaining:
            self._load_task()
        self._tick()
        while remaining > 0:
            asked = self._ask(min(batch, remaining))
            with self._writes():
                configs = [param_config(_sample(t, self.spec.space), self.spec.seed) for t in asked]
            remaining -= len(asked)
            self.run_batch(asked, configs)


def _sampler(spec: StudySpec, history: int) -> optuna.samplers.BaseSampler:
    # Seeded by --seed and the trials already there: deterministic, yet a resumed study does not
    # replay the configurations it tried before (a fresh RandomSampler(seed) would).
    seed = (spec.seed * 1_000_003 + history) % 2**32
    if spec.command == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    return optuna.samplers.RandomSampler(seed=seed)


def _pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """Optuna's pruners, set for populations: every member of a population reports each epoch at once."""
    if spec.prune == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if spec.prune == "asha":  # min_resource 1: "auto" waits for a completed trial, which a first population lacks
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if spec.prune == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def run_search(spec: StudySpec, progress: ProgressCallback | None = None) -> SearchOutcome:
    """Run (or continue) the study ``spec`` describes; Ctrl-C raises Interrupted after recording."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = open_storage(spec.storage, create=True)
    shown = store.shown
    try:
        study = optuna.create_study(storage=store.storage, study_name=spec.study, direction="maximize",
                                    load_if_exists=True, pruner=_pruner(spec))
    except Exception as error:  # storage errors: one line, password hidden
        raise RuntimeFailure(f"cannot open study '{spec.study}' in {shown}: {type(error).__name__}") from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise BadInput(f"study '{spec.study}' in {shown} is not an hpsearch study; choose another --study name")
    _check_settings(study, spec)
    runner = _Runner(spec, study, store, progress)
    try:
        if spec.command == "grid":
            runner.grid()
        else:
            runner.sample(TPE_BATCH if spec.command == "tpe" else RANDOM_BATCH)
    except KeyboardInterrupt:  # between populations: no trial was in flight
        raise Interrupted(f"interrupted; re-run the same command to finish study '{spec.study}'") from None
    return SearchOutcome(spec.study, shown, runner.trained, runner.already, runner.failed)

