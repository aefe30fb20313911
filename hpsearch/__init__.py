"""hpsearch: tune the training hyperparameters of PyTorch models from the command line.

The pipeline (README, "How it works"): space -> spec -> tasks -> train -> objective -> search -> report;
the recipe's steps (refine, check, estimate, test) beside it, and the CLI on top.
The public API is imported lazily, so that ``import hpsearch`` does not import torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # what type checkers see (py.typed); at run time __getattr__ imports each name on first use
    from hpsearch.errors import BadInput as BadInput
    from hpsearch.errors import HpsearchError as HpsearchError
    from hpsearch.errors import Interrupted as Interrupted
    from hpsearch.errors import RuntimeFailure as RuntimeFailure
    from hpsearch.objective.hp import HP as HP
    from hpsearch.objective.hp import TrialEnded as TrialEnded
    from hpsearch.objective.hp import hparams as hparams
    from hpsearch.objective.hp import report_epoch as report_epoch
    from hpsearch.report.results import load_results as load_results
    from hpsearch.search.run import Progress as Progress
    from hpsearch.search.run import SearchOutcome as SearchOutcome
    from hpsearch.search.run import run_search as run_search
    from hpsearch.spec import Config as Config
    from hpsearch.spec import SearchSpace as SearchSpace
    from hpsearch.spec import StudySpec as StudySpec
    from hpsearch.spec import build_spec as build_spec
    from hpsearch.spec import parse_values as parse_values
    from hpsearch.tasks.builtin import load_task as load_task
    from hpsearch.tasks.task import Task as Task
    from hpsearch.train import EpochReport as EpochReport
    from hpsearch.train import MemberResult as MemberResult
    from hpsearch.train import train_population as train_population

# Each public name and the module that defines it (tests/test_init.py checks that the imports above agree).
_API = {
    "StudySpec": "spec", "SearchSpace": "spec", "Config": "spec", "build_spec": "spec", "parse_values": "spec",
    "Task": "tasks.task", "load_task": "tasks.builtin",
    "train_population": "train", "MemberResult": "train", "EpochReport": "train",
    "run_search": "search.run", "Progress": "search.run", "SearchOutcome": "search.run",
    "load_results": "report.results",
    "HpsearchError": "errors", "BadInput": "errors", "RuntimeFailure": "errors", "Interrupted": "errors",
    "HP": "objective.hp", "TrialEnded": "objective.hp", "hparams": "objective.hp", "report_epoch": "objective.hp",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f"hpsearch.{_API[name]}"), name)
    raise AttributeError(f"module 'hpsearch' has no attribute {name!r}")
