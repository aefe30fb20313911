"""A 2-D CNN on the digits, seen as 1x8x8 images: two 3x3 convolutions and a linear head.

    hpsearch grid --task examples/digits_cnn.py:digits_cnn
"""
from torch import nn

from hpsearch import Task
from hpsearch.tasks.builtin import load_task


def digits_cnn_model() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),  # the 64 pixels as one channel of 8x8
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),  # 16 x 8 x 8
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),  # 32 x 4 x 4
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    )


def digits_cnn() -> Task:
    """The built-in digits task's tensors and split, with the CNN in place of the MLP."""
    digits = load_task("digits")
    return Task("digits-cnn", digits_cnn_model, digits.train, digits.val, digits.test, 10)
