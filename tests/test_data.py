"""Data files without code (--data FILE.npz / FILE.csv): splits, standardisation, kinds, errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from hpsearch.cli import main
from hpsearch.tasks import load_task

TINY = ["--lr", "0.1,0.01", "--weight-decay", "0", "--batch-size", "32", "--epochs", "1"]


def blobs(n: int = 150, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of 4 features, far from standardised (offset 50, scale 10)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = 50 + 10 * (rng.normal(size=(n, 4)) + 2 * np.eye(3, 4)[y])
    return x, y


def grid(*args: str):
    return CliRunner().invoke(main, ["grid", *args, *TINY])


def test_an_npz_runs_through_grid_and_report(workdir):
    x, y = blobs()
    np.savez(workdir / "blobs.npz", x_train=x, y_train=y)
    result = grid("--data", "blobs.npz")
    assert result.exit_code == 0, result.output
    assert "Trained 2 trials" in result.stdout and "blobs-grid" in result.stdout and "Best: val acc" in result.stdout
    report = CliRunner().invoke(main, ["report", "blobs-grid"])
    assert report.exit_code == 0 and "completed" in report.stdout


def test_a_csv_with_text_labels_runs_through_grid(workdir):
    x, y = blobs()
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    frame.insert(2, "species", np.array(["ash", "birch", "cedar"])[y])
    frame.to_csv(workdir / "trees.csv", index=False)
    result = grid("--data", "trees.csv", "--target", "species")
    assert result.exit_code == 0, result.output
    task = load_task(str(workdir / "trees.csv"), "species")
    assert task.kind == "classification" and task.num_classes == 3 and task.train[0].shape[1] == 4


def test_features_are_standardised_with_training_statistics_only(tmp_path):
    x, y = blobs(200)
    x_val = x[150:] + 5.0  # shifted: scaled with the training statistics it stays off centre
    np.savez(tmp_path / "d.npz", x_train=x[:150], y_train=y[:150], x_val=x_val, y_val=y[150:],
             x_test=x[150:], y_test=y[150:])
    task = load_task(str(tmp_path / "d.npz"))
    train, val = task.train[0], task.val[0]
    assert torch.allclose(train.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(train.std(0), torch.ones(4), atol=1e-5)
    expected = (x_val - x[:150].mean(0)) / x[:150].std(0, ddof=1)
    assert np.allclose(val.numpy(), expected, atol=1e-4)
    assert [len(s[0]) for s in (task.train, task.val, task.test)] == [150, 50, 50]  # given splits: nothing carved


def test_the_default_model_is_an_mlp_sized_from_the_data(tmp_path):
    x, y = blobs()
    np.savez(tmp_path / "d.npz", x_train=x.reshape(-1, 2, 2), y_train=y)  # inputs flattened to 4 features
    task = load_task(str(tmp_path / "d.npz"))
    shapes = [tuple(p.shape) for p in task.make_model().parameters()]
    assert shapes == [(32, 4), (32,), (3, 32), (3,)]


def test_float_targets_are_regression_unless_told(tmp_path):
    x, y = blobs()
    np.savez(tmp_path / "r.npz", x_train=x, y_train=x[:, 0] * 0.1 + 1.5)
    np.savez(tmp_path / "c.npz", x_train=x, y_train=y.astype(np.float64))
    regression = load_task(str(tmp_path / "r.npz"))
    assert regression.kind == "regression" and regression.train[1].shape[1:] == (1,)
    told = load_task(str(tmp_path / "c.npz"), kind="classification")
    assert told.kind == "classification" and told.train[1].dtype == torch.int64


def test_a_regression_npz_runs_through_grid(workdir):
    x, _ = blobs()
    np.savez(workdir / "r.npz", x_train=x, y_train=(x[:, 0] - 50) / 10)
    result = grid("--data", "r.npz")
    assert result.exit_code == 0, result.output
    assert "Best: val loss" in result.stdout


BROKEN = {
    "npz without x_train": ({"x": np.zeros((4, 2)), "y_train": np.zeros(4)}, "has no x_train and y_train arrays"),
    "NaN in the data": ({"x_train": np.array([[0.0, 1.0], [np.nan, 2.0]] * 5), "y_train": np.array([0, 1] * 5)},
                        "train inputs contain NaN or infinite values"),
    "lengths differ": ({"x_train": np.zeros((10, 2)), "y_train": np.zeros(9, dtype=int)},
                       "train has 10 inputs but 9 targets"),
    "negative labels": ({"x_train": np.zeros((10, 2)), "y_train": np.arange(10) - 1},
                        "train labels must be in [0, 9) for 9 classes; found -1"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_bad_data_file_is_one_line_and_exit_2(workdir, case):
    arrays, message = BROKEN[case]
    np.savez(workdir / "bad.npz", **arrays)
    result = grid("--data", "bad.npz")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.startswith("Error: ")
    assert result.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("args, message", [
    (["--data", "missing.npz"], "data file missing.npz not found"),
    (["--data", "d.csv"], "name the label column with --target COLUMN"),
    (["--data", "d.csv", "--target", "nope"], "has no column 'nope' (columns: a, label)"),
    (["--data", "d.txt"], "give a .npz or .csv file"),
    (["--data", "d.csv", "--target", "label", "--task", "digits"], "give --task or --data, not both"),
])
def test_data_options_are_checked(workdir, args, message):
    (workdir / "d.csv").write_text("a,label\n1,0\n2,1\n")
    result = grid(*args)
    assert result.exit_code == 2 and message in result.stderr, result.output
