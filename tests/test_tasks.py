from __future__ import annotations

import pytest
import torch

from hpsearch.errors import BadInput
from hpsearch.tasks import load_task


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
