"""A complete hpsearch task: your model and your tensors.

    hpsearch grid --task my_task.py:spirals
    hpsearch grid --task my_task.py:wave
"""
import math

import torch
from torch import nn

from hpsearch import Task


def spiral_model() -> nn.Module:
    # A fresh, randomly initialised model on every call (hpsearch seeds each one).
    return nn.Sequential(
        nn.Linear(2, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(),
        nn.Linear(64, 3),  # one output per class
    )


def spirals() -> Task:
    """Classification: which of three interleaved spirals a noisy 2-D point lies on."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(1500) % 3
    radius = torch.rand(1500, generator=g)
    angle = 4 * radius + labels * 2 * math.pi / 3 + 0.2 * torch.randn(1500, generator=g)
    points = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return Task(
        name="spirals",
        make_model=spiral_model,
        train=(points[:1200], labels[:1200]),  # float32 inputs (N, ...), int64 labels (N,)
        val=None,  # None: hpsearch carves a stratified 20% of train for validation
        test=(points[1200:], labels[1200:]),  # kept for the very end
        num_classes=3,
    )


def wave() -> Task:
    """Regression: a noisy sine wave; the search minimises the validation mean squared error."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1000, 1, generator=g) * 6 - 3
    y = torch.sin(2 * x) + 0.1 * torch.randn(1000, 1, generator=g)
    return Task(
        name="wave",
        make_model=lambda: nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 1)),
        train=(x[:600], y[:600]),  # float targets (N,) or (N, outputs)
        val=(x[600:800], y[600:800]),
        test=(x[800:], y[800:]),
        num_classes=1,  # for regression: outputs per example
        kind="regression",
    )
