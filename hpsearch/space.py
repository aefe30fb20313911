"""The parameter registry: each hyperparameter declared once; a space and a configuration as mappings.

Plain data only (no torch, no optuna): the first stage of the pipeline. A ``Param`` says everything the
other stages need to know about one hyperparameter: the name Optuna stores, its scale (the axis on which
ranges are evenly spaced and refine narrows), the values it may take, its flag, labels and defaults, and
how Optuna encodes it. Spec, search, results, report, plots, refine and the CLI iterate over ``params()``.

Adding a hyperparameter is one ``register(Param(...))`` plus what the trainer does with the value.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Mapping, Union

# The most grid points (and values of one counted range) a search takes unless --max-points says more
# (the reasons are in spec.py, which re-exports it).
MAX_POINTS = 100_000


def tidy(value: float) -> float:
    """Round away float noise (1e-3 from a log grid is 0.0010000000000000002), so points compare equal."""
    return float(f"{value:.12g}")


def fmt(value: float) -> str:
    """Short (1e-05, 0.9, 32) where that is exact, else every digit: texts parse back to the same values."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


# --- scales: the axis on which a parameter's ranges are evenly spaced ---


@dataclass(frozen=True)
class Scale:
    """Log scale (learning rate, weight decay): ranges and refine's steps are even in log(value).

    ``discrete``: a range without a count is already a list (powers of two); ``sample_log``: how Optuna
    samples a continuous range (it has no scale but linear and log).
    """

    forward: Callable[[float], float] = math.log
    inverse: Callable[[float], float] = math.exp
    discrete: bool = False
    sample_log: bool = True

    def on_axis(self, value: float) -> bool:
        """Whether a value has a place on this scale (0 has none on a log scale)."""
        return value > 0

    def round(self, value: float) -> float:
        """3 significant digits on the scale: readable, and equal where refine's neighbourhoods meet."""
        return float(f"{value:.3g}")

    def clip(self, value: float) -> float:
        return value

    def allowed(self, value: float) -> bool:
        return True

    def refine_step(self, searched_step: float) -> float:
        """Refine's step on this axis from half the coarse step (see refine.half_step)."""
        return searched_step

    def step_factor(self, step: float) -> float:
        return math.exp(step)

    def note(self, name: str, step: float) -> str:
        return f"log scale, refined step x{step:.3g}"

    @property
    def upward(self) -> float:
        """+1 when a higher value is higher on the axis; -1 when the axis runs the other way (1 - m)."""
        return 1.0


@dataclass(frozen=True)
class PowerOfTwo(Scale):
    """Powers of two (batch size): a range is the list of its powers; refine steps one power at a time."""

    forward: Callable[[float], float] = math.log2
    inverse: Callable[[float], float] = lambda u: float(2 ** round(u))
    discrete: bool = True
    sample_log: bool = False

    def on_axis(self, value: float) -> bool:
        return False  # never a continuous range: refine lists its values

    def round(self, value: float) -> float:
        return float(int(value))

    def allowed(self, value: float) -> bool:
        return value >= 1

    def refine_step(self, searched_step: float) -> float:
        return 1.0

    def step_factor(self, step: float) -> float:
        return 2.0

    def note(self, name: str, step: float) -> str:
        return "powers of two"


@dataclass(frozen=True)
class OneMinus(Scale):
    """Log scale on 1 - m (momentum): 0.9 -> 0.99 is as far as 0 -> 0.9. Optuna samples it linearly."""

    forward: Callable[[float], float] = lambda m: math.log(1.0 - m)
    inverse: Callable[[float], float] = lambda u: 1.0 - math.exp(u)
    sample_log: bool = False

    def on_axis(self, value: float) -> bool:
        return True

    def round(self, value: float) -> float:
        return tidy(1.0 - float(f"{1.0 - value:.3g}"))

    def clip(self, value: float) -> float:
        return max(value, 0.0)

    def note(self, name: str, step: float) -> str:
        return f"on 1 - {name}, log scale, refined step x{step:.3g}"

    @property
    def upward(self) -> float:
        return -1.0  # high momentum = low 1 - m


@dataclass(frozen=True)
class Choice(Scale):
    """Named choices (the optimizer): no axis, no ranges; a grid lists them, random / TPE pick one,
    and refine keeps the choices of the top trials (a neighbour of "adam" means nothing)."""

    discrete: bool = True
    sample_log: bool = False

    def on_axis(self, value: float) -> bool:
        return False

    def round(self, value: float) -> float:
        return value

    def refine_step(self, searched_step: float) -> float:
        return 0.0

    def step_factor(self, step: float) -> float:
        return 1.0

    def note(self, name: str, step: float) -> str:
        return "choices: those of the top trials are kept"


LOG = Scale()
POWER_OF_TWO = PowerOfTwo()
ONE_MINUS = OneMinus()
CHOICE = Choice()


# --- the registry ---

Value = Union[float, str]  # a number, or a categorical parameter's choice (the optimizer)


@dataclass(frozen=True)
class Param:
    """One hyperparameter, declared once."""

    name: str  # as stored in Optuna (and in the CSV, the study file and the settings)
    scale: Scale
    problem: Callable[[float], str | None]  # why a value is refused (the text after "FLAG: "), or None
    label: str  # plots: "Learning rate"
    header: str  # the terminal table's two-line header
    short: str  # a curve's legend: "lr 0.01"
    help: str  # --help: "Learning rates"
    scale_help: tuple[str, str]  # --help's scale text: (grid, random / TPE)
    grid_default: str  # the recipe's coarse grid
    sampled_default: str  # random / TPE: ranges wide enough to need no prior knowledge
    integer: bool = False  # stored as an int (Optuna: IntDistribution on a grid)
    # 0 may stand beside a log range ("0,1e-6:1e-2"); a random / TPE study draws it as this categorical
    zero_flag: str | None = None
    groups: bool = False  # configurations with the same value train as one population (a grid lists them together)
    # The value when a configuration does not name it: check's and estimate's plain-SGD probes name the
    # four SGD parameters only, and a study stored before the parameter existed trained at it. A value
    # equal to it feeds no seed and no setting, so that such studies keep their seeds. None: it must be named.
    fixed: Value | None = None
    choices: tuple[str, ...] = ()  # a categorical parameter's names (scale CHOICE); empty for a number
    # The grid's default per optimizer where it differs from ``grid_default`` (Adam's rates are lower):
    # a grid over several optimizers takes the union of their defaults.
    grid_default_by_optimizer: tuple[tuple[str, str], ...] = ()

    @property
    def categorical(self) -> bool:
        return bool(self.choices)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def cast(self, value: object) -> Value:
        if self.categorical:
            return str(value)
        return int(value) if self.integer else float(value)  # type: ignore[call-overload]

    def key(self, value: Value) -> Value:
        """The value as it enters a configuration's identity (and seed): float noise rounded away."""
        if self.categorical:
            return str(value)
        return int(value) if self.integer else tidy(float(value))

    def order(self, value: Value) -> tuple[int, float]:
        """Where a value sorts among this parameter's values: numbers by size, choices in declared order."""
        if self.categorical:
            return (self.choices.index(str(value)) if value in self.choices else len(self.choices), 0.0)
        return (0, float(value))

    def text(self, value: Value) -> str:
        """A value as VALUES writes it (parses back to the same value)."""
        return str(value) if self.categorical else fmt(float(value))

    def cell(self, value: object) -> str:
        """A table cell."""
        return str(value) if self.integer or self.categorical else f"{value:.3g}"


_REGISTRY: dict[str, Param] = {}


def register(param: Param) -> Param:
    """Declare a hyperparameter (its name must be new); ``unregister`` takes it away again."""
    if param.name in _REGISTRY:
        raise ValueError(f"parameter '{param.name}' is registered already")
    _REGISTRY[param.name] = param
    return param


def unregister(name: str) -> None:
    del _REGISTRY[name]


def params() -> tuple[Param, ...]:
    """Every hyperparameter, in the registry's order (the order of tables, settings and seeds)."""
    return tuple(_REGISTRY.values())


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def param(name: str) -> Param:
    return _REGISTRY[name]


def grid_order() -> tuple[str, ...]:
    """The order a grid is listed in: the population-grouping parameters first, then the registry's order."""
    return tuple(sorted(_REGISTRY, key=lambda n: not _REGISTRY[n].groups))


BATCH_BOUNDS = (1, 2**20)  # a million examples a step: full-batch on any data that fits in memory


def _lr(value: float) -> str | None:
    return None if value > 0 else f"a learning rate must be > 0, not {fmt(value)}"


def _weight_decay(value: float) -> str | None:
    return None if value >= 0 else f"weight decay must be >= 0, not {fmt(value)}"


def _batch_size(value: float) -> str | None:
    if value == int(value) and BATCH_BOUNDS[0] <= value <= BATCH_BOUNDS[1]:
        return None
    shown = str(int(value)) if value == int(value) and value < 1e15 else fmt(value)
    return f"a batch size must be an integer from {BATCH_BOUNDS[0]} to {BATCH_BOUNDS[1]}, not {shown}"


def _momentum(value: float) -> str | None:
    return None if 0 <= value < 1 else f"momentum must be in [0, 1), not {fmt(value)}"


# PyTorch's optimizers, with torch.optim's semantics (hpsearch.optimizers); ``momentum`` is each one's
# momentum or beta1. sgd stays the default, so that every study stored before this parameter keeps its seeds.
OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "rmsprop")
ADAPTIVE = ("adam", "adamw", "rmsprop")  # per-parameter step sizes: they learn at lower rates than SGD
ADAPTIVE_LR_GRID = "1e-2,1e-3,1e-4,1e-5"  # centred on 1e-3..1e-4 (torch's Adam default: 1e-3)

# The recipe's defaults (DESIGN.md): grid lr 1e-1..1e-4, weight decay 1e-4, 1e-5, 0, batch size 32, 128,
# momentum 0.9; random / TPE ranges wide enough that a search needs no prior knowledge of the model.
register(Param("lr", LOG, _lr, "Learning rate", "\nlr", "lr", "Learning rates", ("log scale", "log scale"),
               "1e-1,1e-2,1e-3,1e-4", "1e-5:1",
               grid_default_by_optimizer=tuple((name, ADAPTIVE_LR_GRID) for name in ADAPTIVE)))
register(Param("weight_decay", LOG, _weight_decay, "Weight decay", "weight\ndecay", "wd", "Weight decays",
               ("log scale; 0 may stand beside a range",) * 2, "1e-4,1e-5,0", "0,1e-6:1e-2",
               zero_flag="weight_decay_zero"))
register(Param("batch_size", POWER_OF_TWO, _batch_size, "Batch size", "batch\nsize", "bs", "Batch sizes",
               ("powers of two", "powers of two"), "32,128", "16:256", integer=True, groups=True))
register(Param("momentum", ONE_MINUS, _momentum, "Momentum", "\nmomentum", "m",
               "Momentum (SGD's and RMSprop's; beta1 for Adam and AdamW)",
               ("ranges on 1 - momentum", "counted ranges on 1 - momentum"), "0.9", "0:0.99"))



def _optimizer(value: Value) -> str | None:
    return None if value in OPTIMIZERS else f"unknown optimizer '{value}'; choose from {', '.join(OPTIMIZERS)}"


register(Param("optimizer", CHOICE, _optimizer, "Optimizer", "\noptimizer", "opt", "Optimizers",
               (", ".join(OPTIMIZERS), ", ".join(OPTIMIZERS)), "sgd", "sgd", fixed="sgd", choices=OPTIMIZERS))


# --- values of one parameter, a space, a configuration ---


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    count: int | None = None

    def text(self) -> str:
        ends = f"{fmt(self.low)}:{fmt(self.high)}"
        return ends if self.count is None else f"{ends}:{self.count}"


def range_count(name: str, rng: Range) -> int:
    """The values a range expands to, before duplicates (powers of two: at most its powers)."""
    discrete = param(name).scale.discrete
    powers = int(math.log2(rng.high)) - int(math.log2(rng.low)) + 1 if discrete else None
    if rng.count is None:
        return powers or 0  # an uncounted range is a grid only for a discrete scale
    return min(rng.count, powers) if powers is not None else rng.count


def expand(name: str, rng: Range) -> list[float]:
    """The grid points of a range on the parameter's natural scale."""
    scale = param(name).scale
    if scale.discrete and rng.count is None:
        low, high = int(math.log2(rng.low)), int(math.log2(rng.high))
        return [float(2**e) for e in range(low, high + 1)]
    assert rng.count is not None
    a, b = scale.forward(rng.low), scale.forward(rng.high)
    step = (b - a) / (rng.count - 1)
    return [tidy(scale.inverse(a + i * step)) for i in range(rng.count)]


@dataclass(frozen=True)
class Dimension:
    """One parameter's search values: listed values, at most one range, or both (weight decay's 0)."""

    name: str
    values: tuple[Value, ...] = ()
    range: Range | None = None

    def text(self) -> str:
        items = [param(self.name).text(v) for v in self.values] + ([self.range.text()] if self.range else [])
        return ",".join(items)

    def size(self) -> int:
        """How many values ``grid()`` holds, known without listing a range of more than MAX_POINTS values
        (then an upper bound: listed values that fall on the range are counted twice)."""
        if self.range is None:
            return len(self.values)
        count = range_count(self.name, self.range)
        return len(self.grid()) if count <= MAX_POINTS else len(self.values) + count

    def grid(self) -> tuple[Value, ...]:
        """Every value of this dimension as a grid (a range needs a count, except on a discrete scale)."""
        points = list(self.values)
        if self.range is not None:
            points += expand(self.name, self.range)
        return tuple(sorted(set(points), key=param(self.name).order))

    @property
    def is_continuous(self) -> bool:
        """True when a sampler must draw from a range rather than pick from a list."""
        return self.range is not None and self.range.count is None and not param(self.name).scale.discrete


class SearchSpace(Mapping[str, Dimension]):
    """A name -> Dimension mapping (frozen) in the registry's order; ``space.lr`` reads one dimension."""

    def __init__(self, dims: Mapping[str, Dimension]) -> None:
        self._dims = {name: dims[name] for name in names() if name in dims}
        self._dims.update(dims)

    def __getitem__(self, name: str) -> Dimension:
        return self._dims[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dims)

    def __len__(self) -> int:
        return len(self._dims)

    def __getattr__(self, name: str) -> Dimension:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._dims[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"SearchSpace({self._dims!r})"

    def dimensions(self) -> tuple[Dimension, ...]:
        return tuple(self._dims.values())

    def texts(self) -> dict[str, str]:
        """Each dimension's VALUES text; one that holds only its parameter's ``fixed`` value is left out, so that
        a study stored before that parameter existed has the same settings."""
        return {d.name: d.text() for d in self.dimensions()
                if not (param(d.name).fixed is not None and d.range is None and d.values == (param(d.name).fixed,))}

    def size(self) -> int:
        """The grid's number of points: a product of counts, known without building a point."""
        return math.prod(dim.size() for dim in self.dimensions())

    def iter_grid(self) -> Iterator[dict[str, float]]:
        """Every grid point, one at a time, ordered by batch size so that consecutive points can share a population."""
        order = [n for n in grid_order() if n in self._dims]
        values = [[param(n).cast(v) for v in self._dims[n].grid()] for n in order]
        for combo in itertools.product(*values):
            point = dict(zip(order, combo))
            yield {name: point[name] for name in self._dims}

    def grid(self) -> list[dict[str, float]]:
        return list(self.iter_grid())


@dataclass(frozen=True)
class Config(Mapping[str, float]):
    """One configuration to train: name -> value in the registry's order, and the seed derived from them.

    ``config.lr`` reads one value (never in the training loop: the trainer reads them once per population).
    """

    entries: tuple[tuple[str, float], ...]
    seed: int = field(default=0)

    def __getitem__(self, name: str) -> float:
        for key, value in self.entries:
            if key == name:
                return value
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getattr__(self, name: str) -> float:
        if name.startswith("_") or name in ("entries", "seed"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def key(self) -> tuple[float, ...]:
        """The configuration's identity: its values in the registry's order, float noise rounded away."""
        return tuple(param(name).key(value) for name, value in self.entries)

    def params(self) -> dict[str, float]:
        return dict(self.entries)


def make_config(values: Mapping[str, object], study_seed: int) -> Config:
    """A configuration with its seed: from --seed and the values alone, never from worker or order.

    The seed hashes the values in the registry's order, leaving out those at their parameter's ``fixed``
    value, so that the four original parameters keep the seeds of every stored study. A parameter the
    values do not name takes its ``fixed`` value.
    """
    entries = tuple((p.name, p.cast(values[p.name] if p.name in values or p.fixed is None else p.fixed))
                    for p in params())
    config = Config(entries)
    seeded = tuple(key for p, key in zip(params(), config.key()) if p.fixed is None or key != p.fixed)
    digest = hashlib.sha256(repr((study_seed,) + seeded).encode()).digest()
    return Config(entries, seed=int.from_bytes(digest[:4], "little") & 0x7FFFFFFF)



def repeat_seeds(config: Config, repeats: int) -> list[Config]:
    """``config`` with each of its ``repeats`` seeds (``--repeats``): the first is its own seed, so that a study
    of K seeds holds the run of one; the others hash that seed with the repeat's number."""
    def seed(r: int) -> int:
        if r == 0:
            return config.seed
        digest = hashlib.sha256(repr((config.seed, "repeat", r)).encode()).digest()
        return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF

    return [replace(config, seed=seed(r)) for r in range(repeats)]
