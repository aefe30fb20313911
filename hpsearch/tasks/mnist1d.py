"""MNIST-1D (Greydanus 2020), generated here with numpy: nothing is downloaded.

The procedure of the paper's ``make_dataset``: ten hand-drawn templates of length 12 (one per
digit), each example padded with 36-60 zeros, stretched to length 72, scaled by a random
factor, rotated by up to 47 steps, its padding filled with smooth (correlated) noise, then iid
noise added everywhere, a random linear shear, and finally resampled to 40 points. The whole
set is standardised to mean 0 and standard deviation 1. Examples come class by class, then are
shuffled; the first 80% are the training part and the rest the test part, as in the paper.

The random draws come from a numpy Generator (not the paper's global RandomState), so the
examples are not the paper's files bit for bit; the distribution is the same.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# The ten templates of the paper (digits 0-9), before whitening.
TEMPLATES = np.array([
    [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
    [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
    [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
    [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
    [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
    [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
    [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
    [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
])


@dataclass(frozen=True)
class Settings:
    """The paper's defaults (its ``get_dataset_args``)."""

    num_samples: int = 5000  # 4,000 training and 1,000 test examples
    train_split: float = 0.8
    padding: tuple[int, int] = (36, 60)
    scale_coeff: float = 0.4
    max_translation: int = 48
    corr_noise_scale: float = 0.25
    iid_noise_scale: float = 2e-2
    shear_scale: float = 0.75
    final_seq_length: int = 40
    seed: int = 42


def templates() -> np.ndarray:
    """Whitened templates that start and end at 0, scaled down as in the paper."""
    x = TEMPLATES - TEMPLATES.mean(1, keepdims=True)
    x = x / x.std(1, keepdims=True)
    return (x - x[:, :1]) / 6.0


def resample(x: np.ndarray, length: int) -> np.ndarray:
    """Linear interpolation of each row of ``x`` (or of one signal) onto ``length`` evenly spaced points.

    np.interp's arithmetic (slope * (t - xp[j]) + fp[j], fp[j] where t is a sample point, the last
    value at the end) on all rows at once: the same bits as np.interp row by row, in a tenth of the
    time (tests/test_mnist1d.py).
    """
    rows = np.atleast_2d(x)
    xp = np.linspace(0, 1, rows.shape[1])
    at = np.linspace(0, 1, length)
    j = np.clip(np.searchsorted(xp, at, side="right") - 1, 0, len(xp) - 2)
    out = (rows[:, j + 1] - rows[:, j]) / (xp[j + 1] - xp[j]) * (at - xp[j]) + rows[:, j]
    on_point = at == xp[j]
    out[:, on_point] = rows[:, j[on_point]]
    out[:, at >= xp[-1]] = rows[:, -1:]
    return out if x.ndim > 1 else out[0]


def smooth(noise: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Gaussian smoothing along the last axis (scipy's gaussian_filter1d: reflected edges, 4 sigma)."""
    radius = int(4 * sigma + 0.5)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(noise, [(0, 0), (radius, radius)], mode="symmetric")
    windows = np.lib.stride_tricks.sliding_window_view(padded, len(kernel), axis=-1)
    return windows @ kernel


def generate(settings: Settings = Settings()) -> tuple[np.ndarray, np.ndarray]:
    """All examples (float32, shape (num_samples, 40)) and labels (int64), shuffled, standardised."""
    rng = np.random.default_rng(settings.seed)
    shapes = templates()
    low, high = settings.padding
    width = shapes.shape[1] + high  # every padded example is stretched to this length
    per_class = settings.num_samples // len(shapes)
    labels = np.repeat(np.arange(len(shapes)), per_class)
    n = len(labels)
    pads = rng.integers(low, high + 1, n)
    # Each (template, padding) pair stretched once: 250 pairs for 5,000 examples.
    pairs, which = np.unique(np.stack([labels, pads], 1), axis=0, return_inverse=True)
    x = np.stack([resample(np.concatenate([shapes[y] + 1e-8, np.zeros(p)]), width) for y, p in pairs])[which.ravel()]
    x *= 1 + settings.scale_coeff * (rng.random((n, 1)) - 0.5)
    shifts = rng.integers(0, settings.max_translation, n)
    x = x[np.arange(n)[:, None], (np.arange(width)[None, :] - shifts[:, None]) % width]  # rotate right
    padding = x == 0  # the template was lifted by 1e-8, so exact zeros are padding
    x = np.where(padding, smooth(settings.corr_noise_scale * rng.standard_normal((n, width))), x)
    x += settings.iid_noise_scale * rng.standard_normal((n, width))
    x -= settings.shear_scale * (rng.random((n, 1)) - 0.5) * np.linspace(-0.5, 0.5, width)
    x = resample(x, settings.final_seq_length)
    order = rng.permutation(n)
    x, labels = x[order], labels[order]
    x = (x - x.mean()) / x.std()
    return x.astype(np.float32), labels.astype(np.int64)


@functools.lru_cache(maxsize=2)
def dataset(settings: Settings = Settings()) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training part and test part: ``x_train, y_train, x_test, y_test`` (cached; read-only)."""
    x, y = generate(settings)
    cut = int(len(y) * settings.train_split)
    return x[:cut], y[:cut], x[cut:], y[cut:]
