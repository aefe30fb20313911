"""Data files without code (--data FILE.npz / FILE.csv): splits, standardisation, kinds, errors."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from hpsearch.tasks.builtin import load_task

from helpers import run, tiny

TINY = tiny(weight_decay="0", batch_size="32")  # 2 trials


def blobs(n: int = 150, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of 4 features, far from standardised (offset 50, scale 10)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = 50 + 10 * (rng.normal(size=(n, 4)) + 2 * np.eye(3, 4)[y])
    return x, y


def test_an_npz_runs_through_grid_and_report(workdir):
    x, y = blobs()
    np.savez(workdir / "blobs.npz", x_train=x, y_train=y)
    result = run("grid", "--data", "blobs.npz", *TINY)
    assert result.exit_code == 0, result.output
    assert "Trained 2 trials" in result.stdout and "blobs-grid" in result.stdout and "Best: val acc" in result.stdout
    report = run("report", "blobs-grid")
    assert report.exit_code == 0 and "completed" in report.stdout


def test_a_csv_with_text_labels_runs_through_grid(workdir):
    x, y = blobs()
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    frame.insert(2, "species", np.array(["ash", "birch", "cedar"])[y])
    frame.to_csv(workdir / "trees.csv", index=False)
    result = run("grid", "--data", "trees.csv", "--target", "species", *TINY)
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
    result = run("grid", "--data", "r.npz", *TINY)
    assert result.exit_code == 0, result.output
    assert "Best: val loss" in result.stdout


def rows(n: int, label=lambda i: i % 2, feature=lambda i: i) -> str:
    """A CSV of n rows: one feature column 'a' and the label column 'y'."""
    return "a,y\n" + "".join(f"{feature(i)},{label(i)}\n" for i in range(n))


def xs(n: int = 20, width: int = 2) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, width))


def alternating(n: int = 20) -> np.ndarray:
    return np.arange(n) % 2


def with_nan(array: np.ndarray, *index: int) -> np.ndarray:
    array = array.astype(float)
    array[list(index)] = np.nan
    return array


# Every bad data file: the file (arrays of an .npz, or a CSV's text), extra options, and the message.
BAD_FILES = {
    "npz without x_train": ({"x": xs(), "y_train": alternating()}, [], "has no x_train and y_train arrays"),
    "text features": ({"x_train": np.array([["a", "b"]] * 20), "y_train": alternating()}, [],
                      "bad.npz: x_train holds text (dtype <U1); it must hold numbers"),
    "object features": ({"x_train": np.array([[1, "a"]] * 20, dtype=object), "y_train": alternating()}, [],
                        "bad.npz: x_train holds Python objects (dtype object)"),
    "object labels": ({"x_train": xs(), "y_train": np.array([0, None] * 10, dtype=object)}, [],
                      "bad.npz: y_train holds Python objects (dtype object)"),
    "empty features": ({"x_train": np.zeros((0, 2)), "y_train": np.zeros(0, dtype=int)}, [],
                       "bad.npz: x_train is empty (shape (0, 2)); give at least 2 rows"),
    "text labels in an npz": ({"x_train": xs(), "y_train": np.array(["ash", "elm"] * 10)}, [],
                              "bad.npz: y_train holds text (dtype <U3); it must hold numbers"),
    "complex features": ({"x_train": xs() + 1j, "y_train": alternating()}, [], "x_train holds complex numbers"),
    "one number": ({"x_train": np.float64(3), "y_train": alternating()}, [], "x_train is a single value"),
    "1-D features": ({"x_train": xs(20, 1).ravel(), "y_train": alternating()}, [],
                     "x_train has shape (20,); inputs need a shape (N, features, ...) (x.reshape(-1, 1) for one feature)"),
    "no feature": ({"x_train": np.zeros((20, 0)), "y_train": alternating()}, [], "x_train has no features (shape (20, 0))"),
    "NaN in the features": ({"x_train": with_nan(xs(), *range(1, 20, 2)), "y_train": alternating()}, [],
                            "x_train has NaN or infinite values at indices 1, 3, 5, 7, 9 and 5 more; fill them in"),
    "infinity in x_val": ({"x_train": xs(), "y_train": alternating(), "x_val": xs(4) * np.array([1, np.inf]),
                           "y_val": alternating(4)}, [], "x_val has NaN or infinite values at indices 0, 1, 2, 3"),
    "a missing label": ({"x_train": xs(), "y_train": with_nan(alternating(), 19)}, [],
                        "y_train has NaN or infinite values at index 19; fill them in or drop those rows"),
    "a missing class label, kind told": ({"x_train": xs(), "y_train": with_nan(alternating(), 4)},
                                         ["--kind", "classification"], "y_train has NaN or infinite values at index 4"),
    "lengths differ": ({"x_train": xs(10), "y_train": alternating(9)}, [],
                       "x_train and y_train differ in length (10 and 9); give one target per input"),
    "negative labels": ({"x_train": xs(10), "y_train": np.arange(10) - 1}, [],
                        "y_train must hold class labels 0..8 for 9 classes; found -1"),
    "fractional class labels": ({"x_train": xs(), "y_train": alternating() / 2}, ["--kind", "classification"],
                                "class labels must be whole numbers"),
    "labels that count": ({"x_train": xs(), "y_train": np.arange(20) * 1000}, [],
                          "labels go up to 19000, that is 19001 classes for 20 examples; number the classes 0..C-1"),
    "2-D class labels": ({"x_train": xs(), "y_train": alternating().reshape(-1, 1)}, [],
                         "y_train has shape (20, 1); class labels need shape (N,)"),
    "one class in an npz": ({"x_train": xs(), "y_train": np.ones(20, dtype=int)}, [],
                            "only one class in the labels of y_train: nothing to learn"),
    "a given split too small": ({"x_train": xs(), "y_train": alternating(), "x_val": xs(1), "y_val": np.array([1])}, [],
                                "the validation split holds 1 row (x_val); each split needs at least 2: add rows to it"),
    "too few rows to carve from": ({"x_train": xs(6), "y_train": alternating(6)}, [],
                                   "the validation split holds 0 rows after carving 20% for each missing split "
                                   "(training 4, validation 0, test 2); each split needs at least 2: add rows or give "
                                   "x_val/y_val and x_test/y_test in bad.npz"),
    "three CSV rows": ("a,y\n1,0\n2,1\n3,0\n", [],
                       "bad.csv: the validation split holds 0 rows after carving 20% for each missing split "
                       "(training 3, validation 0, test 0); each split needs at least 2: add rows"),
    "no feature column": ("y\n" + "0\n1\n" * 10, [],
                          "bad.csv has no feature column: every column but the target 'y' is a feature"),
    "a header without rows": ("a,y\n", [], "bad.csv has a header but no rows of data"),
    "a text label missing": (rows(40, lambda i: "" if i == 5 else ["cat", "dog"][i % 2]), [],
                             "bad.csv: column 'y' has no value on line 7; fill them in or drop those lines"),
    "numeric labels missing": (rows(40, lambda i: "" if i in (3, 9) else i % 2), [],
                               "bad.csv: column 'y' has no value on lines 5, 11"),
    "a feature missing": (rows(40, feature=lambda i: "" if i == 4 else i), [], "column 'a' has no value on line 6"),
    "one class in a CSV": (rows(40, lambda i: 1), [], "only one class in the labels of column 'y': nothing to learn"),
    "one text class": (rows(40, lambda i: "cat"), [], "only one class in the labels of column 'y': nothing to learn"),
    "text feature": (rows(40, feature=lambda i: f"n{i}"), [], "column 'a' is not numeric; features must be numbers"),
    "numbers that are not classes": (rows(40, lambda i: 7 * i), [], "labels go up to 273, that is 274 classes"),
}


def write_bad(folder, case: str) -> list[str]:
    """The bad file of ``case`` in ``folder``, and the options that name it."""
    content, extra, _ = BAD_FILES[case]
    if isinstance(content, str):
        (folder / "bad.csv").write_text(content)
        return ["--data", "bad.csv", "--target", "y", *extra]
    np.savez(folder / "bad.npz", **content)
    return ["--data", "bad.npz", *extra]


@pytest.mark.parametrize("command", ["grid", "check"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_data_file_is_one_line_and_exit_2(workdir, case, command):
    args = write_bad(workdir, case)
    result = run(command, *args, *(TINY if command == "grid" else []))
    assert result.exit_code == 2, result.output
    error = result.stderr.strip().splitlines()[-1]  # after a note that splits were carved, if any
    assert error.startswith("Error: ") and BAD_FILES[case][2] in error, result.stderr
    assert not any(line.startswith("Error") for line in result.stderr.splitlines()[:-1])
    assert not (workdir / "studies").exists()  # nothing recorded (a 3-row CSV was once a "diverged" trial)


@pytest.mark.parametrize("name, labels", [("npz", np.arange(150) % 3 == 0), ("csv", np.array(["False", "True"] * 75))])
def test_boolean_labels_are_classes_0_and_1(workdir, name, labels):
    x, _ = blobs()
    if name == "npz":
        np.savez(workdir / "b.npz", x_train=x, y_train=labels)
        args = ["--data", "b.npz"]
    else:
        pd.DataFrame(x, columns=["a", "b", "c", "d"]).assign(y=labels).to_csv(workdir / "b.csv", index=False)
        args = ["--data", "b.csv", "--target", "y"]
    task = load_task(args[1], *args[3:])
    assert task.kind == "classification" and task.num_classes == 2
    assert set(torch.cat([task.train[1], task.val[1], task.test[1]]).tolist()) == {0, 1}
    result = run("grid", *args, *TINY)
    assert result.exit_code == 0 and "Best: val acc" in result.stdout, result.output


@pytest.mark.parametrize("missing", [[2], [1, 2]])
def test_a_validation_split_without_some_class_is_noted(tmp_path, caplog, missing):
    caplog.set_level(logging.WARNING, logger="hpsearch")
    x, y = blobs()
    kept = [c for c in range(3) if c not in missing]
    y_val = np.array(kept * 4)
    np.savez(tmp_path / f"v{len(missing)}.npz", x_train=x, y_train=y, x_val=x[:len(y_val)], y_val=y_val)
    load_task(str(tmp_path / f"v{len(missing)}.npz"))
    notes = [r.getMessage() for r in caplog.records if "has no example" in r.getMessage()]
    listed = ", ".join(map(str, missing))
    assert len(notes) == 1 and f"the validation split has no example of class{'es' * (len(missing) > 1)} {listed}," in notes[0]


@pytest.mark.parametrize("args, message", [
    (["--data", "missing.npz"], "data file missing.npz not found"),
    (["--data", "d.csv"], "name the label column with --target COLUMN"),
    (["--data", "d.csv", "--target", "nope"], "has no column 'nope' (columns: a, label)"),
    (["--data", "d.txt"], "give a .npz or .csv file"),
    (["--data", "d.csv", "--target", "label", "--task", "digits"], "give --task or --data, not both"),
])
def test_data_options_are_checked(workdir, args, message):
    (workdir / "d.csv").write_text("a,label\n1,0\n2,1\n")
    result = run("grid", *args, *TINY)
    assert result.exit_code == 2 and message in result.stderr, result.output
