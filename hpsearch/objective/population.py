"""hpsearch's population trainer behind the Objective seam: configurations of one batch size as one batched model."""
from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from hpsearch.objective.base import Done, EpochCallback, Failure
from hpsearch.spec import Config, StudySpec

if TYPE_CHECKING:
    from hpsearch.tasks.builtin import Task
    from hpsearch.train import EpochReport, MemberResult


class PopulationObjective:
    """hpsearch's population trainer over a Task: one population per batch size, halved while out of memory."""

    def __init__(self, task: str, target: str | None = None, kind: str | None = None, device: str = "auto",
                 schedule: str = "constant", warmup: int = 0, lanes: bool = True) -> None:
        self.reference = (task, target, kind)
        self.device = device  # as the user gave it, for messages
        self.schedule = (schedule, warmup)  # the learning rate over training (hpsearch.optimizers.Schedule)
        # Populations side by side where the CPU has threads to share (side_by_side). Not under a pruner: it
        # judges a population by those that ended before it (the median pruner waits for 5 completed trials),
        # and side by side there would be none.
        self.lanes = lanes
        self._convolutional: bool | None = None  # whether the task's model holds a convolution, once known
        self._task: Task | None = None  # loaded on first use: a finished study needs no data

    @classmethod
    def for_spec(cls, spec: StudySpec) -> PopulationObjective:
        return cls(spec.task, spec.target, spec.kind, spec.device, spec.schedule, spec.warmup, lanes=spec.prune == "none")

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
        pays = self.lanes and len(populations) > 1 and self.convolutional()
        lanes, threads = side_by_side(len(populations) if pays else 1, self.task().train[0].device.type)
        if lanes > 1:
            yield from self._side_by_side(configs, populations, epochs, on_epoch, lanes, threads)
            return
        while populations:
            members = populations.pop(0)
            ended = self._attempt(configs, members, epochs, _reporter(members, on_epoch))
            yield from self._settle(configs, members, ended, populations)

    def convolutional(self) -> bool:
        """Whether the task's model holds a convolution: the models whose populations gain from lanes (side_by_side)."""
        if self._convolutional is None:
            from hpsearch.train import convolutional

            try:
                self._convolutional = convolutional(self.task())
            except Exception:  # noqa: BLE001 - a model that cannot be built fails in its population, as one line
                self._convolutional = False
        return self._convolutional

    def _attempt(self, configs: Sequence[Config], members: list[int], epochs: int,
                 report: Callable[[EpochReport], Iterable[int]]) -> list[MemberResult] | BaseException:
        """One population trained: its results, or what it raised (SystemExit included: the user's model
        ends its own trials, never hpsearch). Ctrl-C and SIGTERM propagate."""
        try:
            return self.train_population([configs[i] for i in members], epochs, report)
        except (Exception, SystemExit) as error:
            return error

    def _settle(self, configs: Sequence[Config], members: list[int], ended: list[MemberResult] | BaseException,
                populations: list[list[int]]) -> Iterator[Done]:
        """A population's end as Done, or, out of memory, its halves put first in ``populations``."""
        if not isinstance(ended, BaseException):
            yield members, ended
        elif isinstance(ended, SystemExit):
            yield members, Failure(f"the model called sys.exit({ended.code!r}) while training")
        elif not out_of_memory(ended):  # a failure of this population, not of the search
            yield members, Failure(f"{type(ended).__name__}: {ended}".splitlines()[0])
        elif len(members) > 1:  # too large for the device: train it in halves
            half = len(members) // 2
            populations[:0] = [members[:half], members[half:]]
        else:
            size = configs[members[0]].batch_size
            yield members, Failure(f"out of memory at batch size {size} ({self.device})", out_of_memory=True)

    def _side_by_side(self, configs: Sequence[Config], populations: list[list[int]], epochs: int,
                      on_epoch: EpochCallback, lanes: int, threads: int) -> Iterator[Done]:
        """Up to ``lanes`` populations at once, each in a thread of its own with ``threads // lanes`` torch threads.

        Only training runs in those threads: each epoch's report comes back to this (the calling) thread,
        which calls ``on_epoch`` (the study's writes, pruning) and answers, so Ctrl-C and SIGTERM land
        here as they do without lanes. A lane keeps its share of the threads to the end, even when left
        alone: thread counts change how sums round, and a re-run gives the same numbers only if each
        population always runs with the same count. When this generator ends early, the lanes stop at
        their next epoch.
        """
        import torch

        inbox: queue.Queue = queue.Queue()  # (members, EpochReport and the reply's queue) or (members, ended)
        stopping = threading.Event()

        def lane(members: list[int]) -> None:
            torch.set_num_threads(max(1, threads // lanes))  # this thread's own (OpenMP) thread count

            def report(epoch: EpochReport) -> Iterable[int]:
                reply: queue.Queue = queue.Queue(maxsize=1)
                inbox.put((members, (epoch, reply)))
                while True:  # the answer, unless the search stopped (then perhaps before reading this report)
                    with contextlib.suppress(queue.Empty):
                        stop = reply.get(timeout=0.5)
                        break
                    if stopping.is_set():
                        raise _Abandoned()
                if stop is None:
                    raise _Abandoned()
                return stop

            try:
                inbox.put((members, self._attempt(configs, members, epochs, report)))
            except _Abandoned:
                pass

        running = 0
        try:
            while populations or running:
                while populations and running < lanes:
                    threading.Thread(target=lane, args=(populations.pop(0),), name="hpsearch-population",
                                     daemon=True).start()
                    running += 1
                members, message = inbox.get()
                if isinstance(message, tuple):
                    epoch, reply = message
                    try:
                        reply.put(_reporter(members, on_epoch)(epoch))
                    except BaseException:
                        reply.put(None)
                        raise
                    continue
                running -= 1
                yield from self._settle(configs, members, message, populations)
        finally:
            stopping.set()
            while not inbox.empty():  # a lane waiting for its answer gets told to stop
                _, message = inbox.get_nowait()
                if isinstance(message, tuple):
                    message[1].put(None)
            torch.set_num_threads(threads)  # MKL's count is the process's: set back for this thread

    def train_population(self, configs: Sequence[Config], epochs: int,
                         on_epoch: Callable[[EpochReport], Iterable[int]]) -> list[MemberResult]:
        """One population (configurations of one batch size): hpsearch.train's trainer on the task."""
        from hpsearch.optimizers import Schedule
        from hpsearch.train import train_population

        return train_population(self.task(), configs, epochs, on_epoch, schedule=Schedule(*self.schedule))


class _Abandoned(BaseException):
    """Ends a lane whose results nobody waits for any more (the search stopped)."""


def _reporter(members: list[int], on_epoch: EpochCallback) -> Callable[[EpochReport], list[int]]:
    """The population's epoch report in the batch's indices, passed to ``on_epoch``; its answer in the population's."""
    def report(epoch: EpochReport) -> list[int]:
        batch = dataclasses.replace(epoch, members=[members[i] for i in epoch.members],
                                    diverged=[members[i] for i in epoch.diverged])
        return [members.index(i) for i in on_epoch(members, batch)]

    return report


def side_by_side(populations: int, device: str) -> tuple[int, int]:
    """(lanes, torch threads): how many populations train at once, and the threads they share.

    On a CPU with several torch threads, one population per thread rather than all threads on one: the
    operations of a convolutional model's population are too small to keep several threads busy, and
    large enough that a thread each pays. Measured on 2 cores (`bench/general.py`, 24-point grids, two
    populations of 12, medians of 5): the search 1.16x as fast on mnist1d's CNN, 1.11x on the digits
    CNN; but 0.93x on the spirals MLP and about 0.95x on the digits MLP, whose steps are bound by
    Python's cost per operation, which lanes share. Those (models without a convolution) train one
    population after another, as on an accelerator. Again after train.keep_freed_memory: 1.14x on
    mnist1d and 1.01x (a tie) on the digits CNN, so they stay.
    """
    import torch

    threads = torch.get_num_threads()
    if device != "cpu" or populations < 2 or threads < 2:
        return 1, threads
    return min(populations, threads), threads


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
