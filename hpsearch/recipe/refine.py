"""Refine: the next, finer search around the best configurations of earlier studies.

The rule, per parameter and per best value of the top K completed trials, on the parameter's
natural scale (log for learning rate and weight decay, powers of two for batch size, log of
``1 - m`` for momentum):

* the refined step is half the coarse step: on the log scale, half the smallest gap between
  neighbouring values the grid sources searched (for 1e-1, 1e-2, 1e-3: a factor sqrt(10) = 3.16);
  a decade when only random / TPE sources searched the parameter (their draws have no spacing);
  one power of two for batch size;
* the neighbourhood is the best value and one refined step either side:
  lr 1e-2 -> 3.16e-3, 1e-2, 3.16e-2; batch size 64 -> 32, 64, 128;
* when the best value is the highest (lowest) value searched so far by all the sources, the
  neighbourhood reaches one refined step further upward (downward), a whole coarse step beyond the
  old edge: lr 1e-1 at the top -> 3.16e-2, 1e-1, 3.16e-1, 1;
* weight decay 0 stays a candidate when it is among the best; it has no log scale, so its
  neighbour is the first refined step below the smallest nonzero weight decay searched
  (0 beside 1e-5 searched -> 0, 3.16e-6); momentum never goes below 0;
* a parameter the sources searched at one value only stays at that value: refine narrows and
  widens what was searched, it does not open a new axis.

The default sampler is a grid of the union of the top trials' neighbourhoods (each one a product
over the parameters), without duplicates; random and TPE sample inside the envelope (lowest to
highest refined value of each parameter). Values are rounded to 3 significant digits (momentum:
1 - m), so neighbourhoods that meet share their points. Reads studies through ``hpsearch.report.results``;
no torch.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import optuna
import pandas as pd

from hpsearch.errors import BadInput
from hpsearch.report.results import Results, edge_flags, read_results, searched_ranges, ties_with_best, trial_names, what_trains
from hpsearch.search.records import SETTINGS_ATTR, made_by_hpsearch, not_hpsearch
from hpsearch.space import grid_order, names as param_names, param
from hpsearch.spec import (
    DEFAULT_RETRIES,
    MAX_POINTS,
    Dimension,
    Range,
    SearchSpace,
    StudySpec,
    bounds_text,
    build_spec,
    check_int,
    check_max_points,
    fmt,
    in_bounds,
    make_config,
    point_problem,
)
from hpsearch.storage.store import open_storage, study_names

DEFAULT_TOP = 3
SAMPLERS = ("grid", "random", "tpe")
# Refined studies train longer than their sources: the recipe says 10-20 epochs, without decay.
EPOCHS_FACTOR = 3
MIN_EPOCHS, MAX_EPOCHS = 10, 20
# The coarse step assumed where the sources give none (only random / TPE draws): a decade.
DEFAULT_COARSE_STEP = math.log(10.0)
RULE = ("per parameter, the best value and one refined step (half the coarse step on its natural scale; one power "
        "of two for batch size) either side, one step further outward when the best lies on an edge of the range "
        "searched, weight decay 0 kept beside one step below its smallest nonzero value, a parameter searched at "
        "one value kept; the grid is the union of the top trials' neighbourhoods")


@dataclass(frozen=True)
class Neighbourhood:
    """The refined values around one best value of one parameter, and why they are these."""

    name: str
    best: float
    values: tuple[float, ...]
    why: str
    trials: tuple[str, ...]  # the top trials ("study#number") whose value this is


@dataclass(frozen=True)
class Refinement:
    """A refined study ready to run: its spec (points or ranges, source) and the reasons behind it."""

    spec: StudySpec
    top: tuple[dict[str, object], ...]  # the source trials: study, trial, params
    neighbourhoods: dict[str, tuple[Neighbourhood, ...]]
    step: dict[str, float]  # the refined step per parameter, as a factor on its scale (batch size: 2)
    source_epochs: int
    skipped: tuple[str, ...] = ()  # one line per source trial left out (values no longer allowed)
    ties: tuple[str, ...] = ()  # the line naming the source trials that tie with the best within noise, if any

    def describe(self) -> list[str]:
        """The refined space, parameter by parameter, and the configurations it holds (``refine --show``)."""
        spec = self.spec
        trials = ", ".join(f"{t['study']}#{t['trial']}" for t in self.top)
        studies = ", ".join(spec.source["studies"])  # type: ignore[index]
        lines = [(f"Study {spec.study}: refined from {studies} (top {len(self.top)}: {trials}); {spec.epochs} epochs "
                  f"(sources: {self.source_epochs}), seed {spec.seed}, sampler {spec.command}")]
        lines += self.skipped + self.ties
        for name in param_names():
            fixed = len(self.neighbourhoods[name]) == 1 and len(self.neighbourhoods[name][0].values) == 1
            lines.append(f"{name} ({'searched at one value' if fixed else _scale_note(name, self.step[name])}):")
            for hood in self.neighbourhoods[name]:
                lines.append(f"  {hood.why}  [{', '.join(hood.trials)}]")
        if spec.points is None:
            lines.append(f"{spec.trials} trials sampled by {spec.command} inside: "
                         + "; ".join(f"{d.name} {d.text()}" for d in spec.space.dimensions()))
            return lines
        lines.append(f"{len(spec.points)} configurations (the union of the neighbourhoods):")
        lines += ["  " + "  ".join(f"{name}={param(name).text(p[name])}" for name in param_names()) for p in spec.points]
        return lines


def _scale_note(name: str, step: float) -> str:
    return param(name).scale.note(name, step)


def round_value(name: str, value: float) -> float:
    """3 significant digits on the parameter's scale (momentum: of 1 - m): readable, and equal where neighbourhoods meet."""
    return param(name).scale.round(value)


def half_step(name: str, searched: Sequence[float]) -> float:
    """The refined step on the parameter's scale: half the smallest gap between neighbouring searched values.

    ``searched``: the values the grid sources tried (weight decay's 0 has no place on a log scale and is
    left out). Fewer than two values: half a decade. Batch size: one power of two.
    """
    scale = param(name).scale
    if scale.discrete:
        return scale.refine_step(0.0)
    points = sorted({scale.forward(v) for v in searched if scale.on_axis(v)})
    gaps = [b - a for a, b in itertools.pairwise(points) if b - a > 1e-9]
    return (min(gaps) if gaps else DEFAULT_COARSE_STEP) / 2


def neighbourhood(name: str, best: float, step: float, edge: str | None = None,
                  lowest_nonzero: float | None = None) -> tuple[float, ...]:
    """The refined values around ``best`` (see the module's rule), sorted.

    ``step``: the refined step on the parameter's scale (``half_step``); ``edge``: "high" or "low" when
    ``best`` is on that edge of the range searched so far; ``lowest_nonzero``: the smallest nonzero weight
    decay searched (the neighbour of weight decay 0).
    """
    if param(name).zero_flag is not None and best == 0:
        below = [] if lowest_nonzero is None else [lowest_nonzero / math.exp(step)]
        return tuple(sorted({0.0, *(round_value(name, v) for v in below)}))
    scale = param(name).scale
    offsets = [-step, 0.0, step]
    if edge is not None:
        upward = 1.0 if edge == "high" else -1.0
        offsets.append(2 * step * upward * scale.upward)  # high momentum = low 1 - m
    u = scale.forward(best)
    values = {scale.clip(round_value(name, scale.inverse(u + offset))) for offset in offsets}
    return tuple(sorted(v for v in values if scale.allowed(v)))


def _why(name: str, best: float, values: tuple[float, ...], edge: str | None, lowest_nonzero: float | None) -> str:
    shown = ", ".join(fmt(v) for v in values)
    if len(values) == 1:
        return f"searched at {fmt(best)} only -> kept: {shown}"
    if param(name).zero_flag is not None and best == 0:
        if lowest_nonzero is None:
            return f"best 0, no nonzero value searched -> kept: {shown}"
        return f"best 0 -> kept, beside one refined step below the smallest nonzero value searched ({fmt(lowest_nonzero)}): {shown}"
    if edge == "high":
        return f"best {fmt(best)} is the highest value searched -> widened upward: {shown}"
    if edge == "low":
        return f"best {fmt(best)} is the lowest value searched -> widened downward: {shown}"
    return f"best {fmt(best)} -> {shown}"


def _settings(results: Results, names: Sequence[str]) -> dict[str, Mapping[str, object]]:
    settings = {}
    for name in names:
        if not made_by_hpsearch(results.studies[name]):
            raise not_hpsearch(name, "refine --from takes studies that hpsearch searched")
        settings[name] = results.settings(name)
    first = names[0]
    task = [(what_trains(s), s.get("target"), s.get("kind")) for s in settings.values()]
    for name, this in zip(names, task):
        if this != task[0]:
            raise BadInput(f"study '{name}' is of task {this[0]}, study '{first}' of task {task[0][0]}; "
                           "refine from studies of one task")
    return settings


def _top(frame: pd.DataFrame, names: Sequence[str], top: int, skipped: Sequence[str] = ()) -> pd.DataFrame:
    done = frame[frame["outcome"] == "completed"]
    for name in names:
        if not (done["study"] == name).any():
            left_out = [line for line in skipped if line.startswith(f"skipped {name}#")]
            if left_out:
                raise BadInput(f"study '{name}' has no completed trial that can be trained again ({left_out[0]})")
            raise BadInput(f"study '{name}' has no completed trials to refine from; run it first "
                           f"(hpsearch report {name} shows what happened)")
    return done.head(top)


def _carried(name: str, given: int | None, stored: int, study: str) -> int:
    """A setting refine carries over from its source, unless given; a stored value beyond today's bounds
    (written by an older hpsearch) is refused with the flag that overrides it."""
    if given is not None:
        return given
    if not in_bounds(name, stored):
        raise BadInput(f"study '{study}' was run with {name} {stored}, which is not {bounds_text(name)} now; "
                       f"give --{name} to refine it")
    return stored


def _trainable(frame: pd.DataFrame) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """The trials whose values may be trained today, and a line per trial left out (a study written by an
    older hpsearch may hold a value that parsing refuses now: refining around it could only fail)."""
    problems = [point_problem(row) if all(pd.notna(v) for v in row.values()) else None  # a trial not yet sampled
                for row in frame[list(param_names())].to_dict("records")]
    keep = [problem is None for problem in problems]
    skipped = tuple(f"skipped {study}#{trial}: {problem}" for (study, trial), problem
                    in zip(zip(frame["study"], frame["trial"]), problems) if problem is not None)
    return frame[keep], skipped


def _params(row: Mapping[str, object]) -> dict[str, float]:
    return {name: param(name).cast(row[name]) for name in param_names()}


def _around(name: str, best: pd.DataFrame, frame: pd.DataFrame, grids: pd.DataFrame) -> tuple[float, tuple[Neighbourhood, ...]]:
    """One parameter's refined step (a factor on its scale) and a neighbourhood per distinct best value.

    ``best``: the top trials; ``frame``: every trial of the sources (the range searched so far);
    ``grids``: the trials of the grid sources (their spacing gives the coarse step).
    A categorical parameter (the optimizer) keeps each top trial's choice: it has no neighbours.
    """
    if param(name).categorical:
        kept = tuple(sorted(set(best[name]), key=param(name).order))
        return 1.0, tuple(Neighbourhood(name, value, (value,), f"{value}: a top trial's, kept", tuple(
            f"{r.study}#{r.trial}" for r in best[best[name] == value].itertuples())) for value in kept)
    half = half_step(name, pd.to_numeric(grids[name], errors="coerce").dropna().tolist())
    searched = pd.to_numeric(frame[name], errors="coerce").dropna()
    low, high = searched_ranges(frame)[name]
    nonzero = searched[searched > 0]
    lowest_nonzero = float(nonzero.min()) if param(name).zero_flag is not None and len(nonzero) else None
    hoods = []
    for value, rows in best.groupby(best[name].astype(float), sort=True):
        edge = edge_flags({name: value}, {name: (low, high)}).get(name)
        around = (value,) if low == high else neighbourhood(name, value, half, edge, lowest_nonzero)
        trials = tuple(f"{r.study}#{r.trial}" for r in rows.itertuples())
        hoods.append(Neighbourhood(name, value, around, _why(name, value, around, edge, lowest_nonzero), trials))
    return param(name).scale.step_factor(half), tuple(hoods)


def _union(best: pd.DataFrame, hoods: Mapping[str, Sequence[Neighbourhood]]) -> tuple[dict[str, float], ...]:
    """Every top trial's neighbourhood (a product over the parameters), merged without duplicates, by batch size."""
    around = {(name, param(name).key(hood.best)): hood.values for name, found in hoods.items() for hood in found}
    points: dict[tuple, dict[str, float]] = {}
    for row in best.to_dict("records"):
        params = _params(row)
        for combo in itertools.product(*(around[(name, param(name).key(params[name]))] for name in param_names())):
            point = {name: param(name).cast(value) for name, value in zip(param_names(), combo)}
            points.setdefault(make_config(point, 0).key(), point)
    order = grid_order()
    return tuple(sorted(points.values(), key=lambda p: tuple(param(n).order(p[n]) for n in order)))


def _envelope(hoods: Mapping[str, Sequence[Neighbourhood]], sampled: bool) -> SearchSpace:
    """The refined values per parameter as a space: listed for a grid; ranges to sample inside for random / TPE."""
    dims = {}
    for name, found in hoods.items():
        listed = tuple(sorted({v for hood in found for v in hood.values}, key=param(name).order))
        continuous = [v for v in listed if param(name).scale.on_axis(v)]
        if not sampled or len(continuous) < 2:
            dims[name] = Dimension(name, listed)
            continue
        zero = (0.0,) if param(name).zero_flag is not None and 0.0 in listed else ()
        dims[name] = Dimension(name, zero, Range(min(continuous), max(continuous)))
    return SearchSpace(dims)


def refine_spec(
    sources: Sequence[str],
    *,
    top: int = DEFAULT_TOP,
    sampler: str = "grid",
    trials: int | None = None,
    epochs: int | None = None,
    study: str | None = None,
    seed: int | None = None,
    prune: str | None = None,
    storage: str | None = None,
    device: str = "auto",
    jobs: int = 1,
    retries: int = DEFAULT_RETRIES,
    max_points: int = MAX_POINTS,
    repeats: int | None = None,
) -> Refinement:
    """The refined study around the best ``top`` completed trials of ``sources`` (read, never written).

    Task, seed, pruner and repeats carry over from the first source unless given; epochs default to 3x the
    sources' (10 to 20, never fewer than theirs); the study name to ``<first source>-refine``.
    """
    names = list(dict.fromkeys(sources))
    if not names:
        raise BadInput("name a study to refine from: --from STUDY")
    check_int("top", top)
    for name, value in (("epochs", epochs), ("seed", seed), ("trials", trials), ("repeats", repeats)):
        if value is not None:  # given: checked before any study is read
            check_int(name, value)
    check_max_points(max_points)
    if sampler not in SAMPLERS:
        raise BadInput(f"--sampler {sampler}: choose one of {', '.join(SAMPLERS)}")
    if sampler == "grid" and trials is not None:
        raise BadInput("--trials is for --sampler random or tpe; a refined grid trains every configuration it holds")
    target = study if study is not None else f"{names[0]}-refine"
    if target in names:
        raise BadInput(f"--study {target}: refine writes a new study; choose a name other than its sources'")
    results = read_results(names, storage)
    settings = _settings(results, names)
    first = settings[names[0]]
    frame, skipped = _trainable(results.frame)
    best = _top(frame, names, top, skipped)
    grids = frame[frame["study"].isin([n for n in names if settings[n].get("command") == "grid"])]

    hoods, step = {}, {}
    for name in param_names():
        step[name], hoods[name] = _around(name, best, frame, grids)
    points = _union(best, hoods)

    source_epochs = max(int(s.get("epochs", 1)) for s in settings.values())  # type: ignore[call-overload]
    seed = _carried("seed", seed, int(first.get("seed", 0)), names[0])  # type: ignore[call-overload]
    repeats = _carried("repeats", repeats, first.get("repeats", 1), names[0])  # type: ignore[arg-type]
    if epochs is None:
        source_epochs = _carried("epochs", None, source_epochs, names[0])  # the default grows from it
        epochs = max(source_epochs, min(MAX_EPOCHS, max(MIN_EPOCHS, EPOCHS_FACTOR * source_epochs)))
    origin = [{"study": r["study"], "trial": int(r["trial"]), "params": _params(r)} for r in best.to_dict("records")]
    source = {"studies": names, "trials": origin, "top": top, "rule": RULE}
    own = {"objective": first.get("objective"), "run": tuple(first.get("run") or ()),  # type: ignore[call-overload]
           "timeout": first.get("timeout"), "metric": first.get("metric")} if (
        first.get("objective") or first.get("run")) else {"task": str(first["task"])}
    spec = build_spec(sampler, **own, target=first.get("target"),  # type: ignore[arg-type]
                      kind=first.get("kind"), epochs=epochs,  # type: ignore[arg-type]
                      seed=seed,
                      trials=trials, study=target, storage=storage, device=device,
                      jobs=jobs, retries=retries, repeats=repeats,
                      prune=str(first.get("prune", "none")) if prune is None else prune,
                      # the recipe refines without decay; a source searched with a schedule keeps it
                      schedule=str(first.get("schedule", "constant")), warmup=int(first.get("warmup", 0)))
    spec = replace(spec, space=_envelope(hoods, sampled=sampler != "grid"),
                   points=points if sampler == "grid" else None, source=source, max_points=max_points)
    spec.check_size()  # the refined grid's size, not the default grid build_spec started from
    _check_target(spec)
    return Refinement(spec, tuple(origin), hoods, step, source_epochs, skipped, tie_lines(frame, top))


def tie_lines(ranked: pd.DataFrame, top: int) -> tuple[str, ...]:
    """A line naming the trials that tie with the best within noise, when there are any: the top ``top`` by
    mean are then one choice among equals (README: How sure is the ranking)."""
    tied = ties_with_best(ranked)
    if tied.empty:
        return ()
    best = ranked.iloc[0]
    return (f"note: {len(tied)} trial{'s' * (len(tied) > 1)} tie with the best ({best['study']}#{best['trial']}) within "
            f"noise: {trial_names(tied)}; the top {top} are taken by their mean, and refining around them covers "
            "their neighbours too",)


def _check_target(spec: StudySpec) -> None:
    """A refined study that already exists continues only from the same source trials (else: a new name)."""
    store = open_storage(spec.storage, create=False)
    if spec.study not in study_names(store.storage):
        return
    study = optuna.load_study(study_name=spec.study, storage=store.storage)
    if not made_by_hpsearch(study):
        raise not_hpsearch(spec.study, "choose another --study")
    stored = study.user_attrs[SETTINGS_ATTR]
    if stored.get("source") != spec.source:
        what = "refined from other trials" if stored.get("source") else "not made by refine"
        raise BadInput(f"study '{spec.study}' already exists and was {what}; choose another --study name")
