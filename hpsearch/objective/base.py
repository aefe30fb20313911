"""The seam between searching and training: "train these configurations, call back per epoch, return results".

The search hands an Objective a batch of configurations and learns, per epoch, how each is doing
(it may stop some: pruning); whatever trains them (hpsearch's population trainer, the user's own
function or command) stays behind this interface and knows nothing of Optuna.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Protocol, Sequence, Union

from hpsearch.spec import Config

if TYPE_CHECKING:
    from hpsearch.train import EpochReport, MemberResult


@dataclass(frozen=True)
class Failure:
    """Training some configurations raised: why (one line); whether the device ran out of memory, or the
    trial ran past --timeout (neither is retried: it would happen again)."""

    reason: str
    out_of_memory: bool = False
    timed_out: bool = False


# (the batch's indices training together, their epoch's report with members and diverged as batch indices)
# -> the batch indices to stop now
EpochCallback = Callable[[Sequence[int], "EpochReport"], Iterable[int]]
# The batch's indices that ended together, and their results (in that order) or their failure.
Done = tuple[list[int], Union[list["MemberResult"], Failure]]


class Objective(Protocol):
    def prepare(self) -> None:
        """Load what training needs (data, a model factory, the user's code): called before any trial is asked."""

    def train(self, configs: Sequence[Config], epochs: int, on_epoch: EpochCallback,
              trials: Sequence[int] = ()) -> Iterator[Done]:
        """Train ``configs`` (``trials``: their trial numbers, for logs), yielding each group of them as it
        ends; Ctrl-C and SIGTERM propagate."""
