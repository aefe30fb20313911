"""Tasks: a model factory and the train / validation / test tensors. Public API.

A task is what the trainer needs and nothing more. Built-in tasks are generated or bundled on the
machine (never downloaded). Later, users' own tasks come in through the same type.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from hpsearch.errors import BadInput
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


def digits(seed: int = 0) -> Task:
    """scikit-learn's bundled 8x8 digits: stratified 60/20/20 split, an MLP 64-128-10.

    The same split and model as the benchmark yardstick (``shared/bench/plain_optuna.py``).
    """
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, random_state=seed, stratify=y)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, random_state=seed, stratify=y_rest)

    def pair(a: np.ndarray, b: np.ndarray) -> Split:
        return torch.tensor(a), torch.tensor(b, dtype=torch.int64)

    return Task("digits", mlp(64, 128, 10), pair(x_train, y_train), pair(x_val, y_val), pair(x_test, y_test), 10)


_BUILTIN: dict[str, Callable[[], Task]] = {"digits": digits}
assert tuple(_BUILTIN) == BUILTIN_TASKS


def load_task(name: str) -> Task:
    """A built-in task by name."""
    if name not in _BUILTIN:
        raise BadInput(f"unknown task '{name}'; built-in tasks: {', '.join(_BUILTIN)}")
    return _BUILTIN[name]()
