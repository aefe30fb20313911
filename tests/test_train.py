from __future__ import annotations

import math
import platform

import pytest
import torch
from torch import nn

from hpsearch.errors import BadInput
from hpsearch.spec import make_config
from hpsearch.tasks.builtin import Task, load_task
import hpsearch.train as train_module
from hpsearch.train import (EpochReport, _fused_mlp, _vmapped, evaluate, keep_freed_memory, member_losses, resolve_device,
                            train_population)

from helpers import ROOT, TOL, close


def configs(batch_size=64, **fixed):
    grid = [(lr, wd, m) for lr in (0.1, 0.01) for wd in (1e-4, 0.0) for m in (0.0, 0.9)]
    return [make_config({"lr": lr, "weight_decay": wd, "batch_size": batch_size, "momentum": m, **fixed}, 0)
            for lr, wd, m in grid]


def test_a_member_equals_the_same_configuration_trained_alone(digits):
    population = train_population(digits, configs(), epochs=2)
    for i in (0, 3, 7):
        alone = train_population(digits, [configs()[i]], epochs=2)[0]
        assert close(population[i].params, alone.params) < TOL
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert getattr(population[i], key) == pytest.approx(getattr(alone, key), abs=TOL)


def test_a_population_of_one_is_torch_sgd(digits, torch_sgd):
    """Same semantics as torch.optim.SGD: coupled weight decay, momentum, no dampening or Nesterov."""
    config = configs()[3]  # lr 0.1, weight decay 0, momentum 0.9
    ours = train_population(digits, [config], epochs=2)[0]
    model = torch_sgd(digits.make_model, *digits.train, config, 2, nn.functional.cross_entropy)
    assert close(dict(model.named_parameters()), ours.params) < TOL


def test_the_callback_sees_every_epoch_and_can_stop_members(digits):
    seen: list[EpochReport] = []

    def on_epoch(report: EpochReport):
        seen.append(report)
        return [0] if report.epoch == 1 else []

    results = train_population(digits, configs()[:3], epochs=3, on_epoch=on_epoch)
    assert [r.epoch for r in seen] == [1, 2, 3]
    assert seen[0].members == [0, 1, 2] and seen[1].members == [1, 2]
    assert results[0].outcome == "stopped" and results[0].stopped_epoch == 1 and len(results[0].val_loss) == 1
    assert all(r.outcome == "completed" and len(r.val_accuracy) == 3 for r in results[1:])
    assert all(0 <= a <= 1 for r in seen for a in r.val_accuracy)


def linear_digits(digits) -> Task:
    """Digits with a linear model: with no ReLU to die, a huge learning rate makes the loss explode."""
    return Task("linear", lambda: nn.Linear(64, 10), digits.train, digits.val, digits.test, 10)


def test_a_diverging_member_stops_and_leaves_the_others_unchanged(digits):
    task = linear_digits(digits)
    healthy = configs()[:4]
    wild = make_config({"lr": 1e4, "weight_decay": 0.0, "batch_size": 64, "momentum": 0.9}, 0)
    mixed = train_population(task, healthy[:2] + [wild] + healthy[2:], epochs=2)
    clean = train_population(task, healthy, epochs=2)
    diverged = mixed[2]
    assert diverged.outcome == "diverged" and diverged.stopped_epoch == 1
    assert diverged.diverged_step is not None and diverged.diverged_step >= 1
    assert "epoch 1, step" in diverged.reason and diverged.val_accuracy == []
    for got, want in zip(mixed[:2] + mixed[3:], clean):
        assert got.outcome == "completed"
        assert close(got.params, want.params) < TOL
        assert got.val_loss == pytest.approx(want.val_loss, abs=TOL)


def test_a_planted_nan_loss_diverges(digits):
    class Poisoned(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(64, 10)

        def forward(self, x):
            return self.linear(x) * torch.where(self.linear.bias[:1] > 1e9, 1.0, float("nan"))

    task = Task("nan", Poisoned, digits.train, digits.val, digits.test, 10)
    result = train_population(task, configs()[:1], epochs=2)[0]
    assert result.outcome == "diverged" and "not finite at epoch 1, step 1" in result.reason


def test_timings_are_recorded(digits):
    result = train_population(digits, configs()[:2], epochs=1)[0]
    assert result.seconds > 0 and result.step_ms > 0 and not math.isnan(result.step_ms)


def test_device_auto_is_cpu_here_and_cuda_is_refused_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the refusal cannot be seen here")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(BadInput, match="no CUDA device"):
        resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_population_on_cuda_matches_cpu(digits):
    cpu = train_population(digits, configs()[:2], epochs=1)
    gpu = train_population(digits.to(torch.device("cuda")), configs()[:2], epochs=1)
    for a, b in zip(cpu, gpu):
        assert a.val_loss == pytest.approx(b.val_loss, abs=1e-4)


def test_the_fused_mlp_path_equals_the_vmap_path(digits):
    """An nn.Sequential MLP takes the fused baddbmm forward; wrapped, the same model goes through vmap."""

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = digits.make_model()

        def forward(self, x):
            return self.net(x)

    task = Task("wrapped", Wrapped, digits.train, digits.val, digits.test, 10)
    fused = train_population(digits, configs()[:3], epochs=2)
    general = train_population(task, configs()[:3], epochs=2)
    for a, b in zip(fused, general):
        assert close(a.params, {k.removeprefix("net."): v for k, v in b.params.items()}) < TOL
        assert a.val_accuracy == pytest.approx(b.val_accuracy, abs=TOL)


def _relu_stack(outputs: int) -> nn.Module:  # a ReLU first and last too
    return nn.Sequential(nn.ReLU(), nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 11), nn.ReLU(),
                         nn.Linear(11, 8), nn.ReLU(), nn.Linear(8, outputs), nn.ReLU())


def _normalised(outputs: int) -> nn.Module:  # Dropout before and after a ReLU, BatchNorm with and without one
    return nn.Sequential(nn.Dropout(0.3), nn.Linear(7, 9), nn.BatchNorm1d(9), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(9, 11), nn.Dropout(0.5), nn.BatchNorm1d(11), nn.Linear(11, outputs))


def _normalised_first(outputs: int) -> nn.Module:  # BatchNorm on the inputs: no gradient flows below it
    return nn.Sequential(nn.BatchNorm1d(7, momentum=0.3), nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, outputs))


@pytest.mark.parametrize("make", [_relu_stack, _normalised, _normalised_first], ids=["relu", "bn-dropout", "bn-first"])
@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_the_fused_mlps_hand_written_gradients_equal_autograds(kind, make):
    """Members with different weights (BatchNorm's scale, shift and statistics too) and data; the same
    Dropout masks (two copies of one generator); the running statistics through the evaluation output."""
    torch.manual_seed(0)
    outputs = 5 if kind == "classification" else 3
    models = [make(outputs) for _ in range(4)]
    for model in models:
        for module in model:
            if isinstance(module, nn.BatchNorm1d):
                for t in (module.weight, module.bias, module.running_mean):
                    nn.init.normal_(t.data)
                module.running_var.uniform_(0.5, 2.0)
    probe = torch.randn(4, 2, 7)
    by_hand = _fused_mlp(models, torch.device("cpu"), kind, probe, torch.Generator().manual_seed(1))
    by_autograd = _fused_mlp(models, torch.device("cpu"), kind, probe, torch.Generator().manual_seed(1))
    for batch in (6, 2):  # a short last batch takes buffers of its own
        x = torch.randn(4, batch, 7)
        y = torch.randint(0, outputs, (4, batch)) if kind == "classification" else torch.randn(4, batch, outputs)
        params = [p.clone().requires_grad_() for p in by_autograd.params]
        losses = member_losses(kind, by_autograd.forward(params, x), y)
        want = torch.autograd.grad(losses.sum(), params)
        got_losses, got = by_hand.grads(by_hand.params, x, y)
        assert float((got_losses - losses.detach()).abs().max()) < TOL
        for g, w in zip(got, want):
            assert g.shape == w.shape and float((g - w).abs().max()) < TOL
    for batched in (by_hand, by_autograd):
        batched.train(False)
    with torch.no_grad():
        held_out = torch.randn(10, 7)
        assert float((by_hand.forward(by_hand.params, held_out) - by_autograd.forward(params, held_out)).abs().max()) < TOL


def test_the_fused_path_takes_batchnorm_and_dropout_mlps_on_flat_inputs_only():
    """The spirals model (BatchNorm1d, Dropout) is fused; on (B, C, L) inputs BatchNorm1d normalises per position: not."""
    device = torch.device("cpu")
    spirals = load_task(str(ROOT / "examples" / "my_task.py") + ":spirals")
    flat = [spirals.make_model() for _ in range(2)]
    assert _fused_mlp(flat, device, "classification", spirals.train[0][:4].view(2, 2, 2)) is not None
    sequence = [nn.Sequential(nn.BatchNorm1d(3), nn.Flatten(), nn.Linear(12, 2)) for _ in range(2)]
    assert _fused_mlp(sequence, device, "classification", torch.randn(2, 2, 3, 4)) is None
    evaluating = [nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3).eval(), nn.Linear(3, 2)) for _ in range(2)]
    assert _fused_mlp(evaluating, device, "classification", torch.randn(2, 2, 4)) is None


class Tanh(nn.Module):
    """Not a Linear/ReLU stack: trains through vmap(functional_call)."""

    def __init__(self):
        super().__init__()
        self.first, self.last = nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x):
        return self.last(torch.tanh(self.first(x)))


class Branchy(Tanh):
    """A Python branch on a tensor's value: torch.func cannot vectorise it, so members train one at a time."""

    def forward(self, x):
        h = self.first(x)
        return self.last(torch.relu(h) if float(h.sum()) > -1e30 else h)


def _first_frozen(make):
    def frozen():
        model = make()
        first = model[0] if isinstance(model, nn.Sequential) else model.first
        first.requires_grad_(False)
        return model
    return frozen


FROZEN_MODELS = {  # one per code path of the trainer
    "fused-mlp": _first_frozen(lambda: nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))),
    "vmap": _first_frozen(Tanh),
    "one-at-a-time": _first_frozen(Branchy),
}


@pytest.mark.parametrize("path", FROZEN_MODELS)
def test_frozen_parameters_stay_frozen_as_with_torch_sgd(digits, torch_sgd, path):
    """requires_grad=False: no step, no weight decay, no momentum; the rest trains as torch.optim.SGD trains it."""
    make = FROZEN_MODELS[path]
    task = Task("frozen", make, digits.train, digits.val, digits.test, 10)
    population = [make_config({"lr": lr, "weight_decay": 1e-2, "batch_size": 128, "momentum": 0.9}, 0)
                  for lr in (0.1, 0.03)]
    ours = train_population(task, population, epochs=2)
    for config, result in zip(population, ours):
        torch.manual_seed(config.seed)
        untouched = dict(make().named_parameters())
        model = torch_sgd(make, *digits.train, config, 2, nn.functional.cross_entropy)
        want = dict(model.named_parameters())
        assert close(want, result.params) < TOL
        frozen = [name for name, p in want.items() if not p.requires_grad]
        assert len(frozen) == 2 and all(torch.equal(result.params[n], untouched[n]) for n in frozen)
        assert close({n: want[n] for n in want if n not in frozen}, {n: untouched[n] for n in want if n not in frozen}) > 1e-3


def test_the_paths_are_the_ones_meant(digits):
    """The frozen-parameter test covers the fused, the vmap and the one-at-a-time path."""
    device, probe = torch.device("cpu"), digits.train[0][:4].view(2, 2, 64)
    models = {path: [make() for _ in range(2)] for path, make in FROZEN_MODELS.items()}
    assert _fused_mlp(models["fused-mlp"], device, "classification", probe) is not None
    assert _fused_mlp(models["vmap"], device, "classification", probe) is None
    assert _vmapped(models["vmap"], device, probe) is not None
    assert _vmapped(models["one-at-a-time"], device, probe) is None


@pytest.mark.parametrize("make", [_first_frozen(lambda: nn.Sequential(nn.Linear(64, 10))), lambda: nn.Sequential()],
                         ids=["all-frozen", "no-parameters"])
def test_a_model_with_nothing_to_train_is_refused(digits, make):
    def nothing():
        model = make()
        model.requires_grad_(False)
        return model

    task = Task("frozen", nothing, digits.train, digits.val, digits.test, 10)
    with pytest.raises(BadInput, match="has no trainable parameter"):
        train_population(task, configs()[:1], epochs=1)


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_evaluation_in_chunks_gives_what_one_pass_gives(kind, monkeypatch):
    """The validation split in chunks of EVAL_CHUNK // P examples, a short last one too (BatchNorm in evaluation
    mode): each member's loss, accuracy and standard error as from the whole split at once."""
    torch.manual_seed(0)
    outputs = 3
    models = [_normalised(outputs) for _ in range(4)]
    batched = _fused_mlp(models, torch.device("cpu"), kind, torch.randn(4, 2, 7))
    x = torch.randn(45, 7)
    y = torch.randint(0, outputs, (45,)) if kind == "classification" else torch.randn(45, outputs)
    whole = evaluate(batched, batched.params, kind, (x, y))
    monkeypatch.setattr(train_module, "EVAL_CHUNK", 4 * 8)  # 8 examples a chunk: 6 chunks, the last of 5
    chunked = evaluate(batched, batched.params, kind, (x, y))
    for a, b in zip(whole, chunked):
        assert torch.allclose(a, b, atol=TOL, equal_nan=True)
    assert whole[1].isnan().all() == (kind == "regression")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_memory_is_kept_for_the_next_step_under_glibc():
    assert keep_freed_memory() is True
