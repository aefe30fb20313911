"""Users' own tasks: a plug-in task function or a data file, checked and completed.

Plug-in: ``--task path/to/file.py:NAME`` or ``--task package.module:NAME`` names a function that
takes no arguments and returns an ``hpsearch.Task`` (see tasks.Task for every field).

Data file: ``--data FILE.npz`` (arrays ``x_train``, ``y_train``, optional ``x_val``/``y_val``
and ``x_test``/``y_test``) or ``--data FILE.csv --target COLUMN`` (every other column is a
numeric feature). Inputs are flattened and standardised with the training split's mean and
standard deviation only; the model is an MLP sized from the data. The kind follows the targets
unless ``--kind`` says otherwise: integer, boolean (False 0, True 1) or, in a CSV, text targets
are classes, floating-point targets are regression.

Either way a missing validation (or test) split is carved out of the training data: 20% of it
each, stratified by class for classification, with seed 0; hpsearch says so once on stderr.
Every array is checked before anything trains (numbers, one row per example, finite, labels
0..C-1 with at least two classes, at least MIN_ROWS rows per split after carving); every
problem is one BadInput line naming the file, the array and the fix.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hpsearch.errors import BadInput, listed
from hpsearch.spec import DATA_SUFFIXES, task_reference
from hpsearch.tasks.code import first_line as _first_line
from hpsearch.tasks.code import module as _module
from hpsearch.tasks.code import user_code as _user_code
from hpsearch.tasks.task import KINDS, Split, Task, carve, mlp, note_once, require_trainable


CARVED = 0.2  # the share of the given training data carved out for each missing split
MIN_ROWS = 2  # per split, after carving: fewer has no spread to standardise with and nothing to rank on
SHOWN = 5  # rows or classes a message names before "and N more"
SPLITS = {"train": "training", "val": "validation", "test": "test"}


def load_user_task(ref: str, target: str | None = None, kind: str | None = None) -> Task:
    """A plug-in or data-file task, checked, with every split present."""
    task_reference(ref, None, target, kind)  # the syntax, with the same messages as the command line
    if ref.endswith(DATA_SUFFIXES):
        source = Source(ref, Path(ref).suffix.lstrip("."), target)
        return _standardised(_completed(_checked(data_task(Path(ref), target, kind), source), source))
    source = Source(ref, "task")
    return _completed(_checked(plugin_task(ref), source), source)


@dataclass(frozen=True)
class Source:
    """Where a task's arrays come from, so that a message names them as the user wrote them."""

    where: str  # the reference or file, first in every message
    form: str  # "task" (a plug-in's tensors), "npz" or "csv"
    target: str | None = None  # a CSV's label column

    def inputs(self, split: str) -> str:
        return {"npz": f"x_{split}", "csv": "the feature columns"}.get(self.form, f"Task.{split}[0]")

    def targets(self, split: str) -> str:
        return {"npz": f"y_{split}", "csv": f"column '{self.target}'"}.get(self.form, f"Task.{split}[1]")

    def rows(self, index: Sequence[int]) -> str:
        """Rows as the user finds them: a CSV's line numbers (the header is line 1), else array indices."""
        several = len(index) > 1
        if self.form == "csv":
            return f"on line{'s' * several} {listed([i + 2 for i in index], SHOWN)}"
        return f"at {'indices' if several else 'index'} {listed(list(index), SHOWN)}"

    def give(self, splits: Sequence[str]) -> str:
        """How to give these splits instead of having them carved ("" for a CSV: it holds one split)."""
        if self.form == "npz":
            return " or give " + " and ".join(f"x_{s}/y_{s}" for s in splits) + f" in {self.where}"
        if self.form == "task":
            return " or return the " + " and ".join(splits) + " split" + "s" * (len(splits) > 1) + " in the Task"
        return ""


def _not_a_task_function(thing: object) -> str | None:
    """What ``thing`` is, if it is not a Python function hpsearch can call with no arguments; else None."""
    if inspect.isclass(thing):
        return "is a class"
    if inspect.isbuiltin(thing) or type(thing).__name__ in ("method-wrapper", "wrapper_descriptor"):
        return "is a built-in function"
    if not (inspect.isfunction(thing) or inspect.ismethod(thing)):
        return f"is a value of type {type(thing).__name__}"
    try:
        inspect.signature(thing).bind()
    except TypeError:
        return "takes arguments (hpsearch calls it with none)"
    return None


def plugin_task(ref: str) -> Task:
    """Call the task function ``ref`` names (a Python function, no arguments); its result must be a Task."""
    where, _, name = ref.rpartition(":")
    module = _module(where)
    if not hasattr(module, name):
        defined = [n for n, v in vars(module).items()
                   if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__]
        hint = f" (it defines: {', '.join(defined)})" if defined else ""
        raise BadInput(f"{where} has no function '{name}'{hint}")
    function = getattr(module, name)
    problem = _not_a_task_function(function)
    if problem:
        raise BadInput(f"{ref} {problem}: name a function defined as def {name}(): ... return hpsearch.Task(...)")
    task = _user_code(function, f"task function {ref}")
    if not isinstance(task, Task):
        raise BadInput(f"task function {ref} returned {type(task).__name__}, not an hpsearch.Task")
    return task


def _check_arrays(source: Source, split: str, x: torch.Tensor, y: torch.Tensor) -> None:
    """What a split's arrays need whatever the task's kind: one row per example, rows, features, finite values."""
    where, xs, ys = source.where, source.inputs(split), source.targets(split)
    for array, what in ((x, xs), (y, ys)):
        if array.ndim == 0:
            raise BadInput(f"{where}: {what} is a single value; give one row per example")
        if array.is_complex():
            raise BadInput(f"{where}: {what} holds complex numbers; give real numbers")
    if len(x) != len(y):
        raise BadInput(f"{where}: {xs} and {ys} differ in length ({len(x)} and {len(y)}); give one target per input")
    if len(x) == 0:
        raise BadInput(f"{where}: {xs} is empty (shape {tuple(x.shape)}); give at least {MIN_ROWS} rows")
    if x.ndim < 2:
        raise BadInput(f"{where}: {xs} has shape {tuple(x.shape)}; inputs need a shape (N, features, ...) "
                       "(x.reshape(-1, 1) for one feature)")
    if x[0].numel() == 0:
        raise BadInput(f"{where}: {xs} has no features (shape {tuple(x.shape)})")
    if y.ndim > 2:
        raise BadInput(f"{where}: {ys} has shape {tuple(y.shape)}; targets need (N,), or (N, outputs) for regression")
    for array, what in ((x, xs), (y, ys)):
        if array.is_floating_point():
            bad = ~torch.isfinite(array.reshape(len(array), -1)).all(1)
            if bad.any():
                raise BadInput(f"{where}: {what} has NaN or infinite values "
                               f"{source.rows(torch.nonzero(bad).flatten().tolist())}; fill them in or drop those rows")


def _check_split(source: Source, name: str, split: object, task: Task) -> Split:
    """One split as the trainer needs it: float32 inputs; int64 labels or float32 (N, outputs) targets."""
    where, ys = source.where, source.targets(name)
    if not (isinstance(split, (tuple, list)) and len(split) == 2 and all(isinstance(t, torch.Tensor) for t in split)):
        raise BadInput(f"{where}: {name} must be a pair (inputs, targets) of torch tensors")
    x, y = split
    _check_arrays(source, name, x, y)
    if not x.is_floating_point():
        raise BadInput(f"{where}: {source.inputs(name)} must be floating point, not {x.dtype} (use .float())")
    classes = task.num_classes
    if task.kind == "regression":
        y = y.float()
        if y.dim() == 1:
            y = y.unsqueeze(1)
        if y.shape[1:] != (classes,):
            raise BadInput(f"{where}: {ys} has shape {tuple(y.shape)}; expected (N,) or (N, {classes})")
        return x.float(), y
    if y.dtype == torch.bool:  # two classes, False 0 and True 1: what else could boolean labels mean
        y = y.long()
    if y.is_floating_point():
        raise BadInput(f"{where}: {ys} must hold integer class labels, not {y.dtype} (use .long())")
    if y.dim() != 1:
        raise BadInput(f"{where}: {ys} has shape {tuple(y.shape)}; class labels need shape (N,) (flatten it)")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        found = low if low < 0 else high
        raise BadInput(f"{where}: {ys} must hold class labels 0..{classes - 1} for {classes} classes; found {found}")
    if name == "train" and low == high:
        raise BadInput(f"{where}: only one class in the labels of {ys}: nothing to learn; "
                       "a classifier needs examples of at least two classes")
    return x.float(), y.long()


def _checked(task: Task, source: Source) -> Task:
    """The task's splits normalised and its model tried once, or a BadInput naming the problem."""
    where = source.where
    if task.kind not in KINDS:
        raise BadInput(f"{where}: kind must be one of {', '.join(KINDS)}, not {task.kind!r}")
    if not isinstance(task.num_classes, int) or task.num_classes < 1:
        raise BadInput(f"{where}: num_classes must be a positive integer, not {task.num_classes!r}")
    if task.train is None:
        raise BadInput(f"{where}: a task needs its train split")
    splits = {name: _check_split(source, name, getattr(task, name), task)
              for name in SPLITS if getattr(task, name) is not None}
    if not callable(task.make_model):
        raise BadInput(f"{where}: make_model must be a function returning a fresh torch.nn.Module")
    model = _user_code(task.make_model, f"{where}: make_model()")
    if not isinstance(model, nn.Module):
        raise BadInput(f"{where}: make_model() returned {type(model).__name__}, not a torch.nn.Module")
    require_trainable(model, where)
    x = splits["train"][0][:2]
    with torch.no_grad():
        out = _user_code(lambda: model.eval()(x), f"{where}: the model, on 2 training inputs of shape {tuple(x.shape)},")
    wanted = (len(x), task.num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != wanted:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        what = "classes" if task.kind == "classification" else "outputs"
        raise BadInput(f"{where}: the model's output for 2 inputs is {shape}, but the task has "
                       f"{task.num_classes} {what}: it must be {wanted}")
    return replace(task, **splits)


def _completed(task: Task, source: Source) -> Task:
    """Carve the missing validation and test splits out of the training data, saying so once; check their sizes."""
    missing = [name for name in ("test", "val") if getattr(task, name) is None]
    if missing:
        x, y = task.train
        stratified = task.kind == "classification"
        labels = y.numpy() if stratified else np.zeros(len(y))
        index = np.arange(len(y))
        carved = {}
        for k, name in enumerate(missing):  # 20% of the given data each: the second takes 1/4 of the remaining 80%
            keep, out = carve(labels[index], CARVED / (1 - CARVED * k), stratified)
            carved[name] = (x[index[out]], y[index[out]])
            index = index[keep]
        what = " and ".join(SPLITS[name] for name in reversed(missing))
        how = "stratified " if stratified else ""
        both = len(missing) > 1
        note_once(f"note: {source.where} gives no {what} split{'s' * both}; hpsearch carved {'them' if both else 'it'} "
                  f"from the training data ({how}{CARVED:.0%}{' each' * both}, seed 0)")
        task = replace(task, train=(x[index], y[index]), **carved)
    _check_sizes(task, source, missing[::-1])
    if task.kind == "classification":
        _note_missing_classes(task, source)
    return task


def _check_sizes(task: Task, source: Source, carved: Sequence[str]) -> None:
    """Every split holds at least MIN_ROWS rows: an empty validation split ranks nothing (it would read as NaN)."""
    sizes = {name: len(getattr(task, name)[0]) for name in SPLITS}
    for name, size in sizes.items():
        if size >= MIN_ROWS:
            continue
        rows = f"the {SPLITS[name]} split holds {size} row{'s' * (size != 1)}"
        need = f"each split needs at least {MIN_ROWS}"
        if carved and (name == "train" or name in carved):
            counts = ", ".join(f"{SPLITS[k]} {v}" for k, v in sizes.items())
            raise BadInput(f"{source.where}: {rows} after carving {CARVED:.0%} for each missing split ({counts}); "
                           f"{need}: add rows{source.give(carved)}")
        raise BadInput(f"{source.where}: {rows} ({source.inputs(name)}); {need}: add rows to it")


def _note_missing_classes(task: Task, source: Source) -> None:
    """A validation or test split without some class cannot reward learning it: say so (not an error)."""
    present = set(task.train[1].unique().tolist())
    for name in ("val", "test"):
        absent = sorted(present - set(getattr(task, name)[1].unique().tolist()))
        if absent:
            several = len(absent) > 1
            note_once(f"note: {source.where}: the {SPLITS[name]} split has no example of class{'es' * several} "
                      f"{listed(absent, SHOWN)}, which the training split has; its accuracy cannot reward learning "
                      f"{'them' if several else 'it'} (more rows would help)")


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
        arrays: dict[str, np.ndarray] = {}
        try:
            with np.load(path, allow_pickle=False) as npz:  # never unpickle: a data file must not run code
                for key in npz.files:
                    try:
                        arrays[key] = npz[key]
                    except ValueError as error:
                        if "allow_pickle" not in str(error):
                            raise
                        raise BadInput(f"{path}: {key} holds Python objects (dtype object), which hpsearch does not "
                                       "unpickle; save it as numbers, e.g. np.asarray(x, dtype=np.float32)") from None
        except BadInput:
            raise
        except Exception as error:  # noqa: BLE001 - the user's code or file may raise anything
            raise BadInput(f"cannot read {path}: {_first_line(error)}") from None
        if "x_train" not in arrays or "y_train" not in arrays:
            raise BadInput(f"{path} has no x_train and y_train arrays (it has: {', '.join(arrays) or 'none'})")
        for name in ("val", "test"):
            if (f"x_{name}" in arrays) != (f"y_{name}" in arrays):
                raise BadInput(f"{path} has only one of x_{name} and y_{name}; give both or neither")
        return {name: (arrays[f"x_{name}"], arrays[f"y_{name}"]) for name in SPLITS if f"x_{name}" in arrays}
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except Exception as error:  # noqa: BLE001 - the user's code or file may raise anything
        raise BadInput(f"cannot read {path}: {_first_line(error)}") from None
    if target not in frame.columns:
        raise BadInput(f"{path} has no column '{target}' (columns: {', '.join(map(str, frame.columns))})")
    if frame.empty:
        raise BadInput(f"{path} has a header but no rows of data")
    features = frame.drop(columns=[target])
    if features.columns.empty:
        raise BadInput(f"{path} has no feature column: every column but the target '{target}' is a feature")
    text = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if text:
        raise BadInput(f"{path}: column '{text[0]}' is not numeric; features must be numbers (encode it or drop it)")
    source = Source(str(path), "csv", target)
    for column in [target, *features.columns]:  # before text labels become codes, where a missing one is -1
        missing = np.flatnonzero(frame[column].isna().to_numpy())
        if len(missing):
            raise BadInput(f"{path}: column '{column}' has no value {source.rows(missing.tolist())}; "
                           "fill them in or drop those lines")
    labels = frame[target]
    if not pd.api.types.is_numeric_dtype(labels):  # booleans are numeric here: False 0, True 1
        labels = pd.Series(pd.factorize(labels, sort=True)[0])
    return {"train": (features.to_numpy(np.float32), labels.to_numpy())}


def _tensor(source: Source, what: str, array: np.ndarray) -> torch.Tensor:
    """An array of numbers as a tensor (booleans and integers int64, floats float32), or a BadInput naming it."""
    kind = array.dtype.kind
    if kind in "biu":
        return torch.tensor(np.asarray(array, np.int64))
    if kind == "f":
        return torch.tensor(np.asarray(array, np.float32))
    held = {"U": "text", "S": "bytes", "O": "Python objects", "c": "complex numbers", "M": "dates",
            "m": "time spans", "V": "records"}.get(kind, "values")
    raise BadInput(f"{source.where}: {what} holds {held} (dtype {array.dtype}); it must hold numbers")


def data_task(path: Path, target: str | None, kind: str | None) -> Task:
    """A task from a data file, with the default MLP; checked array by array, not yet completed or standardised."""
    source = Source(str(path), path.suffix.lstrip("."), target)
    splits = {}
    for name, (x, y) in _arrays(path, target).items():
        x, y = _tensor(source, source.inputs(name), x), _tensor(source, source.targets(name), y)
        _check_arrays(source, name, x, y)
        splits[name] = (x.float().flatten(1), y)
    widths = {name: y.reshape(len(y), -1).shape[1] for name, (_, y) in splits.items()}
    if len(set(widths.values())) > 1:
        raise BadInput(f"{path}: the splits' targets differ in width ({', '.join(f'{k} {v}' for k, v in widths.items())})")
    y_all = torch.cat([y.reshape(len(y), -1).double() for _, y in splits.values()])
    floats = any(y.is_floating_point() for _, y in splits.values())
    kind = kind or ("regression" if floats else "classification")
    if kind == "classification":
        if not torch.equal(y_all, y_all.round()):
            raise BadInput(f"{path}: class labels must be whole numbers (give --kind regression for numeric targets)")
        outputs = int(y_all.max()) + 1
        if outputs > len(y_all):  # labels that count something, not classes numbered 0..C-1
            raise BadInput(f"{path}: labels go up to {outputs - 1}, that is {outputs} classes for {len(y_all)} "
                           "examples; number the classes 0..C-1, or give --kind regression for numeric targets")
        splits = {name: (x, y.long()) for name, (x, y) in splits.items()}
    else:
        outputs = widths["train"]
        splits = {name: (x, y.float()) for name, (x, y) in splits.items()}
    features = splits["train"][0].shape[1]
    return Task(path.stem, default_mlp(features, outputs), splits["train"], splits.get("val"), splits.get("test"),
                outputs, kind)
