"""Users' own tasks: a plug-in task function or a data file, checked and completed.

Plug-in: ``--task path/to/file.py:NAME`` or ``--task package.module:NAME`` names a function that
takes no arguments and returns an ``hpsearch.Task`` (see tasks.Task for every field).

Data file: ``--data FILE.npz`` (arrays ``x_train``, ``y_train``, optional ``x_val``/``y_val``
and ``x_test``/``y_test``) or ``--data FILE.csv --target COLUMN`` (every other column is a
numeric feature). Inputs are flattened and standardised with the training split's mean and
standard deviation only; the model is an MLP sized from the data. The kind follows the targets
unless ``--kind`` says otherwise: integer (or, in a CSV, text) targets are classes, floating-point
targets are regression.

Either way a missing validation (or test) split is carved out of the training data: 20% of it
each, stratified by class for classification, with seed 0; hpsearch says so once on stderr.
Every problem is one BadInput line naming it.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

from hpsearch.errors import BadInput, HpsearchError
from hpsearch.spec import DATA_SUFFIXES, task_reference
from hpsearch.tasks import KINDS, Split, Task, carve, mlp, note_once
from hpsearch.train import require_trainable

CARVED = 0.2  # the share of the given training data carved out for each missing split


def load_user_task(ref: str, target: str | None = None, kind: str | None = None) -> Task:
    """A plug-in or data-file task, checked, with every split present."""
    task_reference(ref, None, target, kind)  # the syntax, with the same messages as the command line
    if ref.endswith(DATA_SUFFIXES):
        return _standardised(_completed(_checked(data_task(Path(ref), target, kind), ref), ref))
    return _completed(_checked(plugin_task(ref), ref), ref)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _module(where: str) -> ModuleType:
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise BadInput(f"task file {where} not found")
        folder = str(path.resolve().parent)
        if folder not in sys.path:  # as when Python runs the file: it may import its neighbours
            sys.path.insert(0, folder)
        name = "hpsearch_task_" + re.sub(r"\W", "_", str(path.resolve()))
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look a class's module up here
        try:
            spec.loader.exec_module(module)
        except Exception as error:  # noqa: BLE001 - the user's code or file may raise anything
            del sys.modules[name]
            raise BadInput(f"cannot import task file {where}: {_first_line(error)}") from None
        return module
    if os.getcwd() not in sys.path:  # the hpsearch script does not look in the current folder by itself
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as error:
        if error.name and where.startswith(error.name):
            raise BadInput(f"no module named '{where}' here or on the Python path") from None
        raise BadInput(f"cannot import {where}: {_first_line(error)}") from None
    except Exception as error:  # noqa: BLE001 - the user's code or file may raise anything
        raise BadInput(f"cannot import {where}: {_first_line(error)}") from None


def plugin_task(ref: str) -> Task:
    """Call the task function ``ref`` names; its result must be a Task."""
    where, _, name = ref.rpartition(":")
    module = _module(where)
    function = getattr(module, name, None)
    if function is None:
        defined = [n for n, v in vars(module).items()
                   if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__]
        hint = f" (it defines: {', '.join(defined)})" if defined else ""
        raise BadInput(f"{where} has no function '{name}'{hint}")
    if not callable(function):
        raise BadInput(f"{ref} is a {type(function).__name__}, not a function returning an hpsearch.Task")
    try:
        task = function()
    except HpsearchError:
        raise
    except Exception as error:  # noqa: BLE001 - the user's code or file may raise anything
        raise BadInput(f"task function {ref} raised {_first_line(error)}") from None
    if not isinstance(task, Task):
        raise BadInput(f"task function {ref} returned {type(task).__name__}, not an hpsearch.Task")
    return task


def _check_split(where: str, name: str, split: object, task: Task) -> Split:
    """One split as the trainer needs it: float32 inputs; int64 labels or float32 (N, outputs) targets."""
    if not (isinstance(split, (tuple, list)) and len(split) == 2 and all(isinstance(t, torch.Tensor) for t in split)):
        raise BadInput(f"{where}: {name} must be a pair (inputs, targets) of torch tensors")
    x, y = split
    if len(x) != len(y):
        raise BadInput(f"{where}: {name} has {len(x)} inputs but {len(y)} targets")
    if len(x) == 0:
        raise BadInput(f"{where}: {name} is empty")
    if not x.is_floating_point():
        raise BadInput(f"{where}: {name} inputs must be floating point, not {x.dtype} (use .float())")
    if not torch.isfinite(x).all():
        raise BadInput(f"{where}: {name} inputs contain NaN or infinite values")
    classes = task.num_classes
    if task.kind == "regression":
        y = y.float()
        if not torch.isfinite(y).all():
            raise BadInput(f"{where}: {name} targets contain NaN or infinite values")
        if y.dim() == 1:
            y = y.unsqueeze(1)
        if y.shape[1:] != (classes,):
            raise BadInput(f"{where}: {name} targets have shape {tuple(y.shape)}; expected (N,) or (N, {classes})")
        return x.float(), y
    if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise BadInput(f"{where}: {name} labels must be integers of shape (N,), not {y.dtype} {tuple(y.shape)}")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        found = low if low < 0 else high
        raise BadInput(f"{where}: {name} labels must be in [0, {classes}) for {classes} classes; found {found}")
    return x.float(), y.long()


def _checked(task: Task, where: str) -> Task:
    """The task's splits normalised and its model tried once, or a BadInput naming the problem."""
    if task.kind not in KINDS:
        raise BadInput(f"{where}: kind must be one of {', '.join(KINDS)}, not {task.kind!r}")
    if not isinstance(task.num_classes, int) or task.num_classes < 1:
        raise BadInput(f"{where}: num_classes must be a positive integer, not {task.num_classes!r}")
    splits = {name: _check_split(where, name, getattr(task, name), task)
              for name in ("train", "val", "test") if getattr(task, name) is not None}
    if "train" not in splits:
        raise BadInput(f"{where}: a task needs its train split")
    if not callable(task.make_model):
        raise BadInput(f"{where}: make_model must be a function returning a fresh torch.nn.Module")
    try:
        model = task.make_model()
    except Exception as error:  # noqa: BLE001 - the user's code or file may raise anything
        raise BadInput(f"{where}: make_model() raised {_first_line(error)}") from None
    if not isinstance(model, nn.Module):
        raise BadInput(f"{where}: make_model() returned {type(model).__name__}, not a torch.nn.Module")
    require_trainable(model, where)
    x = splits["train"][0][:2]
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as error:  # noqa: BLE001 - the user's code or file may raise anything
        raise BadInput(f"{where}: the model fails on 2 training inputs of shape {tuple(x.shape)}: "
                       f"{_first_line(error)}") from None
    wanted = (len(x), task.num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != wanted:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        what = "classes" if task.kind == "classification" else "outputs"
        raise BadInput(f"{where}: the model's output for 2 inputs is {shape}, but the task has "
                       f"{task.num_classes} {what}: it must be {wanted}")
    return replace(task, **splits)


def _completed(task: Task, where: str) -> Task:
    """Carve the missing validation and test splits out of the training data, saying so once."""
    missing = [name for name in ("test", "val") if getattr(task, name) is None]
    if not missing:
        return task
    x, y = task.train
    stratified = task.kind == "classification"
    labels = y.numpy() if stratified else np.zeros(len(y))
    index = np.arange(len(y))
    carved = {}
    for k, name in enumerate(missing):  # 20% of the given data each: the second takes 1/4 of the remaining 80%
        keep, out = carve(labels[index], CARVED / (1 - CARVED * k), stratified)
        carved[name] = (x[index[out]], y[index[out]])
        index = index[keep]
    what = " and ".join({"val": "validation", "test": "test"}[name] for name in reversed(missing))
    how = "stratified " if stratified else ""
    both = len(missing) > 1
    note_once(f"note: {where} gives no {what} split{'s' * both}; hpsearch carved {'them' if both else 'it'} "
              f"from the training data ({how}{CARVED:.0%}{' each' * both}, seed 0)")
    return replace(task, train=(x[index], y[index]), **carved)


def _standardised(task: Task) -> Task:
    """Features scaled with the training split's statistics only (no peeking at validation or test)."""
    x = task.train[0]
    mean, std = x.mean(0), x.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))

    def scale(split: Split | None) -> Split | None:
        return None if split is None else ((split[0] - mean) / std, split[1])

    return replace(task, train=scale(task.train), val=scale(task.val), test=scale(task.test))


def default_mlp(inputs: int, outputs: int) -> Callable[[], nn.Module]:
    """One hidden ReLU layer of twice as many units as inputs, between 32 and 256."""
    return mlp(inputs, min(256, max(32, 2 * inputs)), outputs)


def _arrays(path: Path, target: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The (inputs, targets) arrays of each split a data file holds; CSV text labels become codes."""
    if not path.is_file():
        raise BadInput(f"data file {path} not found")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except Exception as error:  # noqa: BLE001 - the user's code or file may raise anything
            raise BadInput(f"cannot read {path}: {_first_line(error)}") from None
        if "x_train" not in arrays or "y_train" not in arrays:
            raise BadInput(f"{path} has no x_train and y_train arrays (it has: {', '.join(arrays) or 'none'})")
        for name in ("val", "test"):
            if (f"x_{name}" in arrays) != (f"y_{name}" in arrays):
                raise BadInput(f"{path} has only one of x_{name} and y_{name}; give both or neither")
        return {name: (arrays[f"x_{name}"], arrays[f"y_{name}"]) for name in ("train", "val", "test")
                if f"x_{name}" in arrays}
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except Exception as error:  # noqa: BLE001 - the user's code or file may raise anything
        raise BadInput(f"cannot read {path}: {_first_line(error)}") from None
    if target not in frame.columns:
        raise BadInput(f"{path} has no column '{target}' (columns: {', '.join(map(str, frame.columns))})")
    features = frame.drop(columns=[target])
    text = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if text:
        raise BadInput(f"{path}: column '{text[0]}' is not numeric; features must be numbers")
    labels = frame[target]
    if not pd.api.types.is_numeric_dtype(labels):
        labels = pd.Series(pd.factorize(labels, sort=True)[0])
    return {"train": (features.to_numpy(np.float32), labels.to_numpy())}


def data_task(path: Path, target: str | None, kind: str | None) -> Task:
    """A task from a data file, with the default MLP; not yet checked, completed or standardised."""
    arrays = _arrays(path, target)
    y_all = np.concatenate([y.reshape(len(y), -1) for _, y in arrays.values()])
    kind = kind or ("regression" if np.issubdtype(y_all.dtype, np.floating) else "classification")
    if kind == "classification":
        whole = np.issubdtype(y_all.dtype, np.number) and np.all(np.isfinite(y_all)) and np.all(y_all == np.round(y_all))
        if not whole:
            raise BadInput(f"{path}: class labels must be whole numbers (give --kind regression for numeric targets)")
        outputs = int(y_all.max()) + 1
    else:
        outputs = y_all.shape[1]
    splits = {}
    for name, (x, y) in arrays.items():
        if len(x) != len(y):
            raise BadInput(f"{path}: {name} has {len(x)} inputs but {len(y)} targets")
        targets = torch.tensor(np.asarray(y, dtype=np.int64 if kind == "classification" else np.float32))
        splits[name] = (torch.tensor(np.asarray(x, dtype=np.float32).reshape(len(x), -1)), targets)
    features = splits["train"][0].shape[1]
    return Task(path.stem, default_mlp(features, outputs), splits["train"], splits.get("val"), splits.get("test"),
                outputs, kind)
