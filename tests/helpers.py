"""What several test files share: the CLI in this process, the tiny grid, studies read back, bounded waits.

Plain functions and constants, imported as ``from helpers import run, tiny``: pytest puts tests/ on
sys.path (the folder has no __init__.py). Fixtures are in conftest.py.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import optuna
import torch
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, settings
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from torch import nn

from hpsearch.cli import main
from hpsearch.optimizers import Schedule
from hpsearch.space import Config
from hpsearch.storage.store import DEFAULT_JOURNAL, open_storage, study_names

ROOT = Path(__file__).resolve().parents[1]  # the checkout: README.md, studies/, examples/
TOL = 1e-5  # batched and unbatched matmuls may round differently (DESIGN.md)

# The property tests of the parsers (spec values, study files): 300 examples each, no per-example deadline.
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# The tiny digits grid: 2 learning rates x 2 weight decays x 2 batch sizes, 1 epoch = 8 trials.
TINY = {"lr": "1e-1,1e-2", "weight_decay": "0,1e-4", "batch_size": "64,128", "momentum": "0.9", "epochs": 1}


def tiny(**changes: object) -> list[str]:
    """The tiny grid as command-line flags, with ``changes`` (build_spec's keywords) over it.

    tiny(batch_size="32", device="cpu") == ["--lr", "1e-1,1e-2", ..., "--batch-size", "32", ..., "--device", "cpu"]
    """
    return [item for name, value in {**TINY, **changes}.items() for item in (f"--{name.replace('_', '-')}", str(value))]


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    """An hpsearch command run in this process by click's CliRunner: run("report", "g", "--format", "csv")."""
    return CliRunner().invoke(main, list(args), env=env)


def one_thread_env(**extra: str) -> dict[str, str]:
    """The environment of an hpsearch subprocess: one torch thread, as on cores shared with other jobs
    spinning threads make training ten times slower."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def plain_storage(path: str | Path, lock: object = None) -> JournalStorage:
    """A journal file as plain Optuna opens it: the yardstick of what any Optuna user reads from it."""
    return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))  # type: ignore[arg-type]


def plain_study(name: str, path: str | Path = DEFAULT_JOURNAL) -> optuna.Study:
    """Study ``name`` loaded by plain Optuna from the journal at ``path`` (by default the one hpsearch
    writes when given no --storage, relative to the current folder)."""
    return optuna.load_study(study_name=name, storage=plain_storage(path))


def study_trials(storage: str, study: str, missing_ok: bool = False) -> list[FrozenTrial]:
    """The trials of ``study`` as hpsearch reads them (any storage: a journal path or a database URL).

    ``missing_ok``: none, rather than an error, while the journal or the study does not exist yet (a
    worker killed early may not have created it).
    """
    if missing_ok and "://" not in storage and not os.path.exists(storage):
        return []
    store = open_storage(storage, create=False)
    if missing_ok and study not in study_names(store.storage):
        return []
    return optuna.load_study(study_name=study, storage=store.storage).get_trials(deepcopy=False)


def running_trials(storage: str, study: str) -> list[FrozenTrial]:
    """The trials of ``study`` a worker is running (signed); none before the study exists."""
    return [t for t in study_trials(storage, study, missing_ok=True)
            if t.state == TrialState.RUNNING and "worker" in t.user_attrs]


# A plug-in task whose model waits in its training forward while the file ``hold`` beside it exists: a test
# that signals or kills a process "while it trains" holds it there, so the process cannot finish first on a
# fast machine nor start late on a slow one; deleting the file lets training go on.
HOLDING_TASK = '''
import os
import time

import torch
from torch import nn
from hpsearch import Task

HOLD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hold")
g = torch.Generator().manual_seed(0)
x = torch.randn(96, 5, generator=g)
y = (x[:, 0] > 0).long()


class Holding(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(5, 2)

    def forward(self, inputs):
        while self.training and os.path.exists(HOLD):
            time.sleep(0.05)
        return self.layer(inputs)


def make():
    return Task("holding", Holding, (x[:64], y[:64]), (x[64:], y[64:]), None, 2)
'''


def holding_task(folder: Path) -> str:
    """Write the holding task into ``folder`` with its hold set; its --task reference."""
    (folder / "holding.py").write_text(HOLDING_TASK)
    (folder / "hold").touch()
    return str(folder / "holding.py") + ":make"


def completed_points(done: Iterable[FrozenTrial]) -> Counter:
    """How many times each configuration (its sorted params) completed."""
    return Counter(tuple(sorted(t.params.items())) for t in done if t.state == TrialState.COMPLETE)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 300.0) -> None:
    """Poll until ``condition()`` holds; fail after a timeout far beyond any machine's pace."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.05)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (its path relative to it) and its bytes; a folder as b"<folder>"."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<folder>")
            for p in sorted(folder.rglob("*"))}


def close(a: dict, b: dict) -> float:
    """The largest difference between two state dicts' tensors, key by key (compare it with TOL)."""
    return max(float((a[k].detach() - b[k].detach()).abs().max()) for k in a)


# --- the trainer's yardstick: torch.optim and torch.optim.lr_scheduler themselves ---


def torch_optimizer(params: list[torch.Tensor], c: Config) -> torch.optim.Optimizer:
    """The torch.optim optimizer a configuration means (hpsearch.optimizers' docstring)."""
    kind, lr, wd, m = c.get("optimizer", "sgd"), c.lr, c.weight_decay, c.momentum
    if kind in ("sgd", "nesterov"):  # torch refuses Nesterov without momentum: it is plain SGD then
        return torch.optim.SGD(params, lr=lr, momentum=m, weight_decay=wd, nesterov=kind == "nesterov" and m > 0)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(m, 0.999), eps=1e-8, weight_decay=wd)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(m, 0.999), eps=1e-8, weight_decay=wd)
    return torch.optim.RMSprop(params, lr=lr, alpha=0.99, eps=1e-8, weight_decay=wd, momentum=m)


def torch_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule, steps_per_epoch: int, epochs: int,
                    ) -> torch.optim.lr_scheduler.LRScheduler:
    """The torch.optim.lr_scheduler a Schedule means, stepped after every optimizer step."""
    lr_scheduler = torch.optim.lr_scheduler
    total = epochs * steps_per_epoch
    warm = schedule.warmup * steps_per_epoch
    # The warm-up first: each scheduler starts from the lr the one before it set, as in torch's own examples.
    chain = [lr_scheduler.LinearLR(optimizer, 1 / warm, 1.0, warm)] if warm else []
    if schedule.name == "step":
        chain.append(lr_scheduler.StepLR(optimizer, step_size=max(1, total // 3), gamma=0.1))
    elif schedule.name == "cosine":
        chain.append(lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=0))
    elif schedule.name == "exponential":
        chain.append(lr_scheduler.ExponentialLR(optimizer, gamma=0.01 ** (1 / total)))
    if not chain:  # constant, no warm-up
        return lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return lr_scheduler.ChainedScheduler(chain) if len(chain) > 1 else chain[0]


def torch_train(make_model, x, y, c: Config, epochs: int, loss, schedule: Schedule | None = None) -> nn.Module:
    """One configuration trained the plain way with torch.optim and its scheduler: the trainer's yardstick.

    The model is built after torch.manual_seed(config.seed) and the data order drawn from a generator
    seeded with it, as the population trainer does for each member; returns the trained model.
    """
    torch.manual_seed(c.seed)
    model = make_model()
    optimizer = torch_optimizer(list(model.parameters()), c)
    steps = -(-len(x) // c.batch_size)
    scheduler = torch_scheduler(optimizer, schedule or Schedule(), steps, epochs)
    order = torch.Generator().manual_seed(c.seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=order)
        for start in range(0, len(x), c.batch_size):
            index = perm[start:start + c.batch_size]
            optimizer.zero_grad()
            loss(model(x[index]), y[index]).backward()
            optimizer.step()
            scheduler.step()
    return model
