"""Tasks: a model factory and the train / validation / test tensors. Public API.

A task is what the trainer needs and nothing more. Built-in tasks are generated or bundled on the
machine (never downloaded); users' own tasks (``--task FILE.py:NAME``, ``--data FILE``) come in
through the same type (see hpsearch/tasks/user.py).
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from hpsearch.errors import RuntimeFailure
from hpsearch.spec import BUILTIN_TASKS
from hpsearch.tasks.task import KINDS, Split, Task, carve, mlp, note_once

__all__ = ["KINDS", "Split", "Task", "carve", "digits", "load_task", "mlp", "mnist1d", "note_once"]

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


def mnist1d_cnn() -> nn.Module:
    """The paper's small 1-D CNN: three stride-2 convolutions of 25 channels, then a linear layer.

    Chosen over the paper's MLP 40-100-100-10: on 2 CPU cores the default 24-point grid at 5
    epochs took 4.9 s against 0.7 s, and reached 0.64 validation accuracy against 0.50 (0.90
    against 0.61 at 20 epochs), so the search has differences to find.
    """
    return nn.Sequential(
        nn.Unflatten(1, (1, 40)),
        nn.Conv1d(1, 25, 5, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(25, 25, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(25, 25, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(125, 10),
    )


def mnist1d() -> Task:
    """MNIST-1D generated here (hpsearch/tasks/mnist1d.py): 3,200 / 800 / 1,000 examples, a 1-D CNN.

    The paper's 4,000 training examples give the training and (a stratified 20%, seed 0)
    validation splits; its 1,000 test examples are the test split.
    """
    from hpsearch.tasks.mnist1d import dataset

    x, y, x_test, y_test = (torch.from_numpy(a) for a in dataset())
    train, val = carve(y.numpy(), 0.2, stratified=True)
    return Task("mnist1d", mnist1d_cnn, (x[train], y[train]), (x[val], y[val]), (x_test, y_test), 10)


_BUILTIN: dict[str, Callable[[], Task]] = {"digits": digits, "mnist1d": mnist1d}
assert tuple(_BUILTIN) == BUILTIN_TASKS


@functools.lru_cache(maxsize=4)
def load_task(name: str, target: str | None = None, kind: str | None = None) -> Task:
    """A task by its reference (cached: tasks are read-only).

    ``name``: a built-in task, ``FILE.py:FUNCTION`` or ``package.module:FUNCTION`` (a plug-in),
    or a ``.npz`` / ``.csv`` data file (``target``: the CSV label column; ``kind``: see hpsearch.tasks.user).
    """
    if name in _BUILTIN:
        return _BUILTIN[name]()
    from hpsearch.tasks.user import load_user_task

    return load_user_task(name, target, kind)
