"""The trainer and the commands on CUDA, against the same work on the CPU (all skipped without a CUDA device).

Each of the trainer's paths (the fused MLP, the batched layers, vmap, one member at a time) trains a small
population on the CPU and on CUDA from the same initial parameters and the same minibatch order (both are
drawn on the CPU), so the results agree to rounding. Dropout draws its masks on the device: there, only
finite results are asked for. Then grid and check end to end with --device cuda.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hpsearch.optimizers import OPTIMIZERS
from hpsearch.recipe.check import check_setup
from hpsearch.tasks.builtin import Task

from helpers import close, run, study_trials, tiny
from test_train_layers import MODELS, Gated, config, gated_sequential, small, unknown_layer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA_TOL = 1e-4  # two epochs of float32 arithmetic in another order (cuBLAS against the CPU's kernels)


def both(task: Task, configs: list, epochs: int = 2):
    from hpsearch.train import train_population

    cpu = train_population(task, configs, epochs=epochs)
    gpu = train_population(task.to(torch.device("cuda")), configs, epochs=epochs)
    return cpu, gpu


def assert_agree(cpu, gpu) -> None:
    for a, b in zip(cpu, gpu):
        assert a.outcome == b.outcome == "completed"
        assert b.val_loss == pytest.approx(a.val_loss, abs=CUDA_TOL)
        assert all(t.device.type == "cpu" for t in b.params.values())  # results come back on the CPU
        assert close(a.params, b.params) < CUDA_TOL


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_the_fused_mlp_on_cuda_matches_the_cpu_for_every_optimizer(digits, optimizer):
    population = [config(optimizer, batch_size=64), config(optimizer, lr=0.02 if optimizer != "rmsprop" else 3e-4,
                                                              weight_decay=0.0, batch_size=64)]
    assert_agree(*both(digits, population, epochs=1))


@pytest.mark.parametrize("name", MODELS)
def test_the_batched_layers_on_cuda_match_the_cpu(name):
    population = [config("sgd", 0.1), config("adam"), config("sgd", 0.01, 0.0), config("rmsprop")]
    assert_agree(*both(small(MODELS[name]), population))


@pytest.mark.parametrize("make", [Gated, unknown_layer])
def test_vmap_on_cuda_matches_the_cpu(make):
    assert_agree(*both(small(make), [config("adam"), config("sgd", 0.05)]))


def test_one_member_at_a_time_on_cuda_matches_the_cpu():
    assert_agree(*both(small(gated_sequential), [config("nesterov"), config()]))


def test_dropout_on_cuda_trains_to_finite_losses():
    def dropout_mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.2), nn.Linear(12, 3))

    _, gpu = both(small(dropout_mlp), [config("sgd", 0.1), config("adam")])
    assert all(m.outcome == "completed" and all(math.isfinite(v) for v in m.val_loss) for m in gpu)


def test_grid_with_device_cuda_gives_the_cpus_accuracies(workdir):
    for study, device in (("g", "cuda"), ("c", "cpu")):
        result = run("grid", "--study", study, *tiny(device=device))
        assert result.exit_code == 0, result.output
    journal = str(workdir / "studies" / "hpsearch.journal")
    gpu, cpu = ({tuple(sorted(t.params.items())): t.value for t in study_trials(journal, s)} for s in ("g", "c"))
    assert len(gpu) == 8 and gpu.keys() == cpu.keys()
    for point, value in gpu.items():  # a validation example or two may flip with rounding
        assert value == pytest.approx(cpu[point], abs=0.01), point


def test_check_on_cuda_probes_memory(digits):
    task, findings = check_setup(task="digits", device="cuda", population=4)
    assert task.train[0].device.type == "cuda"
    memory = [f for f in findings if f.check == "memory"]
    assert len(memory) == 1 and "not probed" not in memory[0].text, findings
    assert not [f for f in findings if f.check == "overfit" and f.warning], findings
