"""What a task is: a model factory and the train / validation / test tensors (``hpsearch.Task``).

Built-in tasks are hpsearch.tasks.builtin's, users' own hpsearch.tasks.user's; both build on this.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch import nn

from hpsearch.errors import BadInput
from hpsearch.spec import KINDS, Kind

Split = tuple[torch.Tensor, torch.Tensor]
_SAID: set[str] = set()  # notes already given in this process


def note_once(message: str) -> None:
    """A note for the user on stderr, once per process (the library never prints).

    Python's last-resort logging handler prints the bare message when nothing else is set up.
    """
    if message not in _SAID:
        _SAID.add(message)
        logging.getLogger("hpsearch").warning(message)


@dataclass(frozen=True)
class Task:
    """What hpsearch tunes: a model factory and its data. Public API: a plug-in task returns one.

    name         shown in messages
    make_model   called with no arguments, returns a fresh ``nn.Module`` (hpsearch seeds the
                 random generator before each call, so each configuration's initialisation is
                 reproducible); it maps a batch of inputs (B, ...) to outputs (B, num_classes)
    train        (inputs, targets): inputs float32 of shape (N, features, ...), finite; targets
                 int64 of shape (N,) in [0, num_classes) for classification (at least two classes
                 present; booleans are classes 0 and 1), float32 of shape (N,) or
                 (N, num_classes) for regression
    val          the same for the validation split the search ranks on; None: hpsearch carves a
                 validation split (20%, stratified for classification, seed 0) out of ``train``
    test         kept for the very end of the recipe (``hpsearch test``); None: carved out of
                 ``train`` like ``val``
    num_classes  classes for classification; outputs per example for regression (1 for one target)
    kind         "classification" (cross-entropy; objective: validation accuracy, maximised) or
                 "regression" (mean squared error; objective: validation loss, minimised)

    ``load_task`` checks a task and fills in missing splits; the trainer needs all three, each
    of at least 2 rows (tasks.user.MIN_ROWS).
    """

    name: str
    make_model: Callable[[], nn.Module]
    train: Split
    val: Split | None
    test: Split | None
    num_classes: int
    kind: Kind = "classification"

    def to(self, device: torch.device) -> "Task":
        """The same task with its tensors on ``device`` (data lives there for the whole search)."""
        def move(split: Split | None) -> Split | None:
            return None if split is None else (split[0].to(device), split[1].to(device))

        return replace(self, train=move(self.train), val=move(self.val), test=move(self.test))


def mlp(inputs: int, hidden: int, classes: int) -> Callable[[], nn.Module]:
    """A one-hidden-layer ReLU MLP factory."""
    return lambda: nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def carve(y: np.ndarray, fraction: float, stratified: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, carved out): ``fraction`` of the examples, of each class when stratified."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == label) for label in np.unique(y)] if stratified else [np.arange(len(y))]
    out = np.concatenate([rng.permutation(g)[:round(fraction * len(g))] for g in groups])
    mask = np.zeros(len(y), dtype=bool)
    mask[out] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def require_trainable(model: nn.Module, where: str) -> None:
    """Refuse a model with nothing to train: every search would rank untrained copies of it."""
    if not any(p.requires_grad for p in model.parameters()):
        total = sum(p.numel() for p in model.parameters())
        what = f"all {total:,} of its parameters have requires_grad=False" if total else "it has no parameters"
        raise BadInput(f"{where}: the {type(model).__name__} model has no trainable parameter ({what}); "
                       "unfreeze the parameters to tune")
