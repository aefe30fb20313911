"""The batched-layers path: convolutions as im2col + baddbmm, BatchNorm over P x C channels, under autograd;
and, through train_population, the fused path's BatchNorm1d (mlp-bn, an MLP: the fused path takes it first).

Each form against torch itself: a population of one against torch.optim (every optimizer), a member
against its solo run, BatchNorm's running statistics through the evaluation-mode loss, the patches'
backward through gradcheck; and models it does not know falling back to vmap, then to one at a time.
"""
from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from hpsearch.optimizers import OPTIMIZERS
from hpsearch.space import Config
from hpsearch.spec import make_config
from hpsearch.tasks.builtin import Task, load_task
from hpsearch.train import _batched_layers, _dropout, _Im2col, _vmapped, train_population

from helpers import ROOT, TOL, close, torch_train

LR = {"sgd": 0.05, "nesterov": 0.05, "adam": 1e-2, "adamw": 1e-2, "rmsprop": 1e-3}


def conv1d() -> nn.Module:  # mnist1d's CNN in small: padding, strides, no padding, a bias-free layer
    return nn.Sequential(nn.Unflatten(1, (1, 16)), nn.Conv1d(1, 4, 5, stride=2, padding=1), nn.ReLU(),
                         nn.Conv1d(4, 3, 3, stride=1, bias=False), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 5, 3))


def conv2d_bn() -> nn.Module:
    """The digits CNN's form with BatchNorm2d, a rectangular kernel and stride. No bias before BatchNorm: its
    gradient is zero but for rounding, which Adam scales up to full steps (0.03 apart from torch's in 2 epochs)."""
    return nn.Sequential(nn.Unflatten(1, (1, 4, 4)), nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                         nn.ReLU(),
                         nn.Conv2d(4, 5, (3, 2), stride=(2, 1), padding=(1, 0)), nn.ReLU(),
                         nn.Flatten(), nn.Linear(5 * 2 * 3, 3))


def mlp_bn() -> nn.Module:  # examples/my_task.py's spirals model without its Dropout
    return nn.Sequential(nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 12), nn.BatchNorm1d(12),
                         nn.ReLU(), nn.Linear(12, 3))


MODELS = {"conv1d": conv1d, "conv2d-bn": conv2d_bn, "mlp-bn": mlp_bn}


def small(make) -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 16, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 5] > 0.5).long()
    return Task("small", make, (x[:80], y[:80]), (x[80:], y[80:]), (x[80:], y[80:]), 3)


def config(optimizer: str = "sgd", lr: float | None = None, weight_decay: float = 1e-3, batch_size: int = 16) -> Config:
    return Config(entries=(("lr", LR[optimizer] if lr is None else lr), ("weight_decay", weight_decay),
                           ("batch_size", batch_size), ("momentum", 0.9), ("optimizer", optimizer)), seed=3)


def eval_loss(model: nn.Module, split) -> float:
    model.eval()
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(split[0]), split[1]))


@pytest.mark.parametrize("name", MODELS)
def test_each_model_takes_the_batched_layers_path(name):
    models = [MODELS[name]() for _ in range(3)]
    probe = small(MODELS[name]).train[0][:6].view(3, 2, 16)
    assert _batched_layers(models, torch.device("cpu"), probe) is not None


@pytest.mark.parametrize("name", MODELS)
def test_a_population_of_one_is_torch_sgd_running_statistics_included(name):
    """Parameters to TOL; BatchNorm's running statistics through the loss in evaluation mode (a short last batch too)."""
    task, c = small(MODELS[name]), config(batch_size=24)  # 80 = 3 x 24 + 8
    ours = train_population(task, [c], epochs=2)[0]
    model = torch_train(MODELS[name], *task.train, c, 2, nn.functional.cross_entropy)
    assert close(dict(model.named_parameters()), ours.params) < TOL
    assert ours.val_loss[-1] == pytest.approx(eval_loss(model, task.val), abs=TOL)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_on_the_batched_layers_path_is_torchs(optimizer):
    task, c = small(conv2d_bn), config(optimizer)
    ours = train_population(task, [c], epochs=2)[0]
    model = torch_train(conv2d_bn, *task.train, c, 2, nn.functional.cross_entropy)
    assert close(dict(model.named_parameters()), ours.params) < TOL


@pytest.mark.parametrize("name", MODELS)
def test_a_member_equals_its_solo_run(name):
    """Mixed optimizers and rates in one population; BatchNorm statistics are each member's own."""
    task = small(MODELS[name])
    population = [config("sgd", 0.1), config("adam"), config("sgd", 0.01, 0.0), config("rmsprop")]
    together = train_population(task, population, epochs=2)
    # Adam and RMSprop divide by the gradient's running size: where a gradient is near 0 (a BatchNorm shift),
    # the rounding of batched sums moves its step by up to the learning rate's order. Measured with one
    # thread: 1.35e-5 on the BatchNorm MLP's RMSprop member (2 threads: below 1e-5). A member trained with
    # another seed differs by > 0.5, with a learning rate 1% off by 7e-4 to 1.6e-2.
    tolerance = 10 * TOL
    for c, member in zip(population, together):
        alone = train_population(task, [c], epochs=2)[0]
        assert close(member.params, alone.params) < tolerance
        assert member.val_loss == pytest.approx(alone.val_loss, abs=tolerance)


@pytest.mark.parametrize("kernel, stride, padding", [((3,), (2,), (1,)), ((5,), (1,), (0,)),
                                                     ((3, 2), (2, 1), (1, 0)), ((3, 3), (1, 1), (1, 1))])
def test_the_patches_backward_is_their_gradient(kernel, stride, padding):
    torch.manual_seed(0)
    h = torch.randn(2, 2, *([6, 5][:len(kernel)]), 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _Im2col.apply(t, kernel, stride, padding), (h,))


class Gated(nn.Module):
    """Not an nn.Sequential: vmap's."""

    def __init__(self):
        super().__init__()
        self.net = conv1d()

    def forward(self, x):
        return self.net(x) * torch.sigmoid(self.net[-1].bias)


def unknown_layer() -> nn.Module:  # LayerNorm: not a layer the batched path knows
    return nn.Sequential(nn.Linear(16, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))


def linear_over_length() -> nn.Module:  # a Linear over a convolution's length: the layouts differ, the check sees it
    return nn.Sequential(nn.Unflatten(1, (2, 8)), nn.Conv1d(2, 3, 3, padding=1), nn.Linear(8, 4), nn.Flatten(),
                         nn.Linear(12, 3))


@pytest.mark.parametrize("make", [Gated, unknown_layer, linear_over_length])
def test_models_the_batched_layers_do_not_know_train_through_vmap_as_torch_does(make):
    task, c = small(make), config("adam")
    models = [make() for _ in range(2)]
    probe = task.train[0][:4].view(2, 2, 16)
    assert _batched_layers(models, torch.device("cpu"), probe) is None
    assert _vmapped(models, torch.device("cpu"), probe) is not None
    ours = train_population(task, [c, config()], epochs=2)[0]
    model = torch_train(make, *task.train, c, 2, nn.functional.cross_entropy)
    assert close(dict(model.named_parameters()), ours.params) < TOL


class Wrapped(nn.Module):
    """mnist1d's CNN behind a forward of its own: the vmap path."""

    def __init__(self):
        super().__init__()
        from hpsearch.tasks.builtin import mnist1d_cnn

        self.net = mnist1d_cnn()

    def forward(self, x):
        return self.net(x)


def plain_accuracy(task: Task, seed: int, lr: float, weight_decay: float, batch_size: int, epochs: int) -> float:
    torch.manual_seed(seed)
    model = task.make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    x, y = task.train
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), batch_size):
            index = order[start:start + batch_size]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        return float((model(task.val[0]).argmax(1) == task.val[1]).float().mean())


def test_mnist1d_accuracy_varies_by_seed_and_hpsearch_members_fall_in_that_range(one_thread):
    """lr 0.1 with momentum 0.9 over 300 steps is chaotic: rounding alone moves the final accuracy as far as a
    seed does (0.53-0.67 for six seeds in plain PyTorch here), so bit equality cannot hold between paths. The
    hpsearch members of the same configuration with other seeds, on the vmap and the batched-layers path,
    fall in a comparable range."""
    mnist1d = load_task("mnist1d")
    params = {"lr": 0.1, "weight_decay": 1e-4, "batch_size": 32, "momentum": 0.9}
    plain = [plain_accuracy(mnist1d, seed, 0.1, 1e-4, 32, 3) for seed in range(6)]
    assert max(plain) - min(plain) > 0.03  # it does vary by seed
    # Six seeds see only part of the spread (here a seventh gave 0.44): a wider band for single members.
    low, high = min(plain) - 0.15, max(plain) + 0.15
    members = [make_config(params, seed) for seed in range(1, 7)]
    wrapped = Task("wrapped", Wrapped, mnist1d.train, mnist1d.val, mnist1d.test, 10)
    for task in (wrapped, mnist1d):
        accuracies = [r.val_accuracy[-1] for r in train_population(task, members, 3)]
        assert all(low <= a <= high for a in accuracies), (plain, accuracies)
        assert abs(statistics.median(accuracies) - statistics.median(plain)) < 0.08, (plain, accuracies)


def test_frozen_parameters_stay_frozen_on_the_batched_layers_path():
    """requires_grad=False on the first convolution: no step, no decay; the rest trains as torch.optim.SGD."""
    def frozen() -> nn.Module:
        model = conv1d()
        model[1].requires_grad_(False)
        return model

    task, c = small(frozen), config()
    ours = train_population(task, [c], epochs=2)[0]
    torch.manual_seed(c.seed)
    untouched = dict(frozen().named_parameters())
    model = torch_train(frozen, *task.train, c, 2, nn.functional.cross_entropy)
    assert close(dict(model.named_parameters()), ours.params) < TOL
    assert torch.equal(ours.params["1.weight"], untouched["1.weight"].detach())
    assert close({"w": ours.params["3.weight"]}, {"w": untouched["3.weight"]}) > 1e-3


@pytest.mark.parametrize("ref", ["mnist1d", "examples/digits_cnn.py:digits_cnn", "examples/my_task.py:spirals"])
def test_the_benchmarks_models_take_the_batched_layers_path(ref):
    """Each can (spirals' MLP trains through the fused path, which comes first: tests/test_train.py)."""
    task = load_task(str(ROOT / ref) if ":" in ref else ref)
    models = [task.make_model() for _ in range(2)]
    probe = task.train[0][:4].view(2, 2, *task.train[0].shape[1:])
    assert _batched_layers(models, torch.device("cpu"), probe) is not None


def test_dropout_zeroes_a_fraction_p_scales_the_rest_and_draws_per_member():
    torch.manual_seed(0)
    out = _dropout(torch.ones(4, 500, 50), 0.25)
    assert float((out == 0).float().mean()) == pytest.approx(0.25, abs=0.01)
    assert torch.allclose(out[out != 0], torch.tensor(1 / 0.75))
    assert not torch.equal(out[0] == 0, out[1] == 0)
    assert torch.equal(_dropout(torch.ones(2, 3), 0.0), torch.ones(2, 3))


class ValueGate(nn.Module):
    """A Python branch on a tensor's value: neither the batched layers nor vmap take it."""

    def forward(self, x):
        return x if float(x.detach().sum()) > -1e30 else -x


def gated_sequential() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 8), ValueGate(), nn.ReLU(), nn.Linear(8, 3))


def test_a_sequential_neither_batched_path_takes_trains_one_member_at_a_time_as_torch_does():
    task, c = small(gated_sequential), config("nesterov")
    models = [gated_sequential() for _ in range(2)]
    probe = task.train[0][:4].view(2, 2, 16)
    assert _batched_layers(models, torch.device("cpu"), probe) is None
    assert _vmapped(models, torch.device("cpu"), probe) is None
    ours = train_population(task, [c, config()], epochs=2)[0]
    model = torch_train(gated_sequential, *task.train, c, 2, nn.functional.cross_entropy)
    assert close(dict(model.named_parameters()), ours.params) < TOL
