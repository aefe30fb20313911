"""Populations side by side (hpsearch.objective.population): a convolutional model's batch sizes train at once,
a torch thread each; the numbers are those of one population after another (to the rounding of one thread
against two), and a re-run gives them to the bit.

Real torch, real models, tiny data: every path a convolutional model takes (the batched layers with
Dropout drawing from the population's generator, vmap and one-at-a-time drawing from torch's global one)
gives the same numbers side by side as one population after another, run after run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
import torch
from optuna.trial import TrialState
from torch import nn

import hpsearch.objective.population as population
from hpsearch.objective.base import Failure
from hpsearch.spec import make_config
from hpsearch.tasks.task import Task

from helpers import holding_task, running_trials, study_trials, tiny, wait_for

BATCH_SIZES = (8, 16, 32)


@pytest.fixture()
def two_threads():
    """Two torch threads, whatever this machine has: the lanes' condition."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def configs() -> list:
    return [make_config({"lr": lr, "weight_decay": 0.0, "batch_size": bs, "momentum": 0.9}, 0)
            for bs in BATCH_SIZES for lr in (0.1, 0.01)]


def convolutional_layers() -> nn.Module:
    """The batched layers' path, a convolution and Dropout (drawing from the population's generator) in it."""
    return nn.Sequential(nn.Unflatten(1, (1, 6)), nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 16),
                         nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


class Noisy(nn.Module):
    """Draws from torch's global generator in its forward (vmap's path): a noise layer, a convolution, Dropout."""

    def __init__(self):
        super().__init__()
        self.net = convolutional_layers()

    def forward(self, x):
        return self.net(x + 0.1 * torch.randn_like(x) if self.training else x)


class Branching(Noisy):
    """Python control flow on the data: vmap cannot batch it, so its members train one at a time."""

    def forward(self, x):
        return super().forward(x) if float(x.abs().sum()) >= 0 else -super().forward(x)


MODELS = {
    "layers with dropout": convolutional_layers,
    "vmap, global generator": Noisy,
    "one at a time, global generator": Branching,
}


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def objective(make_model) -> population.PopulationObjective:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    made = population.PopulationObjective("in-memory")
    made._task = Task("lanes", make_model, (x[:64], y[:64]), (x[64:], y[64:]), None, 3)  # a Task in place of a file
    return made


def train(obj: population.PopulationObjective, epochs: int = 2, on_epoch=lambda members, report: []) -> dict:
    """Each configuration's index -> (val losses, train losses), from every population's Done."""
    got = {}
    for members, results in obj.train(configs(), epochs, on_epoch):
        assert not isinstance(results, Failure), results
        got.update({i: (r.val_loss, r.train_loss) for i, r in zip(members, results)})
    return got


def one_at_a_time(monkeypatch) -> None:
    monkeypatch.setattr(population, "side_by_side", lambda populations, device: (1, torch.get_num_threads()))


def test_lanes_are_used_on_a_cpu_with_several_threads_for_convolutional_models(two_threads):
    assert population.side_by_side(3, "cpu") == (2, 2)
    assert population.side_by_side(1, "cpu") == (1, 2)
    assert population.side_by_side(3, "cuda") == (1, 2)
    assert [objective(m).convolutional() for m in (convolutional_layers, Noisy, mlp)] == [True, True, False]


def lanes_running() -> int:
    return sum(t.name == "hpsearch-population" and t.is_alive() for t in threading.enumerate())


def test_an_mlp_trains_one_population_after_another(two_threads):
    seen = {}
    for make_model in (mlp, convolutional_layers):
        seen[make_model] = []
        for _ in objective(make_model).train(configs(), 1, lambda m, r, s=seen[make_model]: s.append(
                lanes_running()) or []):
            pass
    assert set(seen[mlp]) == {0}
    assert max(seen[convolutional_layers]) == 2  # three populations, two at a time


@pytest.mark.parametrize("model", list(MODELS))
def test_side_by_side_gives_the_numbers_of_one_after_another(model, two_threads, monkeypatch):
    obj = objective(MODELS[model])
    lanes, again = train(obj), train(obj)
    one_at_a_time(monkeypatch)
    alone = train(obj)
    assert lanes == again  # run after run
    for i, (val, tr) in alone.items():  # one thread against two may round differently, never more
        assert lanes[i][0] == pytest.approx(val, rel=1e-4, abs=1e-5)
        assert lanes[i][1] == pytest.approx(tr, rel=1e-4, abs=1e-5)


def test_epoch_reports_come_back_to_the_calling_thread_and_can_stop_members(two_threads):
    seen = []

    def on_epoch(members, report):
        seen.append((threading.current_thread() is threading.main_thread(), report.epoch, tuple(members)))
        return [members[0]] if report.epoch == 1 else []  # stop each population's first member after epoch 1

    got = {}
    for members, results in objective(convolutional_layers).train(configs(), 3, on_epoch):
        got.update({i: r for i, r in zip(members, results)})
    assert all(main for main, _, _ in seen) and len(seen) > len(BATCH_SIZES)
    stopped = {i for i, r in got.items() if r.outcome == "stopped"}
    assert stopped == {0, 2, 4}  # the first of each batch size
    assert all(len(got[i].val_loss) == 1 for i in stopped) and all(len(got[i].val_loss) == 3 for i in {1, 3, 5})


def test_a_failing_population_fails_alone(two_threads):
    def fragile():  # fails at batch size 16 only: one population of three
        return Fragile()

    class Fragile(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(6, 3)

        def forward(self, x):
            if x.shape[-2] == 16:
                raise RuntimeError("no batch of 16 here")
            return self.layer(x)

    done = dict((tuple(m), r) for m, r in objective(fragile).train(configs(), 1, lambda m, r: []))
    assert isinstance(done[(2, 3)], Failure) and "no batch of 16" in done[(2, 3)].reason
    assert all(not isinstance(r, Failure) for m, r in done.items() if m != (2, 3))


def test_a_search_that_stops_early_leaves_no_lane_running(two_threads):
    ended = objective(convolutional_layers).train(configs(), 50, lambda m, r: [])
    next(ended)  # the first population done, the others mid-training
    assert lanes_running() > 0
    ended.close()
    wait_for(lambda: lanes_running() == 0, "the lanes to stop", timeout=60)
    assert torch.get_num_threads() == 2


@pytest.mark.slow
def test_ctrl_c_while_lanes_train_records_every_trial_in_flight_and_a_resume_completes_them(tmp_path):
    journal = str(tmp_path / "s.journal")
    args = ["grid", "--task", holding_task(tmp_path), *tiny(batch_size="16,32", device="cpu", epochs=2), "--study", "s",
            "--storage", journal]
    proc = subprocess.Popen([sys.executable, "-m", "hpsearch", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "2"})
    try:
        # both populations in their first step (the holding model waits there), each in its lane
        wait_for(lambda: proc.poll() is not None or len(running_trials(journal, "s")) == 8, "the 8 trials to train")
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and b"Traceback" not in err
    assert err.decode().splitlines()[-1].startswith("Error: interrupted by Ctrl-C: 8 running trial(s)")
    stopped = [t for t in study_trials(journal, "s") if t.user_attrs.get("outcome") == "interrupted"]
    assert len(stopped) == 8
    (tmp_path / "hold").unlink()
    rerun = subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=tmp_path, capture_output=True, check=False,
                           env={**os.environ, "OMP_NUM_THREADS": "2"}, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert sum(t.state == TrialState.COMPLETE for t in study_trials(journal, "s")) == 8
