"""Sanity checks before a search: the recipe's checks that no tuner does for you.

Before spending hours on a search, check the setup: the parameter count; the initial loss of a
C-class classifier (about ln C; a softmax before the cross-entropy loss gives about ln C too, but
tiny gradients, so its outputs are inspected); whether the model can overfit one batch; the range of
learning rates that make the loss drop within 100 steps (recipe/probe.py); the step time per batch
size (an iteration over ~500 ms makes a search hard to afford); and on CUDA the largest batch size
that fits. Each finding is one line for a person; the CLI prints them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from hpsearch.recipe.estimate import SLOW_STEP_MS, measure, step_ms
from hpsearch.recipe.probe import lr_probe
from hpsearch.errors import BadInput
from hpsearch.space import ADAPTIVE, OPTIMIZERS
from hpsearch.spec import check_int, make_config, task_reference
from hpsearch.tasks.builtin import load_task
from hpsearch.tasks.task import Task, require_trainable
from hpsearch.train import EpochReport, member_losses, resolve_device, seeded_model, train_population

OVERFIT_BATCH = 32
OVERFIT_STEPS = 500
OVERFIT_SHARE = 0.01  # "overfitted": the batch's loss below 1% of its initial loss
OVERFIT_LRS = (1.0, 0.3, 0.1, 0.03, 0.01)  # trained at once, one population: one of them suits most models
OVERFIT_ADAPTIVE_LRS = (0.1, 0.03, 0.01, 3e-3, 1e-3)  # Adam, AdamW, RMSprop: a tenth of SGD's (space.ADAPTIVE)
NAMES = {"sgd": "SGD", "nesterov": "SGD with Nesterov momentum", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop"}
PROBE_BATCH_SIZES = (32, 64, 128, 256)
LOSS_TOLERANCE = 0.2  # relative distance from ln(C) that an initial loss may have
INITIAL_EXAMPLES = 512  # examples the initial loss is measured on


@dataclass(frozen=True)
class Finding:
    """One line for a person; ``warning`` when it looks wrong."""

    check: str  # parameters | initial loss | outputs | overfit | lr probe | step time | memory
    text: str
    warning: bool = False


def check_setup(task: str | None = None, data: str | None = None, target: str | None = None, kind: str | None = None,
                device: str = "auto", population: int = 64, optimizer: str = "sgd") -> tuple[Task, list[Finding]]:
    """``hpsearch check``: the task named as a search names it (--task, or --data), on ``device``, checked."""
    reference, _ = task_reference(task, data, target, kind)
    loaded = load_task(reference, target, kind).to(resolve_device(device))
    return loaded, run_checks(loaded, population, optimizer=optimizer)


def run_checks(task: Task, population: int = 64, overfit_steps: int = OVERFIT_STEPS,
               optimizer: str = "sgd") -> list[Finding]:
    """Every check on ``task`` (its tensors already on the device to check), training with ``optimizer``.

    A model with no trainable parameter is refused (BadInput) before any check: none would mean anything.
    """
    check_int("population", population)
    if optimizer not in OPTIMIZERS:
        raise BadInput(f"--optimizer {optimizer}: choose one of {', '.join(OPTIMIZERS)}")
    require_trainable(_fresh_model(task), f"task '{task.name}'")
    return [parameter_count(task), *initial_loss(task), overfit_one_batch(task, overfit_steps, optimizer),
            learning_rates(task, optimizer), *step_times(task, population, optimizer),
            memory(task, population, optimizer)]


def _fresh_model(task: Task, seed: int = 0) -> torch.nn.Module:
    return seeded_model(task, seed).to(task.train[0].device)


def parameter_count(task: Task) -> Finding:
    model = _fresh_model(task)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = f", {total - trainable:,} of them frozen" if trainable < total else ""
    return Finding("parameters", f"{total:,} parameters in the {type(model).__name__} model{frozen}")


def initial_loss(task: Task) -> list[Finding]:
    """The loss before training against what chance gives; and whether the outputs look like probabilities."""
    x, y = (t[:INITIAL_EXAMPLES] for t in task.train)
    model = _fresh_model(task).eval()
    with torch.no_grad():
        outputs = model(x)
        loss = member_losses(task.kind, outputs.unsqueeze(0), y).item()
    if task.kind == "regression":
        chance = y.float().var(0, unbiased=False).mean().item()  # predicting the mean
        far = loss > 10 * chance + 1e-12
        advice = ": the initial outputs are far off the targets' scale; standardise the targets" if far else ""
        return [Finding("initial loss", f"initial loss (mean squared error) {loss:.3g}; predicting the mean "
                        f"would give {chance:.3g}{advice}", far)]
    chance = math.log(task.num_classes)
    text = f"initial loss {loss:.3f}, ln({task.num_classes}) = {chance:.3f}"
    findings = []
    if abs(loss - chance) <= LOSS_TOLERANCE * chance:
        findings.append(Finding("initial loss", f"{text}: as expected for {task.num_classes} classes"))
    elif loss > chance:
        findings.append(Finding("initial loss", f"{text}: too high; the untrained model is confidently wrong "
                                "(initial outputs too large: shrink the last layer's initialisation)", True))
    else:
        findings.append(Finding("initial loss", f"{text}: lower than chance before training; check that the "
                                "labels do not leak into the inputs", True))
    if outputs.dim() == 2 and outputs.min() >= 0 and outputs.max() <= 1 \
            and torch.allclose(outputs.sum(1), torch.ones(len(outputs), device=outputs.device), atol=1e-4):
        findings.append(Finding("outputs", "the model's outputs sum to 1 per row: it looks like softmax before the "
                                "cross-entropy loss (initial loss near ln(C) but tiny gradients); return logits",
                                True))
    return findings


def overfit_one_batch(task: Task, steps: int = OVERFIT_STEPS, optimizer: str = "sgd") -> Finding:
    """``optimizer`` (momentum 0.9, no weight decay) on one batch, several learning rates at once, until one fits it."""
    x, y = (t[:OVERFIT_BATCH] for t in task.train)
    batch = len(x)
    one_batch = replace(task, train=(x, y), val=(x, y))  # an epoch is one step; "validation" is the batch itself
    rates = OVERFIT_ADAPTIVE_LRS if optimizer in ADAPTIVE else OVERFIT_LRS
    configs = [make_config({"lr": lr, "weight_decay": 0.0, "batch_size": batch, "momentum": 0.9, "optimizer": optimizer}, 0)
               for lr in rates]
    first: dict[int, float] = {}
    best: dict[int, float] = {}
    fitted: list[tuple[int, int, float]] = []  # (step, member, loss)

    def on_epoch(report: EpochReport) -> list[int]:
        for member, before, after in zip(report.members, report.train_loss, report.val_loss):
            first.setdefault(member, before)
            best[member] = min(best.get(member, math.inf), after)
            if after <= OVERFIT_SHARE * first[member]:
                fitted.append((report.epoch, member, after))
        return report.members if fitted else []

    train_population(one_batch, configs, steps, on_epoch)
    what = f"one batch of {batch}"
    if fitted:
        step, member, loss = min(fitted)
        return Finding("overfit", f"can overfit {what}: loss {first[member]:.3g} -> {loss:.3g} in {step} steps "
                       f"({NAMES[optimizer]} lr {configs[member].lr:g}, momentum 0.9)")
    if not best:
        return Finding("overfit", f"could not overfit {what}: every learning rate from {min(rates):g} to "
                       f"{max(rates):g} diverged at once; check the loss and the initialisation", True)
    member = min(best, key=lambda m: best[m] / first[m])
    return Finding("overfit", f"could not overfit {what} in {steps} steps (best: loss {first[member]:.3g} -> "
                   f"{best[member]:.3g} at lr {configs[member].lr:g}): check that the output depends on the input, "
                   "that the parameters train, and the loss", True)


def learning_rates(task: Task, optimizer: str = "sgd") -> Finding:
    """The learning-rate probe's verdict: the rates that make the loss drop within 100 steps, the grid to search."""
    probe = lr_probe(task, optimizer=optimizer)
    return Finding("lr probe", probe.summary, probe.warning)


def step_times(task: Task, population: int = 64, optimizer: str = "sgd") -> list[Finding]:
    """The wall time of one training step (with ``optimizer``) per batch size, alone and as a population."""
    n = len(task.train[0])
    sizes = [size for size in PROBE_BATCH_SIZES if size <= n] or [n]
    measure(task, sizes[0], 1, optimizer)  # warm-up: the first call pays one-off costs
    findings = []
    for size in sizes:
        alone = step_ms(task, size, measure(task, size, 1, optimizer)[1])
        together = step_ms(task, size, measure(task, size, population, optimizer)[1])
        slow = alone > SLOW_STEP_MS
        advice = f": over {SLOW_STEP_MS:g} ms, a search will be hard to afford" if slow else ""
        findings.append(Finding("step time", f"batch size {size}: {alone:.2f} ms a step alone, {together:.2f} ms for "
                                f"{population} members ({together / population:.3f} ms each){advice}", slow))
    return findings


def memory(task: Task, population: int = 64, optimizer: str = "sgd") -> Finding:
    """On CUDA, the largest power-of-two batch size a population trains with; on the CPU, nothing is probed."""
    device = task.train[0].device
    if device.type != "cuda":
        return Finding("memory", f"on {device.type.upper()}: memory not probed")
    n = len(task.train[0])
    fits = 0
    size = 32
    while size <= n:
        try:
            measure(task, size, population, optimizer)  # Adam holds two more tensors per parameter than SGD
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        fits, size = size, size * 2
    whole = f" (the training set has {n:,} examples)" if size > n else ""
    if not fits:
        return Finding("memory", f"on {device}: {population} members do not fit even at batch size 32", True)
    return Finding("memory", f"on {device}: {population} members train at batch size {fits:,}{whole}")
