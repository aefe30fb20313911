"""How the search chooses configurations and stops them: Optuna samplers seeded by trial, and pruners.

A configuration's result depends only on its values and --seed, so the samplers here seed every
random draw by --seed and the trial's number: trial k draws the same values whichever worker asks
it and in whatever order (results do not depend on --jobs), workers never draw the same values,
and a resumed study does not replay the trials it has (a fresh RandomSampler(seed) in each process
would).
"""
from __future__ import annotations

import hashlib
import itertools
import math
import random
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from hpsearch.space import names as param_names, param
from hpsearch.spec import StudySpec


def trial_seed(seed: int, trial: FrozenTrial, name: str) -> int:
    return int.from_bytes(hashlib.sha256(repr((seed, trial.number, name)).encode()).digest()[:4], "little")


class _SeededByTrial:
    """Independent draws seeded by --seed, the trial number and the parameter's name."""

    seed: int
    _rng: Any  # the Optuna sampler's LazyRandomState

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        fixed = param(param_name).fixed if param_name in param_names() else None
        if fixed is not None and "fixed_params" in trial.system_attrs:
            # a grid point queued by an older hpsearch, before this parameter existed: it trains at its fixed value
            return fixed
        self._rng.rng.seed(trial_seed(self.seed, trial, param_name))
        return super().sample_independent(study, trial, param_name, param_distribution)  # type: ignore[misc]


class TrialSeededRandom(_SeededByTrial, optuna.samplers.RandomSampler):
    """Random sampling seeded by --seed and the trial number."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.seed = seed


class TrialSeededTPE(_SeededByTrial, optuna.samplers.TPESampler):
    """TPE whose random draws are seeded by the trial number, like TrialSeededRandom (its picks still
    depend on the trials finished before, so they vary with --jobs), and that does not repeat itself.

    Training a configuration twice teaches nothing (its result depends only on its values and --seed),
    yet on comma lists TPE proposes the same few points again and again; here such a repeat becomes a
    random configuration not yet tried. The README's performance section has the measurements.
    """

    def __init__(self, seed: int, **options: object) -> None:
        super().__init__(seed=seed, constant_liar=True, **options)  # type: ignore[arg-type]
        self.seed = seed
        self._random_sampler = TrialSeededRandom(seed)
        self._chosen: dict[int, dict[str, object]] = {}  # trial number -> what this process gave it

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, object]:
        self._rng.rng.seed(trial_seed(self.seed, trial, ""))
        params = super().sample_relative(study, trial, search_space)
        names = sorted(search_space)
        if params:
            tried = self._tried(study, trial, names)
            if tuple(params[n] for n in names) in tried:
                params = self._untried(trial, search_space, names, tried) or params
        self._chosen[trial.number] = params
        return params

    def _tried(self, study: optuna.Study, trial: FrozenTrial, names: list[str]) -> set[tuple[object, ...]]:
        """The configurations other trials hold: finished, running or queued (failed ones may be retried)."""
        tried = set()
        for t in study.get_trials(deepcopy=False):
            if t.number == trial.number or t.state == TrialState.FAIL:
                continue
            params = {**self._chosen.get(t.number, {}), **t.params}
            if all(n in params for n in names):
                tried.add(tuple(params[n] for n in names))
        return tried

    def _untried(self, trial: FrozenTrial, search_space: dict[str, BaseDistribution], names: list[str],
                 tried: set[tuple[object, ...]]) -> dict[str, object] | None:
        """A random configuration of a discrete space that no trial holds (None when there is none)."""
        dists = [search_space[n] for n in names]
        if not all(isinstance(d, CategoricalDistribution) for d in dists):
            return None  # continuous values: repeats are all but impossible, and no list of the rest exists
        choices = [d.choices for d in dists]  # type: ignore[attr-defined]
        if math.prod(len(c) for c in choices) > 100_000:
            return None
        rest = [p for p in itertools.product(*choices) if p not in tried]
        if not rest:
            return None
        rng = random.Random(trial_seed(self.seed, trial, "untried"))
        return dict(zip(names, rng.choice(rest)))


def sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    return TrialSeededTPE(spec.seed) if spec.command == "tpe" else TrialSeededRandom(spec.seed)


def pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """Optuna's pruners, set for populations: every member of a population reports each epoch at once."""
    if spec.prune == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if spec.prune == "asha":  # min_resource 1: "auto" waits for a completed trial, which a first population lacks
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if spec.prune == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()
