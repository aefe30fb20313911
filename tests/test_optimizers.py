"""hpsearch.optimizers against torch.optim and torch.optim.lr_scheduler themselves, small and real."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from hpsearch.optimizers import OPTIMIZERS, SCHEDULES, PopulationOptimizer, Schedule
from hpsearch.space import Config
from hpsearch.tasks.task import Task
from hpsearch.train import EpochReport, train_population

from helpers import TOL, close, torch_optimizer, torch_scheduler, torch_train

CONSTANT = Schedule()
LR = {"sgd": 0.1, "nesterov": 0.1, "adam": 1e-2, "adamw": 1e-2, "rmsprop": 1e-3}  # each one's usual scale


def config(optimizer: str, momentum: float = 0.9, weight_decay: float = 1e-2, batch_size: int = 32,
           lr: float | None = None, seed: int = 0) -> Config:
    return Config(entries=(("lr", LR[optimizer] if lr is None else lr), ("weight_decay", weight_decay),
                           ("batch_size", batch_size), ("momentum", momentum), ("optimizer", optimizer)), seed=seed)


class Conv(nn.Module):
    """A Conv1d and a Tanh: not a Linear/ReLU stack, so it trains through vmap(functional_call)."""

    def __init__(self):
        super().__init__()
        self.conv, self.linear = nn.Conv1d(1, 3, 5, stride=4), nn.Linear(3 * 15, 10)

    def forward(self, x):
        return self.linear(torch.tanh(self.conv(x.unsqueeze(1))).flatten(1))


MODELS = {  # one per batched path of the trainer (test_train.py checks which path each takes)
    "fused-mlp": lambda: nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)),
    "vmap": Conv,
}


@pytest.fixture(scope="module")
def small(digits) -> Task:
    """Digits cut to 96 training examples: 3 steps an epoch at batch size 32 (the model set per test)."""
    x, y = digits.train
    return Task("small", MODELS["fused-mlp"], (x[:96], y[:96]), digits.val, digits.test, 10)


def trained_alone_and_in_torch(task: Task, make, c: Config, epochs: int, schedule: Schedule = CONSTANT):
    task = Task(task.name, make, task.train, task.val, task.test, task.num_classes)
    ours = train_population(task, [c], epochs, schedule=schedule)[0]
    want = torch_train(make, *task.train, c, epochs, nn.functional.cross_entropy, schedule)
    return ours, dict(want.named_parameters())


@pytest.mark.parametrize("path", MODELS)
@pytest.mark.parametrize("momentum", [0.9, 0.0])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_population_of_one_is_the_torch_optimizer(small, optimizer, momentum, path):
    """Every optimizer, with and without momentum (beta1 0 for Adam), weight decay on, on both batched paths."""
    ours, want = trained_alone_and_in_torch(small, MODELS[path], config(optimizer, momentum), epochs=2)
    assert ours.outcome == "completed"
    assert close(want, ours.params) < TOL


@pytest.mark.parametrize("optimizer, name, warmup", [("adam", "cosine", 1), ("sgd", "step", 0),
                                                     ("rmsprop", "exponential", 1), ("adamw", "constant", 2),
                                                     ("nesterov", "cosine", 0)])
def test_a_scheduled_population_of_one_is_torch_with_its_scheduler(small, optimizer, name, warmup):
    schedule = Schedule(name, warmup)
    ours, want = trained_alone_and_in_torch(small, MODELS["fused-mlp"], config(optimizer), 3, schedule)
    assert close(want, ours.params) < TOL


def test_a_schedule_on_the_vmap_path_too(small):
    ours, want = trained_alone_and_in_torch(small, MODELS["vmap"], config("adamw"), 3, Schedule("cosine", 1))
    assert close(want, ours.params) < TOL


def torch_factors(schedule: Schedule, steps_per_epoch: int, epochs: int) -> list[float]:
    """The lr torch's scheduler gives each optimizer step, for a base lr of 1."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch_scheduler(optimizer, schedule, steps_per_epoch, epochs)
    factors = []
    for _ in range(epochs * steps_per_epoch):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return factors


@pytest.mark.parametrize("steps_per_epoch, epochs", [(5, 4), (7, 3), (1, 2), (2, 5)])
@pytest.mark.parametrize("warmup", [0, 1])
@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_factors_are_torchs_lr_scheduler(name, warmup, steps_per_epoch, epochs):
    schedule = Schedule(name, warmup)
    ours = [schedule.factor(step, steps_per_epoch, epochs) for step in range(steps_per_epoch * epochs)]
    assert ours == pytest.approx(torch_factors(schedule, steps_per_epoch, epochs), rel=1e-9, abs=1e-15)


def test_a_long_warm_up_and_the_schedules_ends():
    assert Schedule("constant", 3).factor(0, 2, 4) == pytest.approx(1 / 6)
    assert Schedule("constant", 3).factor(6, 2, 4) == 1.0
    assert Schedule("exponential").factor(100, 10, 10) == pytest.approx(0.01)  # the step after the last
    assert Schedule("step").factor(99, 10, 10) == pytest.approx(0.001)
    assert Schedule("cosine").factor(50, 10, 10) == pytest.approx(0.5)


def test_a_bad_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        Schedule("linear")
    with pytest.raises(ValueError, match="cannot be negative"):
        Schedule("cosine", -1)
    with pytest.raises(ValueError, match="fewer epochs than the 2 trained"):
        Schedule("cosine", 2).factor(0, 5, 2)
    with pytest.raises(ValueError, match="fewer epochs than the 3 trained"):  # at once, not at the first step
        PopulationOptimizer([torch.zeros(1, 2)], [config("sgd")], torch.zeros(1), Schedule("step", 3), 4, 3)
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        PopulationOptimizer([torch.zeros(1, 2)], [Config((("optimizer", "lion"),))], torch.zeros(1))


def test_schedules_describe_themselves():
    assert Schedule().describe() == "constant"
    assert Schedule("cosine", 1).describe() == "cosine, warm-up 1 epoch"
    assert Schedule("step", 2).describe() == "step, warm-up 2 epochs"


def test_a_configuration_without_an_optimizer_is_sgd():
    plain = Config((("lr", 0.1), ("weight_decay", 0.0), ("batch_size", 8), ("momentum", 0.9)))
    params, grads = [torch.ones(1, 3)], [torch.full((1, 3), 2.0)]
    PopulationOptimizer(params, [plain], params[0]).step(params, grads, torch.ones(1, dtype=torch.bool))
    assert torch.allclose(params[0], torch.full((1, 3), 1 - 0.1 * 2.0))


# The optimizer on its own, against one torch.optim optimizer per member over random gradients.
SHAPES = [(3, 4), (1, 4), (5,)]

LAYOUTS = {  # each optimizer's rows: the whole population, contiguous (views), scattered (gathered)
    "whole": ["adam"] * 3,
    "contiguous": ["sgd", "sgd", "adam", "adam", "rmsprop"],
    "scattered": ["sgd", "adam", "rmsprop", "adam", "nesterov", "sgd", "adamw", "rmsprop"],
}


def population(kinds: list[str]) -> list[Config]:
    """Members of the given optimizers, their rates, decays and momenta all different (some zero)."""
    return [config(kind, momentum=(0.9, 0.0, 0.5)[row % 3], weight_decay=(1e-2, 0.0)[row % 2],
                   lr=LR[kind] * (1 + row / 10)) for row, kind in enumerate(kinds)]


def random_steps(members: int, steps: int) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(members, *shape, generator=generator) for shape in SHAPES]
    return params, [[torch.randn(members, *shape, generator=generator) for shape in SHAPES] for _ in range(steps)]


class Torch:
    """One torch.optim optimizer and scheduler per member, on that member's rows of the parameters."""

    def __init__(self, configs, params, schedule, steps_per_epoch, epochs):
        self.params = [[nn.Parameter(p[row].clone()) for p in params] for row in range(len(configs))]
        self.optimizers = [torch_optimizer(ps, c) for ps, c in zip(self.params, configs)]
        self.schedulers = [torch_scheduler(o, schedule, steps_per_epoch, epochs) for o in self.optimizers]

    def step(self, grads: list[torch.Tensor], rows: list[int]) -> None:
        """A step of the members at ``rows``; ``grads`` rows are the population's rows, in ``rows``' order."""
        for position, row in enumerate(rows):
            for p, g in zip(self.params[row], grads):
                p.grad = g[position].clone()
            self.optimizers[row].step()
            self.schedulers[row].step()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_member_steps_as_its_own_torch_optimizer_and_keep_keeps_its_state(layout):
    """Six steps under a warm-up and a cosine; after three, members leave (the kept ones in a new order)."""
    kinds = LAYOUTS[layout]
    configs = population(kinds)
    schedule, steps_per_epoch, epochs = Schedule("cosine", 1), 3, 2
    params, grads = random_steps(len(kinds), 6)
    reference = Torch(configs, params, schedule, steps_per_epoch, epochs)
    optimizer = PopulationOptimizer(params, configs, params[0], schedule, steps_per_epoch, epochs)
    rows = list(range(len(kinds)))
    alive = torch.ones(len(kinds), dtype=torch.bool)
    for step in range(6):
        if step == 3:
            rows = [len(kinds) - 1, 0] + list(range(2, len(kinds) - 1, 2))  # one kind may leave altogether
            keep = torch.tensor(rows)
            optimizer.keep(keep)
            params, alive = [p[keep] for p in params], alive[keep]
        g = [g[rows] for g in grads[step]]
        reference.step(g, rows)
        with torch.no_grad():
            optimizer.step(params, [t.clone() for t in g], alive)
        for position, row in enumerate(rows):
            for p, want in zip(params, reference.params[row]):
                assert float((p[position] - want.detach()).abs().max()) < TOL, (step, row, kinds[row])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_member_not_alive_takes_no_step(layout):
    kinds = LAYOUTS[layout]
    params, grads = random_steps(len(kinds), 2)
    before = [p.clone() for p in params]
    optimizer = PopulationOptimizer(params, population(kinds), params[0])
    alive = torch.ones(len(kinds), dtype=torch.bool)
    dead = [1, len(kinds) - 2]  # scattered: an Adam member without weight decay, an AdamW member with
    alive[dead] = False
    for g in grads:
        optimizer.step(params, g, alive)
    for p, b in zip(params, before):
        assert all(torch.equal(p[row], b[row]) for row in dead)
        assert all(not torch.equal(p[row], b[row]) for row in range(len(kinds)) if alive[row])


def test_a_member_of_a_mixed_population_equals_its_solo_run(small):
    """Optimizers interleaved in the input (the trainer groups their rows); one member stopped after epoch 1."""
    members = [config("sgd"), config("adam"), config("rmsprop", 0.0), config("nesterov"), config("adamw", 0.0),
               config("sgd", 0.0, lr=0.05), config("adam", 0.5, lr=3e-3)]
    seen: list[EpochReport] = []

    def on_epoch(report: EpochReport) -> list[int]:
        seen.append(report)
        return [1] if report.epoch == 1 else []

    mixed = train_population(small, members, epochs=2, on_epoch=on_epoch)
    assert seen[0].members == list(range(len(members)))  # input order, not the rows' order
    assert seen[1].members == [0] + list(range(2, len(members)))
    assert mixed[1].outcome == "stopped"
    for c, got in zip(members, mixed):
        epochs = 1 if got.outcome == "stopped" else 2
        alone = train_population(small, [c], epochs)[0]
        assert close(alone.params, got.params) < TOL
        assert got.val_loss == pytest.approx(alone.val_loss, abs=TOL)
