"""The learning-rate probe: the recipe's first search step, before the coarse grid.

The lectures: with a small weight decay and all the training data, find a learning rate that makes the
loss drop significantly within 100 iterations. Every rate from 1e-5 to 10 trains at once, as one
population, for 100 steps; the loss after them against the rate shows the range of rates where the
loss drops, and the coarse ``--lr`` grid to search is the decades that cover that range.

A rate has *dropped the loss* when its loss after the steps is at most ``DROP_SHARE`` (0.8) of the
loss before training: a fifth of it gone. Measured on 2 cores over seeds 0-2, batch sizes 32-128 and
SGD or Adam (README, "The learning-rate probe"): at its best rate the digits MLP keeps 0.005-0.09 of
its initial loss after 100 steps, the mnist1d CNN 0.42-0.71 (100 steps at batch size 64 are two
epochs of it); rates that do not learn keep 0.92-1.09 (too low, the loss barely moves; too high, it
bounces or the ReLUs die). Halving the loss would find no range on mnist1d; 0.8 lies between the
bands. Between them the loss falls steeply (0.93, 0.78, 0.47 of it at 2e-3, 5e-3, 1e-2 on digits), so
the threshold moves an edge of the range by one rate at most, and the suggested decades mostly not.
The range is the run of neighbouring rates that dropped the loss around the rate with the lowest.
"""
from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from hpsearch.errors import BadInput
from hpsearch.space import OPTIMIZERS
from hpsearch.spec import DEFAULT_SEED, make_config, task_reference
from hpsearch.tasks.builtin import load_task
from hpsearch.tasks.task import Task
from hpsearch.train import EpochReport, member_losses, resolve_device, seeded_model, train_population

STEPS = 100  # the lectures' "within 100 iterations"
# 1, 2 and 5 in each decade from 1e-5 to 10: 19 rates, about three a decade (nearly even on a log scale),
# each a number a person would type. Adam, AdamW and RMSprop get the same span: they diverge at its top.
RATES = tuple(float(f"{m}e{e}") for e in range(-5, 1) for m in (1, 2, 5)) + (10.0,)
WEIGHT_DECAY = 1e-4  # "a small weight decay": the coarse grid's largest
MOMENTUM = 0.9  # the searches' default (space.py)
BATCH_SIZE = 64  # between the default grid's 32 and 128
EXAMPLES = 1024  # the loss before and after training is measured on this many fixed training examples
DROP_SHARE = 0.8  # "dropped the loss": at most this share of the initial loss left after the steps
GRID_DECADES = 3  # the suggested grid holds at least this many decades, so its best is rarely on an edge


@dataclass(frozen=True)
class Probe:
    """The loss after ``steps`` steps at each rate, the range of rates that dropped it, the grid it suggests."""

    task: str
    optimizer: str
    steps: int
    batch_size: int
    examples: int  # training examples the losses are measured on
    rates: tuple[float, ...]
    initial: float  # the loss before training: every rate starts from the same initialisation
    losses: tuple[float, ...]  # per rate, after ``steps`` steps; inf where it diverged
    good: tuple[float, float] | None  # the lowest and highest rate of the range; None when no rate dropped the loss
    grid: str | None  # the coarse grid for --lr (VALUES: LOW:HIGH:COUNT, log scale); None without a range
    summary: str  # one line for a person

    @property
    def warning(self) -> bool:
        return self.good is None

    @property
    def best(self) -> float | None:
        """The rate with the lowest loss after the steps; None when every rate diverged."""
        finite = [(loss, rate) for rate, loss in zip(self.rates, self.losses) if math.isfinite(loss)]
        return min(finite)[1] if finite else None

    @property
    def drop_share(self) -> float:
        """DROP_SHARE, for the plot (report/ comes before recipe/ and does not import it)."""
        return DROP_SHARE

    def dropped(self, loss: float) -> bool:
        return loss <= DROP_SHARE * self.initial

    def lines(self, task_flags: Sequence[str] = ()) -> list[str]:
        """The table of loss against rate, the rule, the range and the command to run next (with ``task_flags``)."""
        head = f"{'lr':>7}  {f'loss after {self.steps} steps':>20}  {'x initial':>9}"
        rows = [head]
        for rate, loss in zip(self.rates, self.losses):
            if not math.isfinite(loss):
                rows.append(f"{rate:>7g}  {'diverged':>20}")
                continue
            note = ("dropped" if self.dropped(loss) else "") + (", lowest" if rate == self.best else "")
            share = loss / self.initial if self.initial > 0 else math.nan  # a loss of 0 before training: nothing to drop
            rows.append(f"{rate:>7g}  {loss:>20.4g}  {share:>9.3f}  {note.lstrip(', ')}".rstrip())
        rule = (f"initial loss {self.initial:.4g} on {self.examples:,} training examples; dropped: at most "
                f"{DROP_SHARE:g}x that after {self.steps} steps")
        if self.good is None:
            return [self._title(), *rows, rule, self.summary]
        found = f"range: {self.good[0]:g} to {self.good[1]:g} (lowest loss at lr {self.best:g})"
        command = shlex.join(["hpsearch", "grid", *task_flags, *self._optimizer_flags(), "--lr", self.grid or ""])
        return [self._title(), *rows, rule, found, f"suggested: {command}"]

    def _title(self) -> str:
        return (f"Learning-rate probe of task '{self.task}': {len(self.rates)} rates from {min(self.rates):g} to "
                f"{max(self.rates):g} trained together, {self.steps} steps each ({self.optimizer}, momentum "
                f"{MOMENTUM:g}, weight decay {WEIGHT_DECAY:g}, batch size {self.batch_size})")

    def _optimizer_flags(self) -> list[str]:
        return [] if self.optimizer == "sgd" else ["--optimizer", self.optimizer]


def run_probe(task: str | None = None, data: str | None = None, target: str | None = None, kind: str | None = None,
              device: str = "auto", optimizer: str = "sgd") -> Probe:
    """``hpsearch check --lr-probe``: the task named as a search names it (--task, or --data), probed on ``device``."""
    reference, _ = task_reference(task, data, target, kind)
    return lr_probe(load_task(reference, target, kind).to(resolve_device(device)), optimizer=optimizer)


def lr_probe(task: Task, steps: int = STEPS, optimizer: str = "sgd", rates: Sequence[float] = RATES,
             batch_size: int = BATCH_SIZE, seed: int = DEFAULT_SEED) -> Probe:
    """Train every rate of ``rates`` for ``steps`` steps on ``task``'s training data, as one population.

    ``optimizer`` with momentum 0.9 and weight decay 1e-4. Every member starts from the same
    initialisation and sees the same batches (``seed``), so the rates differ in the rate alone.
    """
    if optimizer not in OPTIMIZERS:
        raise BadInput(f"--optimizer {optimizer}: choose one of {', '.join(OPTIMIZERS)}")
    if steps < 1 or len(rates) < 1:
        raise ValueError("a probe trains at least one rate for at least one step")
    probe_task = _probe_data(task, steps, batch_size, seed)
    configs = [replace(make_config({"lr": lr, "weight_decay": WEIGHT_DECAY, "batch_size": batch_size,
                                    "momentum": MOMENTUM, "optimizer": optimizer}, seed), seed=seed)
               for lr in rates]
    initial = _initial_loss(probe_task, seed)
    after: dict[int, float] = {}

    def on_epoch(report: EpochReport) -> list[int]:
        after.update(zip(report.members, report.val_loss))  # the validation slot holds the measured examples
        return []

    train_population(probe_task, configs, 1, on_epoch)  # one epoch is the probe's ``steps`` steps
    losses = tuple(after.get(i, math.inf) for i in range(len(rates)))  # the members missing diverged
    return _judge(task.name, optimizer, steps, batch_size, len(probe_task.val[0]), tuple(rates), initial, losses)


def _probe_data(task: Task, steps: int, batch_size: int, seed: int) -> Task:
    """``task`` whose epoch is exactly ``steps`` batches of its training data, the measured examples as validation.

    The epoch is passes over a fixed shuffle of all the training data, as many as the steps need (or a
    part of one pass, when the data is larger); the first EXAMPLES of the shuffle are the measured ones.
    """
    x, y = task.train
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(x.device)
    epoch = order[torch.arange(steps * batch_size, device=x.device) % len(x)]
    measured = order[:EXAMPLES]
    return replace(task, train=(x[epoch], y[epoch]), val=(x[measured], y[measured]))


def _initial_loss(task: Task, seed: int) -> float:
    """The loss of the members' common initialisation on the measured examples, as the trainer seeds it."""
    x, y = task.val
    model = seeded_model(task, seed).to(x.device).eval()
    with torch.no_grad():
        return member_losses(task.kind, model(x).unsqueeze(0), y).item()


def _judge(name: str, optimizer: str, steps: int, batch_size: int, examples: int, rates: tuple[float, ...],
           initial: float, losses: tuple[float, ...]) -> Probe:
    """The probe's verdict on the measured losses: the range, the grid and the one-line summary."""
    span = f"from {min(rates):g} to {max(rates):g}"
    finite = [i for i, loss in enumerate(losses) if math.isfinite(loss)]
    probe = Probe(name, optimizer, steps, batch_size, examples, rates, initial, losses, None, None, "")
    if not finite:
        return replace(probe, summary=f"every learning rate {span} diverged within {steps} steps: check the loss "
                                      "and the initialisation")
    best = min(finite, key=lambda i: losses[i])
    if not probe.dropped(losses[best]):
        return replace(probe, summary=f"no learning rate {span} brought the loss below {DROP_SHARE:g}x its initial "
                       f"{initial:.3g} within {steps} steps (lowest: {losses[best]:.3g} at lr {rates[best]:g}): check "
                       "that the model learns (hpsearch check) before a search")
    order = sorted(range(len(rates)), key=lambda i: rates[i])
    at = order.index(best)
    low = high = at
    while low > 0 and probe.dropped(losses[order[low - 1]]):
        low -= 1
    while high < len(order) - 1 and probe.dropped(losses[order[high + 1]]):
        high += 1
    good = (rates[order[low]], rates[order[high]])
    grid = coarse_grid(*good, rates[best])
    return replace(probe, good=good, grid=grid, summary=(
        f"the loss fell to {DROP_SHARE:g}x its initial {initial:.3g} or below within {steps} steps at learning rates "
        f"{good[0]:g} to {good[1]:g} ({optimizer}; lowest {losses[best]:.3g} at {rates[best]:g}): search --lr {grid}"))


def coarse_grid(low: float, high: float, best: float) -> str:
    """The decades covering ``low``..``high`` as VALUES for --lr (``1e-3:1:4``), at least GRID_DECADES of them.

    A narrow range grows by a decade on the side nearer ``best`` (where the loss fell most), repeatedly.
    """
    bottom = math.floor(math.log10(low) + 1e-9)
    top = math.ceil(math.log10(high) - 1e-9)
    centre = math.log10(best)
    while top - bottom + 1 < GRID_DECADES:
        if top - centre <= centre - bottom:
            top += 1
        else:
            bottom -= 1
    return f"{_decade(bottom)}:{_decade(top)}:{top - bottom + 1}"


def _decade(power: int) -> str:
    return f"{10 ** power:g}" if 0 <= power <= 3 else f"1e{power}"
