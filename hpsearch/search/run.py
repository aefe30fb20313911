"""The search: run (or continue) a study, in this process or in ``--jobs`` worker processes.

The loop itself (ask a batch -> objective -> tell) is hpsearch.search.runner's; the worker processes are
hpsearch.search.jobs's. This is the search's public entry point.
"""
from __future__ import annotations

from hpsearch.objective import Objective
from hpsearch.search.jobs import run_jobs
from hpsearch.search.runner import (ENQUEUE_CHUNK, Progress, ProgressCallback, SearchOutcome, Strategy, prepare_study,
                                    run_here)
from hpsearch.spec import StudySpec

__all__ = ["ENQUEUE_CHUNK", "Progress", "ProgressCallback", "SearchOutcome", "Strategy", "prepare_study", "run_search"]


def run_search(spec: StudySpec, progress: ProgressCallback | None = None, objective: Objective | None = None,
               strategy: Strategy = Strategy()) -> SearchOutcome:
    """Run (or continue) the study ``spec`` describes, in ``spec.jobs`` worker processes.

    ``objective`` trains the configurations (default: the population trainer over the spec's task;
    worker processes always use that default). Ctrl-C or SIGTERM raise Interrupted (exit 130 / 143)
    after recording the trials in flight.
    """
    spec.check_size()
    if spec.jobs > 1:
        return run_jobs(spec, progress)
    return run_here(spec, progress, objective, strategy)
