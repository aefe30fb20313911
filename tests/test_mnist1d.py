"""MNIST-1D generated on the machine: the paper's procedure, a fixed split, a CNN that learns."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from hpsearch.spec import make_config
from hpsearch.tasks import mnist1d
from hpsearch.tasks.builtin import load_task
from hpsearch.train import train_population


def test_the_dataset_has_the_papers_shape_and_is_standardised():
    x_train, y_train, x_test, y_test = mnist1d.dataset()
    assert x_train.shape == (4000, 40) and x_test.shape == (1000, 40)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert np.array_equal(np.bincount(np.concatenate([y_train, y_test])), [500] * 10)
    x = np.concatenate([x_train, x_test])
    assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-4


def test_generation_is_deterministic_and_depends_on_the_seed():
    small = mnist1d.Settings(num_samples=200)
    a, b = mnist1d.generate(small), mnist1d.generate(small)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    other = mnist1d.generate(mnist1d.Settings(num_samples=200, seed=1))
    assert not np.array_equal(a[0], other[0])


def test_templates_start_and_end_at_zero_and_differ():
    t = mnist1d.templates()
    assert t.shape == (10, 12) and np.allclose(t[:, 0], 0) and np.allclose(t[:, -1], 0)
    assert len({row.tobytes() for row in t}) == 10


def test_smoothing_equals_scipys_gaussian_filter():
    noise = np.random.default_rng(0).standard_normal((3, 72))
    assert np.allclose(mnist1d.smooth(noise), gaussian_filter1d(noise, 2.0, axis=-1))


def _interp_row_by_row(x: np.ndarray, length: int) -> np.ndarray:
    """The yardstick: np.interp on each row (or on one signal) onto ``length`` evenly spaced points."""
    rows = np.atleast_2d(x)
    out = np.stack([np.interp(np.linspace(0, 1, length), np.linspace(0, 1, rows.shape[1]), row) for row in rows])
    return out if x.ndim > 1 else out[0]


def test_resampling_all_rows_at_once_gives_np_interps_bits():
    """Rows of several lengths onto fewer and more points, sample points falling on the source's, and one signal."""
    rng = np.random.default_rng(3)
    for width, length in ((72, 40), (13, 72), (48, 72), (5, 5), (2, 7)):
        rows = rng.standard_normal((50, width))
        want = _interp_row_by_row(rows, length)
        assert np.array_equal(mnist1d.resample(rows, length), want)
        assert np.array_equal(mnist1d.resample(rows[0], length), want[0])


def test_the_data_is_the_data_of_np_interp_row_by_row(monkeypatch):
    """Stored studies were trained on mnist1d as generated with np.interp per example: the same arrays to the bit."""
    fast = mnist1d.generate()
    monkeypatch.setattr(mnist1d, "resample", _interp_row_by_row)
    slow = mnist1d.generate()
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow))


def test_the_task_splits_the_training_part_stratified():
    task = load_task("mnist1d")
    assert [len(s[0]) for s in (task.train, task.val, task.test)] == [3200, 800, 1000]
    per_class = np.bincount(mnist1d.dataset()[1])  # about 400 each in the paper's training part
    assert np.array_equal(torch.bincount(task.val[1]).numpy(), np.round(0.2 * per_class))
    assert task.make_model()(task.val[0][:5]).shape == (5, 10)


def test_the_cnn_learns_in_two_epochs_on_a_quarter_of_the_data():
    task = load_task("mnist1d")
    quarter = replace(task, train=(task.train[0][:800], task.train[1][:800]))
    config = make_config({"lr": 0.1, "weight_decay": 0.0, "batch_size": 32, "momentum": 0.9}, 0)
    result = train_population(quarter, [config], epochs=2)[0]
    assert result.outcome == "completed" and result.val_accuracy[0] > 0.2  # chance is 0.1
