"""hpsearch's population trainer behind the Objective seam: configurations of one batch size as one batched model."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from hpsearch.objective.base import Done, EpochCallback, Failure
from hpsearch.spec import Config, StudySpec

if TYPE_CHECKING:
    from hpsearch.tasks.builtin import Task
    from hpsearch.train import EpochReport, MemberResult


class PopulationObjective:
    """hpsearch's population trainer over a Task: one population per batch size, halved while out of memory."""

    def __init__(self, task: str, target: str | None = None, kind: str | None = None, device: str = "auto",
                 schedule: str = "constant", warmup: int = 0) -> None:
        self.reference = (task, target, kind)
        self.device = device  # as the user gave it, for messages
        self.schedule = (schedule, warmup)  # the learning rate over training (hpsearch.optimizers.Schedule)
        self._task: Task | None = None  # loaded on first use: a finished study needs no data

    @classmethod
    def for_spec(cls, spec: StudySpec) -> PopulationObjective:
        return cls(spec.task, spec.target, spec.kind, spec.device, spec.schedule, spec.warmup)

    def prepare(self) -> None:
        self.task()

    def task(self) -> Task:
        if self._task is None:
            from hpsearch.tasks.builtin import load_task
            from hpsearch.train import resolve_device

            self._task = load_task(*self.reference).to(resolve_device(self.device))
        return self._task

    def train(self, configs: Sequence[Config], epochs: int, on_epoch: EpochCallback,
              trials: Sequence[int] = ()) -> Iterator[Done]:
        by_size: dict[int, list[int]] = {}
        for i, c in enumerate(configs):
            by_size.setdefault(c.batch_size, []).append(i)
        populations = list(by_size.values())
        while populations:
            members = populations.pop(0)

            def report(epoch: EpochReport, members: list[int] = members) -> list[int]:
                batch = dataclasses.replace(epoch, members=[members[i] for i in epoch.members],
                                            diverged=[members[i] for i in epoch.diverged])
                return [members.index(i) for i in on_epoch(members, batch)]

            try:
                results = self.train_population([configs[i] for i in members], epochs, report)
            except SystemExit as exit_:  # the user's model ends its own trials, never hpsearch
                yield members, Failure(f"the model called sys.exit({exit_.code!r}) while training")
                continue
            except Exception as error:  # a failure of this population, not of the search
                if not out_of_memory(error):
                    yield members, Failure(f"{type(error).__name__}: {error}".splitlines()[0])
                elif len(members) > 1:  # too large for the device: train it in halves
                    half = len(members) // 2
                    populations[:0] = [members[:half], members[half:]]
                else:
                    size = configs[members[0]].batch_size
                    yield members, Failure(f"out of memory at batch size {size} ({self.device})", out_of_memory=True)
                continue
            yield members, results


    def train_population(self, configs: Sequence[Config], epochs: int,
                         on_epoch: Callable[[EpochReport], Iterable[int]]) -> list[MemberResult]:
        """One population (configurations of one batch size): hpsearch.train's trainer on the task."""
        from hpsearch.optimizers import Schedule
        from hpsearch.train import train_population

        return train_population(self.task(), configs, epochs, on_epoch, schedule=Schedule(*self.schedule))


def out_of_memory(error: Exception) -> bool:
    """A device out of memory (torch.OutOfMemoryError); its memory is released for what runs next."""
    if type(error).__name__ != "OutOfMemoryError":
        return False
    import gc

    import torch

    error.__traceback__ = None  # its frames hold the failed population's tensors
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return True
