"""The user's code: a Python file or module loaded by name, and calls into it whose failures are one line.

Shared by task files (``--task FILE.py:NAME``) and objective functions (``--objective FILE.py:NAME``).
No torch here: loading an objective must not import it for the user.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TypeVar

from hpsearch.errors import BadInput, HpsearchError

T = TypeVar("T")


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def user_code(call: Callable[[], T], subject: str, context: str = "", exits: str = "a task must return its Task") -> T:
    """``call()``, which runs the user's code: an exit or any error there becomes one BadInput line.

    Ctrl-C stays Ctrl-C, and hpsearch's own errors (a task function may call load_task) pass as they are.
    """
    try:
        return call()
    except (HpsearchError, KeyboardInterrupt):
        raise
    except SystemExit as error:
        raise BadInput(f"{subject} called sys.exit({error.code!r}){context}; "
                       f"{exits} or raise an error, never exit") from None
    except BaseException as error:  # noqa: BLE001 - the user's code may raise anything
        raise BadInput(f"{subject} raised {first_line(error)}{context}") from None


def module(where: str, what: str = "task file") -> ModuleType:
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise BadInput(f"{what} {where} not found")
        folder = str(path.resolve().parent)
        if folder not in sys.path:  # as when Python runs the file: it may import its neighbours
            sys.path.insert(0, folder)
        name = "hpsearch_task_" + re.sub(r"\W", "_", str(path.resolve()))
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        loader = spec.loader

        def load() -> ModuleType:
            sys.modules[name] = module  # dataclasses and pickling look a class's module up here
            try:
                loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
            return module

        return user_code(load, f"{what} {where}", " while being imported")
    if os.getcwd() not in sys.path:  # the hpsearch script does not look in the current folder by itself
        sys.path.insert(0, os.getcwd())

    def load_module() -> ModuleType:
        try:
            return importlib.import_module(where)
        except ModuleNotFoundError as error:
            if error.name and where.startswith(error.name):
                raise BadInput(f"no module named '{where}' here or on the Python path") from None
            raise

    return user_code(load_module, f"module {where}", " while being imported")
