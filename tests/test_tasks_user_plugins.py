"""Plug-in tasks (--task FILE.py:NAME, package.module:NAME): loading, carving, and one-line errors."""
from __future__ import annotations

import logging

import pytest
import torch

from hpsearch.errors import BadInput
from hpsearch.tasks.builtin import load_task

from helpers import ROOT, run, tiny

HEADER = '''
import torch
from torch import nn
from hpsearch import Task

g = torch.Generator().manual_seed(0)
x = torch.randn(100, 5, generator=g)
y = (x[:, 0] > 0).long()
model = lambda: nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
'''
GOOD = HEADER + '''
def make():
    return Task("toy", model, (x[:60], y[:60]), (x[60:80], y[60:80]), (x[80:], y[80:]), 2)

def train_only():
    return Task("toy", model, (x, y), None, None, 2)
'''
TINY = tiny(lr="0.1", weight_decay="0", batch_size="16,32")  # 2 trials


def write(folder, text: str, name: str = "task.py") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def test_a_task_file_runs_through_grid_with_its_function_name_as_study(workdir):
    result = run("grid", "--task", write(workdir, GOOD) + ":make", *TINY)
    assert result.exit_code == 0, result.output
    assert "Trained 2 trials" in result.stdout and "make-grid" in result.stdout


def test_a_module_task_is_found_from_the_current_folder(workdir):
    (workdir / "mytasks").mkdir()
    (workdir / "mytasks" / "__init__.py").write_text("")
    write(workdir / "mytasks", GOOD, "toy_plugin_module.py")
    result = run("grid", "--task", "mytasks.toy_plugin_module:make", "--study", "m", *TINY)
    assert result.exit_code == 0, result.output
    assert "Trained 2 trials" in result.stdout


def test_missing_splits_are_carved_stratified_and_said_once(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="hpsearch")
    ref = write(tmp_path, GOOD) + ":train_only"
    task = load_task(ref)
    load_task(ref)
    assert [len(s[0]) for s in (task.train, task.val, task.test)] == [60, 20, 20]
    for x, y in (task.val, task.test):
        assert 8 <= int(y.sum()) <= 12  # about half of each class, as in the 100 examples
    notes = [r.getMessage() for r in caplog.records if "carved" in r.getMessage()]
    assert len(notes) == 1 and "no validation and test splits" in notes[0] and "stratified 20% each, seed 0" in notes[0]


BROKEN = {
    "file missing": (None, "task file {folder}/nowhere.py not found"),
    "function missing": (GOOD.replace("def make", "def other"), "has no function 'make' (it defines: model, other, train_only)"),
    "wrong return type": (HEADER + "def make():\n    return (model, x, y)\n", "returned tuple, not an hpsearch.Task"),
    "lengths differ": (HEADER + "def make():\n    return Task('t', model, (x, y[:90]), None, None, 2)\n",
                       "Task.train[0] and Task.train[1] differ in length (100 and 90); give one target per input"),
    "labels out of range": (HEADER + "def make():\n    return Task('t', model, (x, y + 1), None, None, 2)\n",
                            "Task.train[1] must hold class labels 0..1 for 2 classes; found 2"),
    "NaN inputs": (HEADER + "def make():\n    x[3, 1] = float('nan')\n    return Task('t', model, (x, y), None, None, 2)\n",
                   "Task.train[0] has NaN or infinite values at index 3; fill them in or drop those rows"),
    "output size": (HEADER + "def make():\n    return Task('t', model, (x, y), None, None, 3)\n",
                    "the model's output for 2 inputs is (2, 2), but the task has 3 classes: it must be (2, 3)"),
    "import error": ("import not_a_module_anywhere\n", "import_error.py raised ModuleNotFoundError: No module named 'not_a_module_anywhere' while being imported"),
    "raises": (HEADER + "def make():\n    raise OSError('data.bin is missing')\n",
               "raised OSError: data.bin is missing"),
    "exits 0 on import": ("import sys\nsys.exit(0)\n",
                          "exits_0_on_import.py called sys.exit(0) while being imported; a task must return its Task"),
    "exits 3 on import": ("import sys\nsys.exit(3)\n", "exits_3_on_import.py called sys.exit(3) while being imported"),
    "raises SystemExit": ("raise SystemExit('no data here')\n", "called sys.exit('no data here') while being imported"),
    "exits when called": ("import sys\ndef make():\n    sys.exit(4)\n", "task function {folder}/exits_when_called.py:make called sys.exit(4)"),
    "make_model exits": (HEADER + "import sys\ndef make():\n    return Task('t', lambda: sys.exit(5), (x, y), None, None, 2)\n",
                         "make_model() called sys.exit(5)"),
    "the model fails": (HEADER + "def make():\n    return Task('t', lambda: nn.Linear(4, 2), (x, y), None, None, 2)\n",
                        "the model, on 2 training inputs of shape (2, 5), raised RuntimeError: mat1 and mat2 shapes"),
    "the model exits": (HEADER + "import sys\nclass Quits(nn.Linear):\n    def forward(self, x):\n        sys.exit(6)\n"
                        "def make():\n    return Task('t', lambda: Quits(5, 2), (x, y), None, None, 2)\n",
                        "the model, on 2 training inputs of shape (2, 5), called sys.exit(6)"),
    "a class": ("class make:\n    pass\n", "make_class.py:make is a class: name a function defined as def make(): ..."),
    "a value": ("make = 3\n", "a_value.py:make is a value of type int"),
    "arguments": (HEADER + "def make(size):\n    return Task('t', model, (x, y), None, None, 2)\n",
                  "takes arguments (hpsearch calls it with none)"),
    "returns text": ("def make():\n    return 'toy'\n", "returned str, not an hpsearch.Task"),
    "one class": (HEADER + "def make():\n    return Task('t', model, (x, y * 0), None, None, 2)\n",
                  "only one class in the labels of Task.train[1]: nothing to learn"),
    "float labels": (HEADER + "def make():\n    return Task('t', model, (x, y.float()), None, None, 2)\n",
                     "Task.train[1] must hold integer class labels, not torch.float32 (use .long())"),
    "1-D inputs": (HEADER + "def make():\n    return Task('t', model, (x[:, 0], y), None, None, 2)\n",
                   "Task.train[0] has shape (100,); inputs need a shape (N, features, ...)"),
    "too few rows": (HEADER + "def make():\n    return Task('t', model, (x[:6], y[:6]), None, None, 2)\n",
                     "after carving 20% for each missing split (training 4, validation 0, test 2); each split needs "
                     "at least 2: add rows or return the val and test splits in the Task"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_bad_plugin_is_one_line_and_exit_2(workdir, case):
    text, message = BROKEN[case]
    ref = (str(workdir / "nowhere.py") if text is None else write(workdir, text, f"{case.replace(' ', '_')}.py")) + ":make"
    if case == "a class":  # a file named make.py would be the task
        ref = write(workdir, text, "make_class.py") + ":make"
    result = run("grid", "--task", ref, *TINY)
    assert result.exit_code == 2, result.output
    assert message.format(folder=workdir) in result.stderr, result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.strip().count("\n") == 0
    assert not (workdir / "studies").exists()  # nothing written for a task that cannot load


@pytest.mark.parametrize("ref, message", [
    ("builtins:exit", "builtins:exit is a value of type Quitter: name a function"),
    ("os:getcwd", "os:getcwd is a built-in function"),
    ("math:pi", "math:pi is a value of type float"),
    ("collections:OrderedDict", "collections:OrderedDict is a class"),
    ("posixpath:join", "posixpath:join takes arguments"),
    ("tempfile:gettempdir", "task function tempfile:gettempdir returned str, not an hpsearch.Task"),
])
def test_a_module_attribute_that_is_no_task_function_is_one_line(workdir, ref, message):
    """Refused before it is called, if it is no Python function (builtins:exit would exit 0)."""
    result = run("grid", "--task", ref, *TINY)
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.strip().count("\n") == 0


def test_a_module_that_exits_on_import_is_one_line(workdir):
    (workdir / "exiting_task_module.py").write_text("raise SystemExit(7)\n")
    result = run("check", "--task", "exiting_task_module:make")
    assert result.exit_code == 2, result.output
    assert "module exiting_task_module called sys.exit(7) while being imported" in result.stderr


def test_a_missing_module_and_a_bad_reference_are_bad_input(workdir):
    result = run("grid", "--task", "no_such_package.tasks:make", *TINY)
    assert result.exit_code == 2 and "no module named 'no_such_package.tasks'" in result.stderr
    with pytest.raises(BadInput, match="unknown task 'task.py'"):
        load_task("task.py")


def test_the_readme_commands_for_your_own_model_run(workdir):
    """The README's "Tune your own model" section in an empty folder, as written but smaller (1 epoch, fewer points)."""
    import shlex
    import shutil

    section = (ROOT / "README.md").read_text().split("## Tune your own model")[1].split("\n## ")[0]
    (workdir / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "my_task.py", workdir / "examples")
    blocks = section.split("```")[1::2]
    exec(next(b for b in blocks if b.startswith("python") and "np.savez" in b).removeprefix("python"), {})
    commands = [line.split("#")[0] for b in blocks if b.startswith("sh") for line in b.splitlines()[1:]]
    assert len(commands) == 7
    for command in commands:
        args = shlex.split(command)[1:]
        if args[0] != "report":  # a later flag overrides an earlier one
            args += ["--epochs", "1", "--lr", "0.1", "--weight-decay", "0"] + (["--trials", "2"] if args[0] == "tpe" else [])
        result = run(*args)
        assert result.exit_code == 0, f"{command}: {result.output}"
        assert "Best: val" in result.stdout


def test_a_task_file_may_import_its_neighbours(tmp_path):
    (tmp_path / "toy_neighbour_model.py").write_text(HEADER)
    ref = write(tmp_path, "from toy_neighbour_model import Task, model, x, y\n\ndef make():\n"
                          "    return Task('n', model, (x, y), None, None, 2)\n") + ":make"
    assert load_task(ref).num_classes == 2


def test_boolean_labels_of_a_task_are_classes_0_and_1(tmp_path):
    ref = write(tmp_path, HEADER + "def make():\n    return Task('b', model, (x, y.bool()), None, None, 2)\n") + ":make"
    task = load_task(ref)
    assert task.train[1].dtype == torch.int64 and set(task.train[1].tolist()) == {0, 1}


def test_ctrl_c_while_a_task_file_is_imported_stays_an_interruption(workdir):
    """Only exits and errors of the user's code become bad input: Ctrl-C is the user's, exit 130."""
    result = run("grid", "--task", write(workdir, "raise KeyboardInterrupt\n") + ":make", *TINY)
    assert result.exit_code == 130 and "interrupted" in result.stderr, result.output
