"""hpsearch: tune the training hyperparameters of PyTorch models from the command line.

The pipeline, one module per stage: spec -> tasks -> train -> search -> results -> report.
The public API is imported lazily, so that ``import hpsearch`` does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "StudySpec": "spec", "SearchSpace": "spec", "Config": "spec", "build_spec": "spec", "parse_values": "spec",
    "Task": "tasks", "load_task": "tasks",
    "train_population": "train", "MemberResult": "train", "EpochReport": "train",
    "run_search": "search", "Progress": "search", "SearchOutcome": "search",
    "load_results": "results",
    "HpsearchError": "errors", "BadInput": "errors", "RuntimeFailure": "errors", "Interrupted": "errors",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f"hpsearch.{_API[name]}"), name)
    raise AttributeError(f"module 'hpsearch' has no attribute {name!r}")
