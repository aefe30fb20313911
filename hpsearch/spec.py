"""What to search: the VALUES syntax, the search space, and the frozen StudySpec.

Plain data only (no torch, no optuna): the first stage of the pipeline, reached by tests directly.

VALUES is a comma list of items; an item is a number or a range LOW:HIGH[:COUNT].
Each parameter has its natural scale, used for ranges and for counted ranges (grids):

    lr, weight_decay   log scale                 1e-4:1e-1:4  -> 1e-4, 1e-3, 1e-2, 1e-1
    batch_size         powers of two             16:256       -> 16, 32, 64, 128, 256
    momentum           log scale on 1 - m        0:0.99:3     -> 0, 0.9, 0.99

Weight decay may list 0 beside a log range: ``0,1e-6:1e-2``.
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Mapping, Sequence, get_args

from hpsearch.errors import BadInput
from hpsearch.space import (BATCH_BOUNDS, MAX_POINTS, Config, Dimension, Param, Range, SearchSpace, Value, fmt,
                            make_config, names, param, params, tidy)

__all__ = ["Config", "Dimension", "Range", "SearchSpace", "Value", "fmt", "make_config", "tidy"]  # re-exported

PARAMS = ("lr", "weight_decay", "batch_size", "momentum")  # the built-in parameters; the registry may hold more
COMMANDS = ("grid", "random", "tpe")
PRUNERS = ("none", "median", "asha", "hyperband")
# Learning-rate schedules, stepped every optimizer step as torch.optim.lr_scheduler does (hpsearch.optimizers).
# Searches default to constant: the recipe refines without decay, then trains its choice longer with it.
SCHEDULES = ("constant", "step", "cosine", "exponential")
BUILTIN_TASKS = ("digits", "mnist1d")
DATA_SUFFIXES = (".npz", ".csv")  # a task reference ending so is a data file (--data)
Kind = Literal["classification", "regression"]  # what a task predicts: its loss and its objective
KINDS: tuple[Kind, ...] = get_args(Kind)
TASK_FORMS = "FILE.py:FUNCTION, package.module:FUNCTION, or --data FILE.npz|FILE.csv"

DEFAULT_EPOCHS = 5  # "a few epochs": enough to rank a coarse grid, as in the recipe
DEFAULT_TRIALS = 20
DEFAULT_SEED = 0
DEFAULT_RETRIES = 1  # one retry tells a passing fault (a full disk, a busy GPU) from a real bug
# MAX_POINTS (space.py): the most grid points (and values of one counted range) a search takes unless
# --max-points says more. The recipe's grids hold tens to hundreds of points; 100,000 already means hours
# of training at the measured 100-140 trials/s of a population on digits, a journal of several hundred MB,
# and Optuna reading 100,000 trials on every ask. A larger number is far more often a typo (an extra zero
# in a count) than a plan, so it is refused before anything is built, with the way to ask for it.

# The allowed values of every integer setting (inclusive), checked where flags and study files are
# parsed, before anything is written: a value beyond them used to be stored and then break every later
# read, or to overflow deep inside torch, numpy or pandas. Each bound is far beyond any sensible search.
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "batch_size": BATCH_BOUNDS,  # a million examples a step: full-batch on any data that fits in memory
    "epochs": (1, 100_000),  # per-epoch curves are stored per trial; 1e5 points already make a big record
    "seed": (0, 2**32 - 1),  # what numpy's seeding (Optuna's samplers) accepts; torch's as well
    "trials": (1, 1_000_000),  # every trial is a record in the storage, read back by each report
    "top": (1, 1_000_000),  # as many as there can be trials
    "jobs": (1, 256),  # worker processes on one machine, each holding the task's data
    "retries": (0, 100),  # re-runs of a failing configuration: a few tell a passing fault from a bug
    "population": (1, 4096),  # members trained as one batched model (memory grows with it)
    "warmup": (0, 100_000 - 1),  # epochs of linear warm-up: fewer than the epochs
    "repeats": (1, 100),  # seeds per configuration (--repeats): 3-10 tell noise from a difference
    # Points of one counted range: the grid's size is limited on its own; this bound keeps the count a
    # machine integer, so that its arithmetic never overflows a float.
    "count": (2, 10**9),
}


def bounds_text(name: str) -> str:
    low, high = INT_BOUNDS[name]
    return f"an integer from {low} to {high}"


def in_bounds(name: str, value: object) -> bool:
    """Whether ``value`` is an integer within INT_BOUNDS[name] (a stored value may be anything)."""
    low, high = INT_BOUNDS[name]
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def check_int(name: str, value: int, flag: str | None = None) -> int:
    """``value`` when it lies in INT_BOUNDS[name], else a one-line BadInput naming the allowed range.

    ``flag``: how the value was given ("--epochs", "studies/x.toml: key 'epochs' ="); default the flag.
    """
    if not in_bounds(name, value):
        raise BadInput(f"{flag or '--' + name.replace('_', '-')} {value}: give {bounds_text(name)}")
    return value


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _number(name: str, text: str, whole: str) -> float:
    if not re.fullmatch(_NUMBER, text.strip()):
        raise BadInput(f"{param(name).flag} {whole}: '{text}' is not a number")
    return float(text)


def _check_value(name: str, value: float, flag: str) -> None:
    if not math.isfinite(value):
        raise BadInput(f"{flag}: {fmt(value)} is too large a number")
    problem = param(name).problem(value)
    if problem is not None:
        raise BadInput(f"{flag}: {problem}")


def point_problem(values: Mapping[str, object]) -> str | None:
    """Why a stored configuration cannot be trained (again) under today's rules, or None when it can.

    A study written by an older hpsearch may hold values that parsing refuses now (batch size 1e20).
    """
    for name in names():
        value = values.get(name, param(name).fixed)  # a study stored before the parameter existed
        if param(name).categorical:
            problem = param(name).problem(value) if isinstance(value, str) else f"{name} {value!r} is not a name"
            if problem is not None:
                return problem
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"{name} {value!r} is not a number"
        try:
            _check_value(name, float(value), f"{name} {fmt(float(value))}")
        except BadInput as error:
            return str(error)
    return None


def _parse_range(name: str, item: str, whole: str) -> Range:
    parts = item.split(":")
    flag = f"{param(name).flag} {whole}"
    if len(parts) not in (2, 3):
        raise BadInput(f"{flag}: a range is LOW:HIGH or LOW:HIGH:COUNT, not '{item}'")
    low, high = (_number(name, p, whole) for p in parts[:2])
    for value in (low, high):
        _check_value(name, value, flag)
    if not low < high:
        raise BadInput(f"{flag}: a range's low end must be below its high end (write {parts[1]}:{parts[0]})")
    scale = param(name).scale
    if low == 0 and not scale.on_axis(low) and not scale.discrete:
        raise BadInput(f"{flag}: a log range cannot start at 0; write 0,{fmt(high / 1e4)}:{fmt(high)} to include 0")
    if scale.discrete and any(v != 2 ** round(math.log2(v)) for v in (low, high)):
        raise BadInput(f"{flag}: {param(name).label.lower()} ranges run over powers of two; make both ends powers of two (e.g. 16:256)")
    count = None
    if len(parts) == 3:
        low_count, high_count = INT_BOUNDS["count"]
        digits = parts[2].strip().lstrip("0") or "0"
        # the length first: int() of thousands of digits is refused by Python itself
        if not (re.fullmatch(r"\d+", digits) and len(digits) <= len(str(high_count))
                and low_count <= int(digits) <= high_count):
            text = parts[2].strip()
            shown = text if len(text) <= 24 else f"{text[:10]}... ({len(text):,} characters)"
            raise BadInput(f"{param(name).flag}: the count of a range must be {bounds_text('count')}, not {shown}")
        count = int(digits)
    return Range(low, high, count)


def parse_values(name: str, text: str) -> Dimension:
    """Parse one parameter's VALUES; raise BadInput with a one-line message on anything wrong."""
    if not text.isprintable():  # a newline or other control character would break the one-line message
        raise BadInput(f"{param(name).flag} {text!r}: VALUES hold numbers, ':' and ',' only")
    whole = text.strip()
    items = [item.strip() for item in whole.split(",")]
    if param(name).categorical:
        return _parse_choices(name, text, items)
    if not whole or any(not item for item in items):
        raise BadInput(f"{param(name).flag} '{text}': give a comma list of values or a range LOW:HIGH[:COUNT]")
    values: list[float] = []
    ranges: list[Range] = []
    for item in items:
        if ":" in item:
            ranges.append(_parse_range(name, item, whole))
        else:
            value = _number(name, item, whole)
            _check_value(name, value, f"{param(name).flag} {whole}")
            values.append(tidy(value))
    if len(ranges) > 1:
        raise BadInput(f"{param(name).flag} {whole}: give at most one range")
    return Dimension(name, tuple(sorted(set(values))), ranges[0] if ranges else None)


def _parse_choices(name: str, text: str, items: list[str]) -> Dimension:
    p = param(name)
    if not text.strip() or any(not item for item in items):
        raise BadInput(f"{p.flag} '{text}': give a comma list of {', '.join(p.choices)}")
    for item in items:
        if item not in p.choices:
            raise BadInput(f"{p.flag} {text.strip()}: {p.problem(item)}")
    return Dimension(name, tuple(sorted(set(items), key=p.order)))


def parse_space(command: str, texts: Mapping[str, str | None]) -> SearchSpace:
    """Build the space for a command from flag texts (None = that command's default).

    Choices are parsed first: a grid's default learning rates depend on the optimizers chosen.
    """
    dims: dict[str, Dimension] = {}
    for p in sorted(params(), key=lambda p: not p.categorical):
        text = texts.get(p.name)  # an empty --lr "" is a mistake, not the default
        dims[p.name] = parse_values(p.name, _default(p, command, dims) if text is None else text)
    for dim in dims.values():
        _check_for_command(command, dim)
    return SearchSpace(dims)


def _default(p: Param, command: str, chosen: Mapping[str, Dimension]) -> str:
    """A parameter's default VALUES for a command; a grid over several optimizers takes the union of theirs."""
    if command != "grid":
        return p.sampled_default
    by_optimizer = dict(p.grid_default_by_optimizer)
    optimizers = chosen["optimizer"].values if by_optimizer and "optimizer" in chosen else ()
    texts = list(dict.fromkeys(by_optimizer.get(str(o), p.grid_default) for o in optimizers)) or [p.grid_default]
    if len(texts) == 1:
        return texts[0]
    values = {v for text in texts for v in parse_values(p.name, text).values}
    return ",".join(p.text(v) for v in sorted(values, key=p.order, reverse=True))


def _check_for_command(command: str, dim: Dimension) -> None:
    flag = f"{param(dim.name).flag} {dim.text()}"
    rng = dim.range
    if rng is None:
        return
    if command == "grid" and rng.count is None and not param(dim.name).scale.discrete:
        raise BadInput(f"{flag}: a grid needs a list of values or a count (e.g. {rng.text()}:4)")
    if command != "grid" and dim.values and dim.is_continuous:
        if param(dim.name).zero_flag is None or dim.values != (0.0,):
            raise BadInput(f"{flag}: values beside a range are only for weight decay's 0 (e.g. 0,1e-6:1e-2)")


@dataclass(frozen=True)
class StudySpec:
    """Everything a search needs, validated. Frozen: stages downstream only read it."""

    command: str
    space: SearchSpace
    task: str = "digits"
    epochs: int = DEFAULT_EPOCHS
    seed: int = DEFAULT_SEED
    trials: int | None = None  # random / tpe: the study's total
    study: str = ""
    storage: str | None = None  # None: studies/hpsearch.journal, or $HPSEARCH_STORAGE
    device: str = "auto"
    prune: str = "none"  # stop poor trials early: none | median | asha | hyperband (Optuna's pruners)
    # Members trained as one batched model. On 2 CPU cores (make bench) trials/s peaks near 64
    # and falls at 256 as the batch leaves the cache; it also bounds memory.
    max_population: int = 64
    target: str | None = None  # a CSV data file's label column
    kind: Kind | None = None  # a data file's kind; None: from its targets (see hpsearch.tasks.user)
    # The objective: "val_accuracy" (maximised, classification) or "val_loss" (minimised,
    # regression); None until the search has loaded the task and knows its kind.
    metric: str | None = None
    jobs: int = 1  # worker processes on this machine sharing the study (hpsearch.search.workers)
    retries: int = DEFAULT_RETRIES  # re-runs of a configuration whose training raised an error
    # A refined grid (hpsearch.recipe.refine) is a union of neighbourhoods, not a product: its points are listed.
    points: tuple[dict[str, float], ...] | None = None
    source: dict[str, object] | None = None  # a refined study's origin: studies, trials, rule (hpsearch.recipe.refine)
    max_points: int = MAX_POINTS  # the largest grid (and counted range) taken; see MAX_POINTS
    schedule: str = "constant"  # the learning rate over training: constant | step | cosine | exponential
    warmup: int = 0  # epochs of linear warm-up before the schedule (0: none)
    # The user's own training code instead of a task (hpsearch.objective): a function FILE.py:NAME called with
    # each trial's hp, or a command (everything after --) run once per trial; at most one of them.
    objective: str | None = None
    run: tuple[str, ...] = ()
    timeout: float | None = None  # seconds one trial of the user's code may take; past it: timed_out
    repeats: int = 1  # seeds each configuration trains with; its trial's value is their mean (--repeats)

    @property
    def trials_at_once(self) -> int:
        """Trials a search asks at once: their K seeds (--repeats) fill a population of at most max_population."""
        return max(1, self.max_population // self.repeats)

    @property
    def own_code(self) -> bool:
        """Whether the user's own code trains (--objective or a command), not the population trainer."""
        return self.objective is not None or bool(self.run)

    def grid_points(self) -> list[dict[str, float]]:
        """The points a grid study trains: the listed ones, else every point of the space."""
        return list(self.iter_grid_points())

    def iter_grid_points(self) -> Iterator[dict[str, float]]:
        """``grid_points()`` one at a time: a large grid is never held whole."""
        return (dict(p) for p in self.points) if self.points is not None else self.space.iter_grid()

    def grid_size(self) -> int:
        return len(self.points) if self.points is not None else self.space.size()

    def check_size(self) -> None:
        """Refuse a grid, or a counted range, above ``max_points``, before anything is built or written."""
        over = "; if you mean it, raise the limit with --max-points N"
        if self.command == "grid" and self.grid_size() > self.max_points:
            shown_dims = self.space.texts()  # not the optimizer when it is only the default
            counts = " x ".join(f"{dim.size():,} {dim.name}" for dim in self.space.dimensions() if dim.name in shown_dims)
            shown = "" if self.points is not None else f" ({counts})"
            raise BadInput(f"the grid holds {self.grid_size():,} points{shown}, more than the limit of "
                           f"{self.max_points:,}; use fewer values or a smaller range count{over}")
        for dim in self.space.dimensions():
            if not dim.is_continuous and dim.size() > self.max_points:
                raise BadInput(f"{param(dim.name).flag} {dim.text()}: {dim.size():,} values, more than the limit of "
                               f"{self.max_points:,}; give a smaller count, or a range without a count to "
                               f"sample from{over}")

    def settings(self) -> dict[str, object]:
        """The settings that change results; stored on the study and compared on a re-run."""
        out: dict[str, object] = {"command": self.command, "task": self.task, "epochs": self.epochs, "seed": self.seed,
                                  "prune": self.prune}
        if self.own_code:  # what trains is the user's code, not a task
            del out["task"]
            out.update({"objective": self.objective} if self.objective is not None else {"run": list(self.run)})
            if self.timeout is not None:
                out["timeout"] = self.timeout
        out.update({key: value for key, value in (("target", self.target), ("kind", self.kind), ("metric", self.metric))
                    if value is not None})
        # only when set, so that a study stored before schedules existed has the same settings
        out.update({key: value for key, value, default in (("schedule", self.schedule, "constant"),
                                                           ("warmup", self.warmup, 0), ("repeats", self.repeats, 1))
                    if value != default})
        out["space"] = self.space.texts()  # a grid's too: a study file re-runs it (studyfile.py)
        if self.trials is not None:
            out["trials"] = self.trials
        if self.source is not None:
            out["source"] = self.source
        return out


def build_spec(
    command: str,
    *,
    task: str | None = None,
    data: str | None = None,
    target: str | None = None,
    kind: str | None = None,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = DEFAULT_SEED,
    trials: int | None = None,
    study: str | None = None,
    storage: str | None = None,
    device: str = "auto",
    prune: str = "none",
    jobs: int = 1,
    retries: int = DEFAULT_RETRIES,
    max_points: int = MAX_POINTS,
    schedule: str = "constant",
    warmup: int = 0,
    objective: str | None = None,
    run: Sequence[str] = (),
    timeout: float | None = None,
    metric: str | None = None,
    repeats: int = 1,
    **values: str | None,
) -> StudySpec:
    """A validated StudySpec from a command's flags; ``values``: each parameter's VALUES text (None: the default)."""
    if command not in COMMANDS:
        raise BadInput(f"unknown command '{command}'; choose one of {', '.join(COMMANDS)}")
    unknown = sorted(set(values) - set(names()))
    if unknown:
        raise TypeError(f"build_spec() got unexpected keyword arguments {unknown}")
    space = parse_space(command, values)
    if objective is not None or run:
        task, stem = own_code_reference(objective, tuple(run), task, data, timeout, metric)
        if schedule != "constant" or warmup:
            raise BadInput(f"--schedule {schedule} --warmup {warmup}: the population trainer's; your own code sets "
                           "its own learning-rate schedule (hp.epochs says how long it trains)")
    else:
        if timeout is not None:
            raise BadInput(f"--timeout {timeout:g}: only for your own code (--objective or a command after --); "
                           "the population trainer's trials have no time limit")
        if metric is not None:
            raise BadInput(f"--metric {metric}: only for your own code; a task's kind sets its metric")
        task, stem = task_reference(task, data, target, kind)
    check_int("epochs", epochs)
    check_int("seed", seed)
    if command != "grid":
        trials = check_int("trials", DEFAULT_TRIALS if trials is None else trials)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise BadInput(f"--device {device}: choose auto, cpu, cuda or cuda:INDEX")
    if prune not in PRUNERS:
        raise BadInput(f"--prune {prune}: choose one of {', '.join(PRUNERS)}")
    check_int("jobs", jobs)
    check_int("retries", retries)
    name = study if study is not None else f"{stem}-{command}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
        raise BadInput(f"--study '{name}': use letters, digits, '.', '_' and '-' (starting with a letter or digit)")
    check_max_points(max_points)
    check_schedule(schedule, warmup, epochs)
    check_int("repeats", repeats)
    spec = StudySpec(command, space, task, epochs, seed, trials, name, storage, device, prune, target=target, kind=kind,
                     jobs=jobs, retries=retries, max_points=max_points, schedule=schedule, warmup=warmup,
                     objective=objective, run=tuple(run), timeout=timeout, metric=metric, repeats=repeats,
                     # the user's code trains one trial at a time: ask one, so that the others stay queued
                     # (not "running") and a worker that dies takes one trial with it, not a batch
                     max_population=1 if objective is not None or run else StudySpec.max_population)
    spec.check_size()
    return spec


def check_schedule(schedule: str, warmup: int, epochs: int) -> None:
    """--schedule is one of SCHEDULES; --warmup leaves at least one epoch after it."""
    if schedule not in SCHEDULES:
        raise BadInput(f"--schedule {schedule}: choose one of {', '.join(SCHEDULES)}")
    check_int("warmup", warmup)
    if warmup >= epochs:
        raise BadInput(f"--warmup {warmup}: warm up for fewer epochs than the {epochs} trained (--epochs)")


def check_max_points(max_points: int) -> int:
    """--max-points: at least one point (its upper end is the user's call: it overrides a limit)."""
    if max_points < 1:
        raise BadInput(f"--max-points {max_points}: allow at least 1 point")
    return max_points


METRICS = ("val_accuracy", "val_loss")  # what a study ranks by: accuracy maximised, loss minimised
# report --rank: by the metric (the seeds' mean), or by its pessimistic bound, mean -/+ 2 standard errors
RANKINGS = ("mean", "lcb")


def own_code_reference(objective: str | None, run: tuple[str, ...], task: str | None, data: str | None,
                       timeout: float | None, metric: str | None) -> tuple[str, str]:
    """Check the user's own code's settings: a function reference or a command, not both, and no task.

    Returns the spec's task label and the default study stem (the function's name, or the script's).
    """
    if objective is not None and run:
        raise BadInput(f"give --objective or a command after --, not both (--objective {objective} -- {' '.join(run)})")
    if task is not None or data is not None:
        what = f"--task {task}" if task is not None else f"--data {data}"
        raise BadInput(f"{what}: your own code (--objective or a command) trains without a task; give one or the other")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise BadInput(f"--timeout {timeout:g}: give a number of seconds > 0")
    if metric is not None and metric not in METRICS:
        raise BadInput(f"--metric {metric}: choose one of {', '.join(METRICS)}")
    if objective is not None:
        function = code_function(objective)
        if function is None:
            raise BadInput(f"--objective {objective}: give FILE.py:FUNCTION or package.module:FUNCTION")
        return objective, function
    if any(not part.isprintable() for part in run):
        raise BadInput("the command after --: a part holds a newline or another control character")
    script = next((Path(part).stem for part in run if Path(part).suffix in (".py", ".sh")), Path(run[0]).name)
    return "command", re.sub(r"[^A-Za-z0-9_.\-]+", "-", script).strip("-.") or "command"


def code_function(reference: str) -> str | None:
    """The function's name in ``FILE.py:FUNCTION`` or ``package.module:FUNCTION`` (tasks and objectives), or
    None when the reference has neither form."""
    where, _, function = reference.rpartition(":")
    module = r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*"
    return function if function.isidentifier() and (where.endswith(".py") or re.fullmatch(module, where)) else None


def task_reference(task: str | None, data: str | None, target: str | None, kind: str | None) -> tuple[str, str]:
    """Check a task reference's syntax (tasks.load_task loads it); return it and its default study stem.

    A built-in name; ``FILE.py:FUNCTION`` or ``package.module:FUNCTION`` (a plug-in, named by its
    function); a ``.npz`` / ``.csv`` data file (named by its file name).
    """
    if data is not None and task is not None:
        raise BadInput(f"give --task or --data, not both (--task {task} --data {data})")
    if data is not None and not data.endswith(DATA_SUFFIXES):
        raise BadInput(f"--data {data}: give a .npz or .csv file")
    ref = data or task or "digits"
    is_data = ref.endswith(DATA_SUFFIXES)
    if is_data and ref.endswith(".csv") and target is None:
        raise BadInput(f"--data {ref}: name the label column with --target COLUMN")
    if target is not None and not ref.endswith(".csv"):
        raise BadInput(f"--target {target}: only a .csv --data file has a label column to name")
    if kind is not None and not is_data:
        raise BadInput(f"--kind {kind}: only for --data files (a task function sets its Task's kind)")
    if kind is not None and kind not in KINDS:
        raise BadInput(f"--kind {kind}: choose one of {', '.join(KINDS)}")
    if ref in BUILTIN_TASKS:
        return ref, ref
    if is_data:
        stem = Path(ref).stem
    else:
        function = code_function(ref)
        if function is None:
            raise BadInput(f"unknown task '{ref}'; built-in tasks: {', '.join(BUILTIN_TASKS)}; or {TASK_FORMS}")
        stem = function
    return ref, re.sub(r"[^A-Za-z0-9_.\-]+", "-", stem).strip("-.") or "task"


