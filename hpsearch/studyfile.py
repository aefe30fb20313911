"""Study files: a study's settings in TOML, so that a search that mattered re-runs from the repo.

A study file holds the same settings as the flags, under the flags' names with underscores::

    command = "grid"                      # which command the file is for (optional)
    task = "digits"                       # or data = "my.csv" with target = "label"
    lr = "1e-4:1e-1:4"                    # VALUES text, as on the command line,
    weight_decay = [1e-4, 1e-5, 0]        # or a TOML list of values,
    batch_size = {low = 32, high = 128}   # or a table {low, high[, count]} (a range)
    momentum = 0.9                        # or one number
    optimizer = ["sgd", "adam"]           # names: a TOML list, or "sgd,adam"
    objective = "train.py:objective"      # your own code: a function, or
    run = ["python", "train.py", "--lr", "{lr}"]   # a command (also as command = [...])
    epochs = 5
    study = "digits-coarse"

Flags given on the command line override the file. Plain data: no torch, no optuna (``report``
reads and writes study files too).
"""
from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Any, Collection, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the same parser, from PyPI
    import tomli as tomllib

from hpsearch.errors import BadInput
from hpsearch.space import names as param_names
from hpsearch.spec import (BUILTIN_TASKS, COMMANDS, DATA_SUFFIXES, KINDS, METRICS, PRUNERS, SCHEDULES, check_int, fmt,
                           parse_values)

# Every key a study file may hold, with its TOML type; the registered parameters are read by _values_text.
# A refine file names its sources (from), top and sampler instead of a task and a space.
KEYS: dict[str, type] = {
    "command": str, "task": str, "data": str, "target": str, "kind": str, "epochs": int, "seed": int,
    "trials": int, "prune": str, "storage": str, "study": str, "device": str, "jobs": int, "retries": int,
    "from": list, "top": int, "sampler": str, "schedule": str, "warmup": int,
    "objective": str, "timeout": float, "metric": str, "repeats": int,
}
CHOICES = {"command": (*COMMANDS, "refine"), "prune": PRUNERS, "kind": KINDS, "sampler": COMMANDS, "schedule": SCHEDULES,
           "metric": METRICS}
_TOML_TYPES = {str: "a string", int: "an integer", float: "a number", list: "a list of study names"}


def read_study_file(path: str | Path, command: str, options: Collection[str]) -> dict[str, Any]:
    """The settings of a study file as flag values (the four parameters as VALUES text).

    ``command``: the command reading the file; ``options``: its options' names, the flags' names
    with underscores (a file key that is not one of them, such as ``trials`` for a grid, is an
    error). Every mistake is a one-line BadInput naming the file, and the key where there is one.
    """
    where = str(path)
    try:
        with open(path, "rb") as file:
            raw = tomllib.load(file)
    except FileNotFoundError:
        raise BadInput(f"--config {where}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"--config {where}: is a folder; give a .toml study file") from None
    except OSError as error:
        raise BadInput(f"--config {where}: cannot read it: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        # tomllib's message already says "(at line N, column M)"
        raise BadInput(f"{where}: not valid TOML: {str(error).splitlines()[0]}") from None
    except ValueError:  # an integer of thousands of digits: Python refuses to convert it
        raise BadInput(f"{where}: holds a number too long to read; integers are far smaller") from None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in KEYS and key not in param_names() and key != "run":
            close = difflib.get_close_matches(key.replace("-", "_"), [*param_names(), *KEYS], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; keys: {', '.join([*param_names(), *KEYS])}"
            raise BadInput(f"{where}: unknown key '{key}'{hint}")
        if key in param_names():
            values[key] = _values_text(key, value, where)
            continue
        if key == "run" or (key == "command" and isinstance(value, list)):  # a trial's command (after -- in a shell)
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise BadInput(f"{where}: key '{key}' is the command of one trial, a list of strings "
                               'such as ["python", "train.py", "--lr", "{lr}"]')
            values["run"] = tuple(value)
            continue
        wanted = KEYS[key]
        if wanted is float and type(value) is int:
            value = float(value)
        if type(value) is not wanted or (wanted is list and not all(isinstance(v, str) for v in value)):
            # type(), not isinstance: TOML's true is no integer here
            raise BadInput(f"{where}: key '{key}' must be {_TOML_TYPES[wanted]}, not {_describe(value)}")
        if key in CHOICES and value not in CHOICES[key]:
            raise BadInput(f"{where}: key '{key}' = {value!r}: choose one of {', '.join(CHOICES[key])}")
        if wanted is int:
            check_int(key, value, f"{where}: key '{key}' =")
        values[key] = value
    file_command = values.pop("command", command)
    if file_command != command:
        raise BadInput(f"{where} is a {file_command} study: run it with 'hpsearch {file_command} --config {where}'")
    for key in values:
        if key not in options:
            raise BadInput(f"{where}: key '{key}' is not a setting of 'hpsearch {command}'")
    return values


def _describe(value: object) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}
    return f"{kinds.get(type(value), type(value).__name__)} ({json.dumps(value, default=str)})"


def _values_text(name: str, value: object, where: str) -> str:
    """One parameter's file value as VALUES text, checked by the same parser as the flag."""
    def item(v: object) -> str:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return fmt(v)
        if isinstance(v, str):
            return v
        if isinstance(v, dict):
            unknown = set(v) - {"low", "high", "count"}
            if unknown or not {"low", "high"} <= set(v):
                raise BadInput(f"{where}: key '{name}': a range table is {{low = ..., high = ...[, count = N]}}")
            ends = [item(v["low"]), item(v["high"])] + ([str(v["count"])] if "count" in v else [])
            return ":".join(ends)
        raise BadInput(f"{where}: key '{name}' must be VALUES text, a number, a list or a range table, "
                       f"not {_describe(v)}")

    text = ",".join(item(v) for v in value) if isinstance(value, list) else item(value)
    try:
        parse_values(name, text)
    except BadInput as error:
        raise BadInput(f"{where}: key '{name}': {error}") from None
    return text


def study_file_text(study: str, settings: Mapping[str, Any], trials: int) -> str:
    """A study file that re-runs ``study`` with the settings it was run with.

    ``settings``: the study's recorded settings (StudySpec.settings()); ``trials``: the trials it
    holds, the budget of a random / TPE study that did not record one.
    """
    command = str(settings.get("command", "grid"))
    task = str(settings.get("task", "digits"))
    again = "refine" if "source" in settings else command
    lines = [f"# Study {study}, as hpsearch ran it. Run it again (or continue it) with:",
             f"#   hpsearch {again} --config FILE"]
    entries: dict[str, object] = {"command": command}
    if "source" in settings:  # refine again from the same sources: the same neighbourhoods, exactly
        source = settings["source"]
        entries = {"command": "refine", "from": list(source.get("studies", [])), "top": source.get("top"),
                   "sampler": command}
    elif settings.get("objective"):
        entries["objective"] = settings["objective"]
        entries.update(dict(settings.get("space") or {}))
    elif settings.get("run"):
        entries["run"] = list(settings["run"])
        entries.update(dict(settings.get("space") or {}))
    else:
        entries["data" if task.endswith(DATA_SUFFIXES) and task not in BUILTIN_TASKS else "task"] = task
        entries.update({k: settings[k] for k in ("target", "kind") if settings.get(k) is not None})
        entries.update(dict(settings.get("space") or {}))
    entries.update({k: settings[k] for k in ("epochs", "seed", "prune", "schedule", "warmup", "timeout", "repeats")
                    if k in settings})
    if settings.get("objective") or settings.get("run"):
        entries.update({"metric": settings["metric"]} if settings.get("metric") not in (None, "val_accuracy") else {})
    if command != "grid":
        entries["trials"] = settings.get("trials", trials)
    entries["study"] = study
    lines += [f"{key} = {json.dumps(value)}" for key, value in entries.items()]  # JSON strings are TOML strings
    return "\n".join(lines) + "\n"
