"""The seam between searching and training, and what stands behind it.

base        the Objective interface: "train these configurations, call back per epoch, return results"
population  hpsearch's population trainer over a Task (the fast path)
hp          what the user's code sees: ``hp`` with one trial's values, and ``hp.report`` per epoch
own         the user's Python function (``--objective FILE.py:NAME``), called in this process
command     the user's command (everything after ``--``), run once per trial; guard.py keeps its
            processes from outliving the trial or hpsearch
"""
from __future__ import annotations

from pathlib import Path

from hpsearch.objective.base import Done, EpochCallback, Failure, Objective
from hpsearch.objective.population import PopulationObjective, out_of_memory
from hpsearch.spec import StudySpec

__all__ = ["Done", "EpochCallback", "Failure", "Objective", "PopulationObjective", "objective_for", "out_of_memory"]


def objective_for(spec: StudySpec, logs: Path | None = None, split: str = "val") -> Objective:
    """What trains ``spec``'s configurations: the user's function or command, else the population trainer.

    ``logs``: the folder for the user's code's per-trial logs (trial-N.log); ``split``: "test" for hpsearch test.
    """
    if spec.objective is not None:
        from hpsearch.objective.own import FunctionObjective

        return FunctionObjective(spec.objective, spec.metric or "val_accuracy", spec.device, spec.timeout, logs, split)
    if spec.run:
        from hpsearch.objective.command import CommandObjective

        return CommandObjective(spec.run, spec.metric or "val_accuracy", spec.device, spec.timeout, logs, split)
    return PopulationObjective.for_spec(spec)
