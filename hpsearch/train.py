"""The population trainer: plain PyTorch, and it knows nothing of Optuna.

Configurations that share a task and a batch size train together as one batched model:
parameters stacked per member, one vmapped forward, one backward over the summed member losses,
and a vectorised SGD step with per-member learning rate, weight decay and momentum
(``torch.optim.SGD`` semantics: coupled weight decay, dampening 0, no Nesterov).
Each member has its own seed for initialisation and data order, so a member ends where the same
configuration trained alone would: a population of one *is* the single-trial trainer.

The host reads metrics once per epoch; divergence is detected on the device at every step.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from hpsearch.errors import BadInput
from hpsearch.spec import Config
from hpsearch.tasks import Task

DIVERGENCE_FACTOR = 10.0  # a loss above 10x the member's first loss counts as exploding (DESIGN.md)


@dataclass(frozen=True)
class EpochReport:
    """What the trainer tells its caller after each epoch (epochs count from 1)."""

    epoch: int
    members: list[int]  # indices into the configurations that finished this epoch healthy
    train_loss: list[float]
    val_loss: list[float]
    val_accuracy: list[float]
    diverged: list[int]  # indices that diverged during this epoch
    seconds: float


# Returns the indices of members to stop now (pruning); divergence is handled by the trainer.
EpochCallback = Callable[[EpochReport], Iterable[int]]


@dataclass
class MemberResult:
    config: Config
    outcome: str = "completed"  # completed | diverged | stopped
    train_loss: list[float] = field(default_factory=list)  # one value per finished epoch
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    stopped_epoch: int | None = None  # the epoch in which it diverged or was stopped
    diverged_step: int | None = None  # the step within that epoch (from 1)
    reason: str = ""
    seconds: float = 0.0  # this member's share of the population's wall time
    step_ms: float = 0.0  # mean wall time of one (population) step while this member trained
    params: dict[str, torch.Tensor] = field(default_factory=dict)  # final parameters, on the CPU


def resolve_device(name: str = "auto") -> torch.device:
    """auto picks CUDA when present; asking for CUDA where there is none is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"--device {name}: no CUDA device is visible here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BadInput(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def _per_member(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def _fused_mlp(model: nn.Module) -> Callable[..., torch.Tensor] | None:
    """The batched forward of an nn.Sequential of Linear and ReLU layers as baddbmm calls.

    The same arithmetic as vmap(functional_call) without its per-call dispatch cost, which
    dominates small models; any other model goes through vmap.
    """
    if not isinstance(model, nn.Sequential):
        return None
    layers: list[tuple[str, str]] = []
    for name, module in model.named_children():
        if isinstance(module, nn.Linear) and module.bias is not None:
            layers.append(("linear", name))
        elif isinstance(module, nn.ReLU):
            layers.append(("relu", name))
        else:
            return None

    def forward(params: dict[str, torch.Tensor], buffers: dict, x: torch.Tensor) -> torch.Tensor:
        h = x
        for kind, name in layers:
            if kind == "relu":
                h = torch.relu(h)
                continue
            weight = params[f"{name}.weight"]
            if h.dim() == 2:  # inputs shared by every member (validation)
                h = h.expand(weight.shape[0], *h.shape)
            h = torch.baddbmm(params[f"{name}.bias"].unsqueeze(1), h, weight.transpose(1, 2))
        return h

    return forward


def train_population(
    task: Task,
    configs: Sequence[Config],
    epochs: int,
    on_epoch: EpochCallback | None = None,
) -> list[MemberResult]:
    """Train every configuration (all of one batch size) on ``task``'s device; results in input order."""
    if not configs:
        return []
    batch_size = configs[0].batch_size
    if any(c.batch_size != batch_size for c in configs):
        raise ValueError("a population shares one batch size")
    x_train, y_train = task.train
    x_val, y_val = task.val
    device = x_train.device
    n = len(x_train)
    steps = math.ceil(n / batch_size)

    models = []
    with torch.random.fork_rng(devices=[]):
        for c in configs:
            # The CPU generator is what initialises a model built on the CPU; torch.manual_seed
            # would also seed every accelerator backend, at ~1 ms a call.
            torch.default_generator.manual_seed(c.seed)
            models.append(task.make_model())
    stacked, buffers = stack_module_state(models)
    # All parameters of a member in one row of a (P, N) tensor: the SGD step is four operations
    # for the whole population, and each parameter is a view of its slice.
    names = list(stacked)
    shapes = [tuple(v.shape[1:]) for v in stacked.values()]
    sizes = [math.prod(shape) for shape in shapes]
    flat = torch.cat([v.detach().reshape(len(configs), -1) for v in stacked.values()], 1).to(device).requires_grad_()
    buffers = {k: v.to(device) for k, v in buffers.items()}
    base = models[0].to("meta")

    def unflatten(rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: part.view(-1, *shape) for name, shape, part in zip(names, shapes, rows.split(sizes, 1))}

    def forward_one(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (x,))

    fused = _fused_mlp(models[0])
    forward = fused or vmap(forward_one)
    forward_shared = fused or vmap(forward_one, in_dims=(0, 0, None))

    ids = list(range(len(configs)))  # original index of each row still training
    results = [MemberResult(c) for c in configs]
    generators = [torch.Generator().manual_seed(c.seed) for c in configs]
    lr = _per_member([c.lr for c in configs], x_train).unsqueeze(1)
    wd = _per_member([c.weight_decay for c in configs], x_train).unsqueeze(1)
    mom = _per_member([c.momentum for c in configs], x_train).unsqueeze(1)
    velocity = torch.zeros_like(flat)
    limit: torch.Tensor | None = None

    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        rows = len(ids)
        alive = torch.ones(rows, dtype=torch.bool, device=device)
        bad_step = torch.zeros(rows, dtype=torch.long, device=device)
        bad_loss = torch.zeros(rows, device=device)
        loss_sum = torch.zeros(rows, device=device)
        order = torch.stack([torch.randperm(n, generator=generators[i]) for i in ids]).to(device)
        base.train()
        for step in range(steps):
            index = order[:, step * batch_size:(step + 1) * batch_size]
            logits = forward(unflatten(flat), buffers, x_train[index])
            losses = F.cross_entropy(logits.flatten(0, 1), y_train[index].flatten(), reduction="none")
            losses = losses.view(rows, -1).mean(1)
            (grad,) = torch.autograd.grad(torch.where(alive, losses, 0.0).sum(), flat)
            with torch.no_grad():
                loss = losses.detach()
                if limit is None:
                    limit = DIVERGENCE_FACTOR * loss
                bad = alive & ~(loss <= limit)  # also true for NaN and inf
                bad_step = torch.where(bad, step + 1, bad_step)
                bad_loss = torch.where(bad, loss, bad_loss)
                alive &= ~bad
                loss_sum += torch.where(alive, loss, 0.0)
                # torch.optim.SGD: d = g + wd * p; v = momentum * v + d; p = p - lr * v
                velocity.mul_(mom).add_(torch.addcmul(grad, flat, wd))
                flat.addcmul_((lr * alive.unsqueeze(1)), velocity, value=-1.0)
        with torch.no_grad():
            base.eval()
            logits = forward_shared(unflatten(flat), buffers, x_val)
            val_losses = F.cross_entropy(logits.flatten(0, 1), y_val.repeat(rows), reduction="none").view(rows, -1).mean(1)
            val_acc = (logits.argmax(-1) == y_val).float().mean(1)
            stats = torch.stack([loss_sum / steps, val_losses, val_acc, alive.float(), bad_step.float(), bad_loss]).cpu()
        seconds = time.perf_counter() - started

        healthy, diverged = [], []
        for row, i in enumerate(ids):
            r = results[i]
            r.seconds += seconds / rows
            r.step_ms += (seconds / steps * 1000 - r.step_ms) / epoch  # running mean over epochs
            train_loss, val_loss, val_accuracy, ok, step, value = stats[:, row].tolist()
            if ok and math.isfinite(val_loss):
                r.train_loss.append(train_loss)
                r.val_loss.append(val_loss)
                r.val_accuracy.append(val_accuracy)
                healthy.append(i)
                continue
            r.outcome, r.stopped_epoch = "diverged", epoch
            if ok:
                r.reason = f"validation loss not finite after epoch {epoch}"
            else:
                r.diverged_step = int(step)
                what = "not finite" if not math.isfinite(value) else f"{value:.3g} > {DIVERGENCE_FACTOR:g}x its first loss"
                r.reason = f"training loss {what} at epoch {epoch}, step {int(step)}"
            diverged.append(i)
        report = EpochReport(
            epoch,
            healthy,
            [results[i].train_loss[-1] for i in healthy],
            [results[i].val_loss[-1] for i in healthy],
            [results[i].val_accuracy[-1] for i in healthy],
            diverged,
            seconds,
        )
        stop = set(on_epoch(report)) if on_epoch else set()
        for i in stop & set(healthy):
            results[i].outcome, results[i].stopped_epoch, results[i].reason = "stopped", epoch, f"stopped after epoch {epoch}"
        keep_rows = [row for row, i in enumerate(ids) if i in healthy and i not in stop]
        if epoch == epochs:
            keep_rows = []
        if len(keep_rows) < rows:
            params = unflatten(flat.detach())
            for row, i in enumerate(ids):
                if row not in keep_rows:
                    results[i].params = {k: v[row].cpu() for k, v in params.items()}
            keep = torch.tensor(keep_rows, dtype=torch.long, device=device)
            ids = [ids[row] for row in keep_rows]
            flat = flat.detach()[keep].requires_grad_()
            velocity = velocity[keep]
            buffers = {k: v[keep] for k, v in buffers.items()}
            lr, wd, mom, limit = lr[keep], wd[keep], mom[keep], limit[keep]
        if not ids:
            break
    return results
