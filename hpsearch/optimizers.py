"""Optimizers and learning-rate schedules for a population: each member its own hyperparameters, one step for all.

``PopulationOptimizer`` steps the stacked parameters (P, ...) of P members with torch.optim's
semantics: each member's ``optimizer`` (sgd when its configuration names none), learning rate,
weight decay and ``momentum``, which is SGD's momentum for sgd and nesterov, beta1 for adam and
adamw, and RMSprop's momentum for rmsprop. ``Schedule`` is the learning rate over training,
stepped every optimizer step as torch.optim.lr_scheduler steps it.

Everything is in place on the stacked tensors (fresh large tensors cost page faults on the CPU).
Members of one optimizer step as one block: the whole tensors when the population has one kind,
views of contiguous rows when each kind's rows are contiguous (the trainer orders them so), rows
gathered into buffers and written back otherwise. A member not alive steps at rate zero, as in the
SGD step this replaces: a non-finite gradient still turns its parameters into NaN (0 * NaN).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from hpsearch.space import OPTIMIZERS
from hpsearch.spec import SCHEDULES, Config

__all__ = ["OPTIMIZERS", "SCHEDULES", "PopulationOptimizer", "Schedule", "optimizer_of"]  # OPTIMIZERS, SCHEDULES re-exported

# What the search does not tune: torch.optim's defaults, so that a member trains as torch.optim trains
# the same configuration (``momentum`` takes the place of Adam's beta1 and of RMSprop's momentum).
ADAM_BETA2 = 0.999  # torch.optim.Adam / AdamW: betas=(momentum, ADAM_BETA2)
ADAM_EPS = 1e-8  # torch.optim.Adam / AdamW: eps
RMSPROP_ALPHA = 0.99  # torch.optim.RMSprop: alpha, the smoothing of the squared gradient (centered=False)
RMSPROP_EPS = 1e-8  # torch.optim.RMSprop: eps

# The schedules' shapes, each reaching its low point by the end of training whatever its length.
STEP_PARTS = 3  # "step": StepLR(step_size=max(1, T // STEP_PARTS), gamma=STEP_GAMMA): x0.1 at each third
STEP_GAMMA = 0.1
EXPONENTIAL_END = 0.01  # "exponential": ExponentialLR(gamma=EXPONENTIAL_END ** (1 / T)), ends at 1/100 of the rate


@dataclass(frozen=True)
class Schedule:
    """The learning rate over training: a multiplier on each member's own rate at every optimizer step.

    ``warmup`` epochs of linear warm-up (torch's LinearLR from 1/steps to 1) multiply the schedule,
    which counts over all of training, as torch's ChainedScheduler([LinearLR, schedule]) does.
    """

    name: str = "constant"  # one of SCHEDULES
    warmup: int = 0  # epochs

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule '{self.name}'; choose from {', '.join(SCHEDULES)}")
        if self.warmup < 0:
            raise ValueError(f"warm-up of {self.warmup} epochs: it cannot be negative")

    def factor(self, step: int, steps_per_epoch: int, epochs: int) -> float:
        """The multiplier for optimizer step ``step`` (from 0) of ``epochs * steps_per_epoch``: torch's scheduler's
        lr / base lr when ``scheduler.step()`` follows every ``optimizer.step()``."""
        if self.warmup >= epochs:
            raise ValueError(f"warm-up of {self.warmup} epochs: warm up for fewer epochs than the {epochs} trained")
        total = epochs * steps_per_epoch
        if self.name == "step":
            factor = STEP_GAMMA ** (step // max(1, total // STEP_PARTS))
        elif self.name == "cosine":
            factor = (1 + math.cos(math.pi * step / total)) / 2
        elif self.name == "exponential":
            factor = (EXPONENTIAL_END ** (1 / total)) ** step
        else:
            factor = 1.0
        warm = self.warmup * steps_per_epoch
        if warm:
            start = 1 / warm
            factor *= start + (1 - start) * min(step, warm) / warm
        return factor

    def describe(self) -> str:
        """"cosine", "cosine, warm-up 1 epoch", "constant"."""
        if not self.warmup:
            return self.name
        return f"{self.name}, warm-up {self.warmup} epoch{'s' if self.warmup != 1 else ''}"


def optimizer_of(config: Config) -> str:
    """The configuration's optimizer: sgd when it names none."""
    name = str(config.get("optimizer", "sgd"))
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{name}'; choose from {', '.join(OPTIMIZERS)}")
    return name


class _Group:
    """The members of one optimizer: their rows, hyperparameters and state (P_k, ...), in the order of their rows."""

    def __init__(self, kind: str, rows: list[int], configs: Sequence[Config], params: Sequence[torch.Tensor],
                 like: torch.Tensor) -> None:
        def per_member(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=like.dtype, device=like.device)

        self.kind = kind
        momentum = [float(configs[r]["momentum"]) for r in rows]
        decay = [float(configs[r]["weight_decay"]) for r in rows]
        self.lr = per_member([float(configs[r]["lr"]) for r in rows])
        self.weight_decay, self.momentum = per_member(decay), per_member(momentum)
        self.one_minus = per_member([1 - m for m in momentum])  # Adam's lerp weight 1 - beta1, rounded once
        # Read once per population: a pass over the parameters is skipped where no member needs it.
        self.decays, self.has_momentum = any(decay), any(momentum)
        self.sizes = [tuple(p.shape[1:]) for p in params]
        self.shapes = [(-1,) + (1,) * len(size) for size in self.sizes]  # per-member values broadcast over (P_k, ...)
        self.state = [self._zeros((len(rows),) + size, like) for size in self.sizes]
        self._place(rows, len(configs))

    def _zeros(self, shape: tuple[int, ...], like: torch.Tensor) -> list[torch.Tensor]:
        """One parameter's state: velocity (sgd, nesterov; none without momentum), exp_avg, exp_avg_sq and a
        scratch buffer (adam, adamw), square_avg, a scratch buffer and the momentum buffer (rmsprop)."""
        if self.kind in ("sgd", "nesterov"):
            return [like.new_zeros(shape)] if self.has_momentum else []
        if self.kind in ("adam", "adamw"):
            return [like.new_zeros(shape), like.new_zeros(shape), like.new_empty(shape)]
        return [like.new_zeros(shape), like.new_empty(shape)] + ([like.new_zeros(shape)] if self.has_momentum else [])

    def _place(self, rows: list[int], population: int) -> None:
        """Where the members are: ``rows`` (ascending) of a population of ``population``; the views made once."""
        self.members = rows
        self.decay = [self.weight_decay.view(shape) for shape in self.shapes]
        self.moment = [self.momentum.view(shape) for shape in self.shapes]
        self.lerp = [self.one_minus.view(shape) for shape in self.shapes]
        self.rows: slice | torch.Tensor | None = None  # every row: the whole tensors
        self.gathered: list[tuple[torch.Tensor, torch.Tensor]] = []  # a parameter's rows and its gradient's
        if len(rows) < population and rows == list(range(rows[0], rows[-1] + 1)):
            self.rows = slice(rows[0], rows[-1] + 1)  # contiguous: views
        elif len(rows) < population:
            self.rows = self.lr.new_tensor(rows, dtype=torch.long)  # gathered into buffers, written back
            self.gathered = [(self.lr.new_empty((len(rows),) + size), self.lr.new_empty((len(rows),) + size))
                             for size in self.sizes]

    def keep(self, select: list[int], rows: list[int], population: int) -> None:
        """Keep the members at positions ``select`` of the group, now ``rows`` (ascending) of ``population``."""
        index = self.lr.new_tensor(select, dtype=torch.long)
        self.lr, self.weight_decay, self.momentum, self.one_minus = (
            t[index] for t in (self.lr, self.weight_decay, self.momentum, self.one_minus))
        self.state = [[s[index] for s in state] for state in self.state]
        self._place(rows, population)

    def step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], alive: torch.Tensor, factor: float,
             t: int) -> None:
        """Step ``t`` (from 1) of the members where ``alive``, at ``factor`` times their learning rates."""
        rows = self.rows
        if rows is None:
            ps, gs = params, grads
        elif isinstance(rows, slice):
            ps, gs, alive = [p[rows] for p in params], [g[rows] for g in grads], alive[rows]
        else:
            for (p_rows, g_rows), p, g in zip(self.gathered, params, grads):
                torch.index_select(p, 0, rows, out=p_rows)
                torch.index_select(g, 0, rows, out=g_rows)
            ps, gs, alive = [p for p, _ in self.gathered], [g for _, g in self.gathered], alive.index_select(0, rows)
        step = torch.mul(self.lr, alive)  # a member not alive takes no step
        if factor != 1.0:
            step.mul_(factor)
        UPDATES[self.kind](self, ps, gs, step, t)
        if isinstance(rows, torch.Tensor):
            for p, (p_rows, _) in zip(params, self.gathered):
                p.index_copy_(0, rows, p_rows)


Tensors = Sequence[torch.Tensor]


# Each kind's update, in place, of parameters ps and gradients gs (P_k, ...) (the gradients may be overwritten);
# ``step``: each member's learning rate this step (P_k,), zero where it takes none; ``t``: the step, from 1.
# The formulas are torch.optim's single-tensor ones, with each hyperparameter a per-member tensor.

def _sgd(group: _Group, ps: Tensors, gs: Tensors, step: torch.Tensor, t: int) -> None:
    """SGD, dampening 0: d = g + wd p; v = m v + d; p -= lr v (nesterov: p -= lr (d + m v))."""
    for k, (p, g, shape) in enumerate(zip(ps, gs, group.shapes)):
        if group.decays:
            g.addcmul_(p, group.decay[k])
        direction = g
        if group.has_momentum:
            momentum, v = group.moment[k], group.state[k][0]
            torch.addcmul(g, v, momentum, out=v)
            if group.kind == "nesterov":
                direction = g.addcmul_(v, momentum)
            else:
                direction = v
        p.addcmul_(step.view(shape), direction, value=-1.0)


def _adam(group: _Group, ps: Tensors, gs: Tensors, step: torch.Tensor, t: int) -> None:
    """Adam (coupled L2: g += wd p) or AdamW (decoupled: p *= 1 - lr wd), beta1 = momentum."""
    decoupled = group.kind == "adamw"
    # One step counter for the population; beta1 is per member, so its bias correction is a (P_k,) tensor.
    # torch's lr / (1 - beta1^t) * m / (sqrt(v) / c2 + eps), c2 = sqrt(1 - beta2^t), with c2 moved out of the
    # denominator: lr * c2 / (1 - beta1^t) * m / (sqrt(v) + eps * c2), one pass fewer over the parameters.
    correction2 = math.sqrt(1 - ADAM_BETA2 ** t)
    step_size = step.mul(correction2).div_(1 - torch.pow(group.momentum, t))
    shrink = torch.addcmul(torch.ones_like(step), step, group.weight_decay, value=-1.0) if decoupled else None
    for k, (p, g, shape, (exp_avg, exp_avg_sq, scratch)) in enumerate(zip(ps, gs, group.shapes, group.state)):
        if group.decays:
            if shrink is not None:
                p.mul_(shrink.view(shape))
            else:
                g.addcmul_(p, group.decay[k])
        exp_avg.lerp_(g, group.lerp[k])
        exp_avg_sq.mul_(ADAM_BETA2).addcmul_(g, g, value=1 - ADAM_BETA2)
        torch.sqrt(exp_avg_sq, out=scratch).add_(ADAM_EPS * correction2)  # sqrt: most of the step's time on a CPU
        torch.div(exp_avg, scratch, out=scratch)
        p.addcmul_(step_size.view(shape), scratch, value=-1.0)


def _rmsprop(group: _Group, ps: Tensors, gs: Tensors, step: torch.Tensor, t: int) -> None:
    """RMSprop, not centred: s = alpha s + (1 - alpha) g^2; b = m b + g / (sqrt(s) + eps); p -= lr b."""
    for k, (p, g, shape, state) in enumerate(zip(ps, gs, group.shapes, group.state)):
        square_avg, scratch = state[0], state[1]
        if group.decays:
            g.addcmul_(p, group.decay[k])
        square_avg.mul_(RMSPROP_ALPHA).addcmul_(g, g, value=1 - RMSPROP_ALPHA)
        torch.sqrt(square_avg, out=scratch).add_(RMSPROP_EPS)
        direction = torch.div(g, scratch, out=scratch)
        if group.has_momentum:
            direction = torch.addcmul(scratch, state[2], group.moment[k], out=state[2])
        p.addcmul_(step.view(shape), direction, value=-1.0)


UPDATES: dict[str, Callable[[_Group, Tensors, Tensors, torch.Tensor, int], None]] = {
    "sgd": _sgd, "nesterov": _sgd, "adam": _adam, "adamw": _adam, "rmsprop": _rmsprop}


class PopulationOptimizer:
    """torch.optim's optimizers for every member at once, each member with its own, under one schedule.

    ``step`` is optimizer step number ``steps`` (counted here, one counter for the population) of
    ``epochs * steps_per_epoch``; members of each optimizer step together (module docstring).
    """

    def __init__(self, params: Sequence[torch.Tensor], configs: Sequence[Config], like: torch.Tensor,
                 schedule: Schedule = Schedule(), steps_per_epoch: int = 1, epochs: int = 1) -> None:
        """``params``: the trainable (P, ...) tensors; ``like``: the dtype and device of the per-member values."""
        schedule.factor(0, steps_per_epoch, epochs)  # a warm-up as long as training is refused now, not at a step
        self.schedule, self.steps_per_epoch, self.epochs = schedule, steps_per_epoch, epochs
        self.constant = schedule == Schedule()  # the searches' default: no factor to work out at each step
        self.steps = 0
        kinds = [optimizer_of(c) for c in configs]
        self.groups = [_Group(kind, [r for r, k in enumerate(kinds) if k == kind], configs, params, like)
                       for kind in OPTIMIZERS if kind in kinds]

    def step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], alive: torch.Tensor) -> None:
        """One step of the members where ``alive`` (bool (P,)); the others take none."""
        factor = 1.0 if self.constant else self.schedule.factor(self.steps, self.steps_per_epoch, self.epochs)
        self.steps += 1
        for group in self.groups:
            group.step(params, grads, alive, factor, self.steps)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep the members at ``rows`` (a long tensor), in that order: the others left the population."""
        now = {old: new for new, old in enumerate(rows.tolist())}
        groups = []
        for group in self.groups:
            kept = sorted((now[old], k) for k, old in enumerate(group.members) if old in now)
            if kept:
                group.keep([k for _, k in kept], [new for new, _ in kept], len(now))
                groups.append(group)
        self.groups = groups
