"""Tasks: a model factory and the train / validation / test tensors. Public API.

A task is what the trainer needs and nothing more. Built-in tasks are generated or bundled on the
machine (never downloaded). Later, users' own tasks come in through the same type.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from hpsearch.errors import BadInput, RuntimeFailure
from hpsearch.spec import BUILTIN_TASKS

Split = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Task:
    """A classification task: ``make_model()`` returns a fresh, randomly initialised model.

    Tensors: inputs float32 of shape (N, ...), labels int64 of shape (N,) in [0, num_classes).
    The search reads ``train`` and ``val`` only; ``test`` is kept for the very end of the recipe.
    """

    name: str
    make_model: Callable[[], nn.Module]
    train: Split
    val: Split
    test: Split
    num_classes: int

    def to(self, device: torch.device) -> "Task":
        """The same task with its tensors on ``device`` (data lives there for the whole search)."""
        def move(split: Split) -> Split:
            return (split[0].to(device), split[1].to(device))

        return Task(self.name, self.make_model, move(self.train), move(self.val), move(self.test), self.num_classes)


def mlp(inputs: int, hidden: int, classes: int) -> Callable[[], nn.Module]:
    """A one-hidden-layer ReLU MLP factory."""
    return lambda: nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, classes))


SHIPPED_SPLIT = Path(__file__).parent / "data" / "digits_split_seed0.npz"


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits, read from its data file without importing scikit-learn (~1 s)."""
    sklearn = importlib.util.find_spec("sklearn")
    if sklearn is None or not sklearn.submodule_search_locations:
        raise RuntimeFailure("the digits task needs scikit-learn's bundled data: pip install scikit-learn")
    data = np.loadtxt(Path(sklearn.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    return (data[:, :-1] / 16.0).astype(np.float32), data[:, -1].astype(np.int64)


def digits_split(y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the stratified 60/20/20 split, as sklearn's train_test_split makes them.

    The seed-0 split ships with the package (tests check it equals sklearn's), so that start-up
    does not pay for importing scikit-learn.
    """
    if seed == 0 and SHIPPED_SPLIT.exists():
        with np.load(SHIPPED_SPLIT) as shipped:
            return shipped["train"].astype(np.int64), shipped["val"].astype(np.int64), shipped["test"].astype(np.int64)
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    train, rest = train_test_split(index, test_size=0.4, random_state=seed, stratify=y)
    val, test = train_test_split(rest, test_size=0.5, random_state=seed, stratify=y[rest])
    return train, val, test


def digits(seed: int = 0) -> Task:
    """scikit-learn's bundled 8x8 digits: stratified 60/20/20 split, an MLP 64-128-10.

    The same data, split and model as the benchmark yardstick (``shared/bench/plain_optuna.py``).
    """
    x, y = digits_arrays()

    def pair(index: np.ndarray) -> Split:
        return torch.from_numpy(x[index]), torch.from_numpy(y[index])

    train, val, test = digits_split(y, seed)
    return Task("digits", mlp(64, 128, 10), pair(train), pair(val), pair(test), 10)


_BUILTIN: dict[str, Callable[[], Task]] = {"digits": digits}
assert tuple(_BUILTIN) == BUILTIN_TASKS


@functools.lru_cache(maxsize=4)
def load_task(name: str) -> Task:
    """A built-in task by name (cached: tasks are read-only)."""
    if name not in _BUILTIN:
        raise BadInput(f"unknown task '{name}'; built-in tasks: {', '.join(_BUILTIN)}")
    return _BUILTIN[name]()
