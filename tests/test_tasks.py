from __future__ import annotations

import pytest
import torch

from hpsearch.errors import BadInput
from hpsearch.tasks.builtin import load_task


def test_digits_split_is_stratified_60_20_20(digits):
    sizes = [len(split[0]) for split in (digits.train, digits.val, digits.test)]
    assert sizes == [1078, 359, 360]
    for x, y in (digits.train, digits.val, digits.test):
        assert x.dtype == torch.float32 and x.shape[1] == 64 and y.dtype == torch.int64
        counts = torch.bincount(y, minlength=10).float() / len(y)
        assert counts.min() > 0.08 and counts.max() < 0.12  # every class about 10%
    assert float(digits.train[0].max()) <= 1.0


def test_digits_model_is_an_mlp_64_128_10(digits):
    model = digits.make_model()
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(128, 64), (128,), (10, 128), (10,)]
    assert model(digits.val[0]).shape == (359, 10)


def test_digits_split_is_the_same_every_time(digits):
    again = load_task("digits")
    assert torch.equal(again.val[0], digits.val[0]) and torch.equal(again.test[1], digits.test[1])


def test_unknown_task_names_the_built_in_ones():
    with pytest.raises(BadInput, match="built-in tasks: digits"):
        load_task("cifar")


def test_the_shipped_split_is_sklearns_split(digits):
    """The split that ships with hpsearch equals scikit-learn's, as in the benchmark yardstick."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, random_state=0, stratify=y)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, random_state=0, stratify=y_rest)
    for (tx, ty), (sx, sy) in zip((digits.train, digits.val, digits.test),
                                  ((x_train, y_train), (x_val, y_val), (x_test, y_test))):
        assert np.array_equal(tx.numpy(), sx) and np.array_equal(ty.numpy(), sy)
