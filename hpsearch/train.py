"""The population trainer: plain PyTorch, and it knows nothing of Optuna.

Configurations that share a task and a batch size train together as one batched model:
parameters stacked per member, one batched forward, one backward over the summed member losses,
through the first path that takes the model: an nn.Sequential of Linear, ReLU, BatchNorm1d and Dropout
on flat inputs as baddbmm calls with a hand-written backward (no autograd engine); an nn.Sequential of
the layers in _ELEMENTWISE and _layer_ok (Linear, Conv1d/2d, BatchNorm1d/2d, Dropout, Flatten, Unflatten)
as batched operations under autograd (convolutions as im2col + baddbmm, BatchNorm over P x C channels);
any other model through vmap(functional_call) and autograd;
and a vectorised optimizer step (``hpsearch.optimizers.PopulationOptimizer``: each member's own
optimizer, learning rate, weight decay and momentum, torch.optim's semantics) under one learning-rate
schedule, stepped every step as torch.optim.lr_scheduler steps it.
A parameter with ``requires_grad=False`` stays frozen, as under torch.optim (no step, no weight
decay, no optimizer state); a model with no trainable parameter is refused.
Each member has its own seed for initialisation and data order, so a member ends where the same
configuration trained alone would: a population of one *is* the single-trial trainer.
BatchNorm keeps running statistics per member; Dropout draws different masks per member (so
equality with a solo run holds for models without randomness). A model torch.func cannot
vectorise trains through the same interface with a forward that loops over the members.
Loss: cross-entropy for classification, mean squared error for regression.

The host reads metrics once per epoch; divergence is detected on the device at every step.
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import itertools
import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from hpsearch.errors import BadInput
from hpsearch.optimizers import OPTIMIZERS, PopulationOptimizer, Schedule, optimizer_of
from hpsearch.spec import Config, Kind
from hpsearch.tasks.task import Task, note_once, require_trainable

DIVERGENCE_FACTOR = 10.0  # a loss above 10x the member's first loss counts as exploding (DESIGN.md)
# Held while torch's global random generator is seeded and drawn from (models built, a path that draws from it),
# so that populations trained side by side in threads never draw each other's numbers.
GLOBAL_RNG = threading.RLock()


@dataclass(frozen=True)
class EpochReport:
    """What the trainer tells its caller after each epoch (epochs count from 1)."""

    epoch: int
    members: list[int]  # indices into the configurations that finished this epoch healthy
    train_loss: list[float]
    val_loss: list[float]
    val_accuracy: list[float]  # empty for a regression task
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
    val_accuracy: list[float] = field(default_factory=list)  # stays empty for a regression task
    stopped_epoch: int | None = None  # the epoch in which it diverged or was stopped
    diverged_step: int | None = None  # the step within that epoch (from 1)
    reason: str = ""
    seconds: float = 0.0  # this member's share of the population's wall time
    step_ms: float = 0.0  # mean wall time of one (population) step while this member trained
    # The last validation loss's standard error over the validation examples, and how many there are
    # (a binomial standard error for the accuracy): how far the ranking can be trusted. None: not known.
    val_loss_se: float | None = None
    val_examples: int | None = None
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


# (params, x, y) -> (member losses, gradients): what member_losses and torch.autograd.grad would give.
Grads = Callable[[list[torch.Tensor], torch.Tensor, torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]


@dataclass
class _Batched:
    """A population's parameters as leaf tensors (P, ...) in the trainer's layout, and how to use them.

    ``forward(params, x)`` maps inputs (P, B, ...) or shared inputs (B, ...) to outputs (P, B, C);
    ``export(params)`` gives the parameters under the module's names and layout. A parameter
    requires grad exactly when the module's does: the trainer steps only those (frozen ones stay).
    """

    params: list[torch.Tensor]
    forward: Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]
    export: Callable[[list[torch.Tensor]], dict[str, torch.Tensor]]
    train: Callable[[bool], object] = lambda mode: None  # training / evaluation mode of the modules
    keep: Callable[[torch.Tensor], None] = lambda rows: None  # drop the buffers of members that left
    grads: Grads | None = None  # written by hand; None: the trainer calls torch.autograd.grad
    global_rng: bool = False  # draws random numbers (the model's own Dropout) from torch's global generator


def _fused_mlp(models: list[nn.Module], device: torch.device, kind: Kind, probe: torch.Tensor,
               generator: torch.Generator | None = None) -> _Batched | None:
    """An nn.Sequential of Linear, ReLU, BatchNorm1d and Dropout layers on flat inputs as baddbmm calls and
    tensor operations, with a hand-written backward (_FusedMLP).

    Each parameter is a leaf tensor of its own: with all of them views of one flat tensor a step was
    slower (autograd concatenated the gradients; bmm with out= into a strided view copies). Weights keep
    nn.Linear's layout (P, out, in): measured on digits (96 members, batch size 16), the 128-to-10
    layer's forward and backward took 0.3 ms in it and 0.75 ms stored transposed (P, in, out); the
    64-to-128 layer took the same in both. BatchNorm's weight, bias and running statistics are (P, 1, C).
    Checked against member 0's own module on ``probe`` (P, B, F) in evaluation mode: None when it
    differs (the batched-layers path is next).
    """
    if not isinstance(models[0], nn.Sequential) or probe.dim() != 3:
        return None
    layers: list[nn.Module] = []  # Linear, ReLU, BatchNorm1d or Dropout
    names: list[str] = []  # the Linear and BatchNorm1d layers' names, in order
    for name, module in models[0].named_children():
        norm = isinstance(module, nn.BatchNorm1d) and _layer_ok(module) and module.training
        if not (norm or isinstance(module, (nn.ReLU, nn.Dropout)) or isinstance(module, nn.Linear) and module.bias is not None):
            return None
        layers.append(module)
        if isinstance(module, (nn.Linear, nn.BatchNorm1d)):
            names.append(name)
    if not any(isinstance(module, nn.Linear) for module in layers):
        return None
    params, buffers = [], []
    for name, module in zip(names, (m for m in layers if isinstance(m, (nn.Linear, nn.BatchNorm1d)))):
        weights = torch.stack([dict(m.named_parameters())[f"{name}.weight"].detach() for m in models])
        biases = torch.stack([dict(m.named_parameters())[f"{name}.bias"].detach() for m in models])
        if isinstance(module, nn.BatchNorm1d):  # (P, 1, C), as the per-member statistics
            weights = weights.unsqueeze(1)
            buffers += [torch.stack([dict(m.named_buffers())[f"{name}.{b}"] for m in models]).unsqueeze(1).to(device)
                        for b in ("running_mean", "running_var")]
        # requires_grad only marks what the trainer steps: the gradients are written by hand
        params += [weights.to(device).requires_grad_(module.weight.requires_grad),
                   biases.unsqueeze(1).to(device).requires_grad_(module.bias.requires_grad)]
    mlp = _FusedMLP(layers, names, kind, buffers, generator)
    try:
        with torch.no_grad():
            got = mlp.run(params, probe, training=False)[0][0]
            want = copy.deepcopy(models[0]).to(device).eval()(probe[0])
            if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
                return None
    except Exception:  # noqa: BLE001 - whatever it cannot do, the batched layers or vmap may
        return None
    return _Batched(params, mlp.forward, mlp.export, mlp.train, mlp.keep, grads=mlp.grads)


class _FusedMLP:
    """The fused MLP's forward and hand-written backward: the same arithmetic as vmap(functional_call),
    without its dispatch cost or the autograd engine's.

    BatchNorm normalises each member over its batch (dimension 1) where it lies, with no copy to a
    channels-first layout and back; its input gradient is scale (d - mean(d) - xhat mean(d xhat)).
    Dropout draws from ``generator`` (None: torch's global one), as _dropout does.
    """

    def __init__(self, layers: list[nn.Module], names: list[str], kind: Kind, buffers: list[torch.Tensor],
                 generator: torch.Generator | None) -> None:
        self.layers, self.names, self.kind, self.generator = layers, names, kind, generator
        self.buffers = buffers  # each BatchNorm's running mean and variance (P, 1, C), in order
        with_params = [m for m in layers if isinstance(m, (nn.Linear, nn.BatchNorm1d))]
        self.linears = [2 * i for i, m in enumerate(with_params) if isinstance(m, nn.Linear)]  # weights in params
        self.first = next(j for j, m in enumerate(layers) if isinstance(m, (nn.Linear, nn.BatchNorm1d)))  # none below
        self.training = True
        # Gradients ("grads"), and per (P, B) each Linear's output then its input's gradient: buffers reused
        # across steps (3-10% of a step at batch sizes 16 and 32 on digits), made afresh when the population
        # shrinks, and once more for a short last batch.
        self.work: dict = {}

    def forward(self, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return self.run(params, x, self.training)[0]

    def export(self, params: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, name in enumerate(self.names):
            weight = params[2 * k].detach()
            out[f"{name}.weight"] = weight if 2 * k in self.linears else weight.squeeze(1)  # BatchNorm's (P, 1, C)
            out[f"{name}.bias"] = params[2 * k + 1].detach().squeeze(1)
        return out

    def train(self, mode: bool) -> None:
        self.training = mode

    def keep(self, rows: torch.Tensor) -> None:
        self.buffers[:] = [b[rows] for b in self.buffers]

    def run(self, params: list[torch.Tensor], x: torch.Tensor, training: bool,
            space: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, list]:
        """Outputs (P, B, C) and what the backward needs, layer by layer.

        x (P, B, F), or (B, F) shared by every member (evaluation). In training BatchNorm normalises by the
        batch's statistics and updates the running ones (torch's momentum and unbiased variance); Dropout
        draws its masks. ``space``: each Linear's output buffer (the backward's reuse; None: fresh tensors).
        Differentiable by autograd as well (tests compare the hand-written backward with it).
        """
        saved: list = []  # per layer: a Linear's input; a ReLU's output; a Dropout's mask; BatchNorm's (xhat, scale)
        h, k, b, linear = x, 0, 0, 0
        for module in self.layers:
            if isinstance(module, nn.ReLU):
                h = torch.relu(h) if h is x or space is None else h.relu_()
                saved.append(h)
            elif isinstance(module, nn.Dropout):
                mask = _keep_mask(h, module.p, self.generator) if training and module.training else None
                if mask is not None:  # in place, a ReLU just before keeps the masked output as its own: its
                    # backward reads it only where the mask kept (d is zero elsewhere by then), so nothing changes
                    h = h * mask if h is x or space is None else h.mul_(mask)
                saved.append(mask)
            elif isinstance(module, nn.Linear):
                weight, bias = params[k], params[k + 1]
                k += 2
                if h.dim() == 2:  # inputs shared by every member (validation)
                    h = h.expand(weight.shape[0], *h.shape)
                saved.append(h)
                out = None if space is None else space[linear]
                linear += 1
                h = torch.baddbmm(bias, h, weight.transpose(1, 2), out=out)
            else:  # BatchNorm1d over each member's batch
                weight, bias, mean, var = params[k], params[k + 1], self.buffers[b], self.buffers[b + 1]
                k, b = k + 2, b + 2
                if h.dim() == 2:
                    h = h.expand(weight.shape[0], *h.shape)
                if not training:
                    scale = (var + module.eps).rsqrt_().mul_(weight)
                    h = torch.addcmul(bias - mean * scale, h, scale)
                    saved.append(None)
                    continue
                batch = h.shape[1]
                if batch < 2:
                    raise ValueError(f"Expected more than 1 value per channel when training, got a batch of {batch}")
                # Two passes of sums over the batch: torch.var_mean over this middle dimension took 0.23 ms on
                # (12, 32, 64), two fifths of a spirals step; x * x, as square (pow's kernel) took 3x as long.
                batch_mean = h.mean(1, keepdim=True)
                centred = h - batch_mean
                batch_var = (centred * centred).mean(1, keepdim=True)
                invstd = (batch_var + module.eps).rsqrt()
                xhat = centred * invstd
                h = torch.addcmul(bias, xhat, weight)
                saved.append((xhat, invstd * weight))
                with torch.no_grad():
                    m = module.momentum
                    mean.mul_(1 - m).add_(batch_mean.detach(), alpha=m)
                    var.mul_(1 - m).add_(batch_var.detach(), alpha=m * batch / (batch - 1))
        return h, saved

    def grads(self, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """member_losses and their gradients, without autograd: x (P, B, in), y per member.

        The backward is the chain rule layer by layer, bmm calls whose transposed operands are strided
        views (bmm copies none: no aten::copy_ in torch.profiler). The loss gradient (P, B, C) carries the
        mean's 1/B (1/(B*C) for mean squared error), so no parameter-sized gradient is scaled.
        """
        members, batch = x.shape[:2]
        weights = [params[k] for k in self.linears]
        work = self.work
        if "grads" not in work or work["grads"][0].shape[0] != members:
            work.clear()
            work["grads"] = [torch.empty_like(p) for p in params]
        grad_buffers = work["grads"]
        if (members, batch) not in work:
            work[members, batch] = ([x.new_empty(members, batch, w.shape[1]) for w in weights]
                                    + [x.new_empty(members, batch, w.shape[2]) for w in weights])
        space = work[members, batch]
        with torch.no_grad():
            h, saved = self.run(params, x, True, space[:len(weights)])
            if self.kind == "regression":
                d = h - y  # not in place: h may be a ReLU's output, needed for its mask
                losses = d.square().flatten(1).mean(1)
                d.mul_(2.0 / d[0].numel())
            else:
                logp = h - h.logsumexp(-1, keepdim=True)  # a third of log_softmax's time over 10 classes
                target = y.unsqueeze(2)
                losses = logp.gather(2, target).sum((1, 2)).mul_(-1.0 / batch)
                d = logp.exp_().scatter_add_(2, target, torch.full_like(target, -1, dtype=logp.dtype)).mul_(1.0 / batch)
            k, linear = len(params), len(weights)
            for j in range(len(self.layers) - 1, self.first - 1, -1):
                module, s = self.layers[j], saved[j]
                if isinstance(module, nn.ReLU):  # in place: a tenth of the time of d.mul_(output > 0)
                    torch.ops.aten.threshold_backward.grad_input(d, s, 0, grad_input=d)
                elif isinstance(module, nn.Dropout):
                    if s is not None:
                        d.mul_(s)
                elif isinstance(module, nn.Linear):
                    k, linear = k - 2, linear - 1
                    torch.bmm(d.transpose(1, 2), s, out=grad_buffers[k])
                    torch.sum(d, 1, keepdim=True, out=grad_buffers[k + 1])
                    if j > self.first:
                        d = torch.bmm(d, params[k], out=space[len(weights) + linear])
                else:  # BatchNorm1d; d is a buffer of this step's, or the loss's gradient: changed in place
                    k -= 2
                    xhat, scale = s
                    torch.sum(d, 1, keepdim=True, out=grad_buffers[k + 1])
                    torch.sum(d * xhat, 1, keepdim=True, out=grad_buffers[k])
                    if j > self.first:
                        d.add_(grad_buffers[k + 1], alpha=-1.0 / batch).addcmul_(xhat, grad_buffers[k], value=-1.0 / batch)
                        d.mul_(scale)
        return losses, grad_buffers


# The layers the batched-layers path knows; anything else in an nn.Sequential sends the model to vmap.
_ELEMENTWISE: dict[type, Callable[[torch.Tensor], torch.Tensor]] = {
    nn.ReLU: torch.relu, nn.Tanh: torch.tanh, nn.Sigmoid: torch.sigmoid, nn.Identity: lambda h: h}


def _layer_ok(module: nn.Module) -> bool:
    if type(module) in _ELEMENTWISE or isinstance(module, (nn.Linear, nn.Dropout, nn.Flatten, nn.Unflatten)):
        return True
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return (module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
                and all(d == 1 for d in module.dilation))
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return module.affine and module.track_running_stats and module.momentum is not None
    return False


class _Im2col(torch.autograd.Function):
    """Channels-last (P, B, *S, C) -> the patches (P, B, *S_out, *K, C) of a zero-padded convolution, contiguous.

    The backward adds each kernel tap's gradient into a strided view (K strided adds): torch's
    unfold_backward took a fifth of a step on mnist1d's CNN. Channels innermost: copying the patches
    with the kernel innermost (torch's order, stride C) took 4x as long.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...],  # type: ignore[override]
                padding: tuple[int, ...]) -> torch.Tensor:
        pads = [0, 0]
        for p in reversed(padding):
            pads += [p, p]
        padded = F.pad(h, pads) if any(padding) else h
        patches = padded
        for d, (k, s) in enumerate(zip(kernel, stride)):
            patches = patches.unfold(2 + d, k, s)  # (P, B, *S_out, C, *K)
        ctx.geometry = (h.shape, padded.shape, kernel, stride, padding)
        return patches.movedim(2 + len(kernel), -1).contiguous()  # (P, B, *S_out, *K, C)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        shape, padded_shape, kernel, stride, padding = ctx.geometry
        spatial = len(kernel)
        out = grad.shape[2:2 + spatial]
        d_padded = grad.new_zeros(padded_shape)
        for tap in itertools.product(*(range(k) for k in kernel)):
            window = d_padded
            for d, (j, s, n) in enumerate(zip(tap, stride, out)):
                window = window.narrow(2 + d, j, s * (n - 1) + 1)[(slice(None),) * (2 + d) + (slice(None, None, s),)]
            window.add_(grad[(Ellipsis,) + tap + (slice(None),)])
        d_h = d_padded
        for d, p in enumerate(padding):
            if p:
                d_h = d_h.narrow(2 + d, p, shape[2 + d])
        return d_h, None, None, None


def _batched_layers(models: list[nn.Module], device: torch.device, probe: torch.Tensor,
                    generator: torch.Generator | None = None) -> _Batched | None:
    """An nn.Sequential of Linear, Conv1d/2d, BatchNorm1d/2d, Dropout, Flatten, Unflatten and elementwise
    activations as batched operations over the members, under autograd.

    A convolution is an im2col (unfold, a view, then one copy) and one baddbmm for all the members,
    activations kept channels-last (P, B, *spatial, C) between convolutions: on mnist1d's CNN (12
    members, batch size 32) oneDNN's grouped convolution, which vmap makes of a stacked weight,
    took two thirds of a step. A Linear is a baddbmm; BatchNorm keeps each member's running
    statistics (P, C) and normalises over the batch (and spatial) dimensions per member. Parameters
    keep the module's names and layout. The batched forward is checked against member 0's own module
    on ``probe`` in evaluation mode: None (vmap then) when it fails or differs. Dropout masks come from
    ``generator``, the population's own (None: torch's global one).
    """
    if not isinstance(models[0], nn.Sequential) or not all(_layer_ok(m) for m in models[0]):
        return None
    layers = list(models[0].named_children())
    stacked, buffers = stack_module_state(models)
    names = list(stacked)
    buffers = {k: v.to(device) for k, v in buffers.items()}
    index = {name: k for k, name in enumerate(names)}
    training = [True]

    def conv(h: torch.Tensor, spatial: int, module: nn.Conv1d | nn.Conv2d, weight: torch.Tensor,
             bias: torch.Tensor | None) -> torch.Tensor:
        # h (P, B, *S, C) -> (P, B, *S_out, O)
        members, batch = h.shape[:2]
        cols = _Im2col.apply(h, tuple(module.kernel_size), tuple(module.stride), tuple(module.padding))
        out_size = cols.shape[2:2 + spatial]
        cols = cols.view(members, -1, weight[0].numel() // weight.shape[1])
        w = weight.movedim(2, -1).flatten(2).transpose(1, 2)  # (P, O, C, *K) -> (P, *K x C, O)
        out = torch.bmm(cols, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), cols, w)
        return out.view(members, batch, *out_size, weight.shape[1])

    def forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        members = params[0].shape[0]
        h = x.expand(members, *x.shape) if x.dim() == probe.dim() - 1 else x
        spatial = 0  # > 0: h is channels-last (P, B, *S, C) with that many spatial dimensions
        # Set: h is (P, B, F) flattened channels-last from (C, *S) here; the next Linear permutes its weight's
        # columns to match instead (a copy of the weight, not of the activations, both ways).
        flat: tuple[int, ...] | None = None
        for name, module in layers:
            if type(module) in _ELEMENTWISE:
                h = _ELEMENTWISE[type(module)](h)
                continue
            if isinstance(module, nn.Dropout):
                h = _dropout(h, module.p, generator) if training[0] and module.training else h
                continue
            if flat is not None and not isinstance(module, nn.Linear):  # to the module's order (P, B, C x S)
                h, flat = h.unflatten(2, flat[1:] + flat[:1]).movedim(-1, 2).flatten(2), None
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                dims = 1 if isinstance(module, nn.Conv1d) else 2
                if not spatial:
                    if h.dim() != 3 + dims:
                        raise ValueError("convolution input of an unexpected shape")
                    h, spatial = h.movedim(2, -1), dims
                bias = params[index[f"{name}.bias"]] if module.bias is not None else None
                h = conv(h, spatial, module, params[index[f"{name}.weight"]], bias)
                continue
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                if not spatial and h.dim() > 3:
                    h, spatial = h.movedim(2, -1), h.dim() - 3
                h = _batch_norm(h, module, params[index[f"{name}.weight"]], params[index[f"{name}.bias"]],
                                buffers[f"{name}.running_mean"], buffers[f"{name}.running_var"], training[0])
                continue
            if isinstance(module, nn.Flatten) and spatial and module.start_dim == 1 and module.end_dim == -1:
                flat, spatial = (h.shape[-1],) + tuple(h.shape[2:-1]), 0
                h = h.flatten(2)
                continue
            if spatial:  # back to the module's layout (P, B, C, *S)
                h, spatial = h.movedim(-1, 2), 0
            if isinstance(module, nn.Linear):
                if h.dim() != 3:
                    raise ValueError("Linear input of an unexpected shape")
                weight = params[index[f"{name}.weight"]]
                if flat is not None:
                    weight, flat = weight.unflatten(2, flat).movedim(2, -1).flatten(2), None
                w = weight.transpose(1, 2)
                bias = params[index[f"{name}.bias"]] if module.bias is not None else None
                h = torch.bmm(h, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), h, w)
            elif isinstance(module, nn.Flatten):
                h = h.flatten(module.start_dim + 1 if module.start_dim >= 0 else module.start_dim,
                              module.end_dim + 1 if module.end_dim >= 0 else module.end_dim)
            else:  # nn.Unflatten
                h = h.unflatten(module.dim + 1 if module.dim >= 0 else module.dim, module.unflattened_size)
        if flat is not None:
            h = h.unflatten(2, flat[1:] + flat[:1]).movedim(-1, 2).flatten(2)
        if spatial:
            h = h.movedim(-1, 2)
        return h

    def export(params: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in zip(names, params)}

    def train(mode: bool) -> None:
        training[0] = mode

    def keep(rows: torch.Tensor) -> None:
        buffers.update({k: v[rows] for k, v in buffers.items()})

    params = [v.detach().to(device).requires_grad_(v.requires_grad) for v in stacked.values()]
    saved = {k: v.clone() for k, v in buffers.items()}
    try:
        with torch.no_grad():
            training[0] = False
            got = forward(params, probe)[0]
            want = copy.deepcopy(models[0]).to(device).eval()(probe[0])
            if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
                return None
        training[0] = True
        torch.autograd.grad(forward(params, probe).sum(), [p for p in params if p.requires_grad], allow_unused=True)
    except Exception:  # noqa: BLE001 - whatever it cannot do, vmap may
        return None
    finally:
        buffers.update(saved)
    return _Batched(params, forward, export, train, keep)


def _dropout(h: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """F.dropout in training mode (a fresh mask per member and element, as vmap's randomness="different")."""
    mask = _keep_mask(h, p, generator)
    return h if mask is None else h * mask


def _keep_mask(h: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor | None:
    """Dropout's mask for ``h``, kept elements scaled by 1 / (1 - p) (None when p is 0), drawn by comparing
    uniform numbers: torch.rand took half the time of the bernoulli_ that F.dropout draws with, the largest
    operation of a step on the spirals MLP (on the whole step: within noise)."""
    if p <= 0.0 or p >= 1.0:
        return None if p <= 0.0 else torch.zeros_like(h)
    keep = torch.rand(h.shape, generator=generator, device=h.device, dtype=h.dtype) >= p
    return keep.to(h.dtype).mul_(1.0 / (1.0 - p))


def _batch_norm(h: torch.Tensor, module: nn.BatchNorm1d | nn.BatchNorm2d, weight: torch.Tensor, bias: torch.Tensor,
                running_mean: torch.Tensor, running_var: torch.Tensor, training: bool) -> torch.Tensor:
    """BatchNorm over channels-last h (P, B, ..., C), each member with its own statistics (P, C).

    One F.batch_norm over P x C channels (the HFTA paper's form): its fused kernels, forward and
    backward, and its update of the running statistics in place (views of the (P, C) buffers):
    two operations a step where the same written out in tensor operations took a dozen.
    """
    members, channels = h.shape[0], h.shape[-1]
    flat = h.movedim(0, -2).reshape(-1, members * channels)  # (B x spatial, P x C): one copy
    out = F.batch_norm(flat, running_mean.view(-1), running_var.view(-1), weight.reshape(-1), bias.reshape(-1),
                       training, module.momentum, module.eps)
    return out.view(*h.shape[1:-1], members, channels).movedim(-2, 0)


def _vmapped(models: list[nn.Module], device: torch.device, probe: torch.Tensor) -> _Batched | None:
    """Any model torch.func can vectorise: parameters and buffers stacked, forward through vmap(functional_call).

    Buffers are stacked per member too, so BatchNorm updates each member's running statistics in
    place; Dropout draws different masks per member (randomness="different"). One training step
    and one evaluation on ``probe`` (inputs (P, B, ...)) are tried on copies of the buffers: None
    when torch.func cannot vectorise the model (data-dependent control flow, .item(), ...).
    """
    stacked, buffers = stack_module_state(models)
    names = list(stacked)
    buffers = {k: v.to(device) for k, v in buffers.items()}
    base = copy.deepcopy(models[0]).to("meta")

    def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (x,))

    each, shared = vmap(one, randomness="different"), vmap(one, in_dims=(0, 0, None), randomness="different")

    def forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        p = dict(zip(names, params))
        return shared(p, buffers, x) if x.dim() == probe.dim() - 1 else each(p, buffers, x)

    def export(params: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in zip(names, params)}

    def keep(rows: torch.Tensor) -> None:
        buffers.update({k: v[rows] for k, v in buffers.items()})

    params = [v.detach().to(device).requires_grad_(v.requires_grad) for v in stacked.values()]
    saved = {k: v.clone() for k, v in buffers.items()}
    try:
        base.train(True)
        torch.autograd.grad(forward(params, probe).sum(), [p for p in params if p.requires_grad], allow_unused=True)
        base.train(False)
        with torch.no_grad():
            forward(params, probe[0])
    except Exception:  # noqa: BLE001 - whatever vmap refuses, the members are trained one at a time
        return None
    finally:
        buffers.update(saved)
    return _Batched(params, forward, export, base.train, keep, global_rng=True)


def _one_at_a_time(models: list[nn.Module], device: torch.device, member_dims: int) -> _Batched:
    """The same interface for a model torch.func cannot vectorise: each member's own forward, in turn.

    Parameters are still stacked (P, ...) leaves, so the vectorised optimizer step is unchanged; only the
    forward loops over the members, each a real module with its own buffers.
    """
    stacked, _ = stack_module_state(models)
    names = list(stacked)
    members = [m.to(device) for m in models]

    def forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        shared = x.dim() < member_dims  # inputs (B, ...) for every member, or (P, B, ...)
        return torch.stack([functional_call(model, {n: p[row] for n, p in zip(names, params)}, (x if shared else x[row],))
                            for row, model in enumerate(members)])

    def export(params: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in zip(names, params)}

    def train(mode: bool) -> None:
        for model in members:
            model.train(mode)

    def keep(rows: torch.Tensor) -> None:
        members[:] = [members[row] for row in rows.tolist()]

    params = [v.detach().to(device).requires_grad_(v.requires_grad) for v in stacked.values()]
    return _Batched(params, forward, export, train, keep, global_rng=True)


# Examples x members per evaluation chunk: the validation split goes through the model in pieces, so its memory
# is bounded (a real CNN's whole split at once, for each member, could take gigabytes) and each piece's
# activations stay under glibc's 32 MiB mmap threshold, reused from chunk to chunk (keep_freed_memory).
EVAL_CHUNK = 2048


def evaluate(batched: _Batched, params: list[torch.Tensor], kind: Kind, split: tuple[torch.Tensor, torch.Tensor],
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each member's loss, accuracy (NaN for regression) and the loss's standard error over the examples, on a
    split shared by every member, in evaluation mode (in chunks of EVAL_CHUNK // P examples)."""
    x, y = split
    rows = max(1, EVAL_CHUNK // params[0].shape[0])
    with torch.no_grad():
        batched.train(False)
        pieces = []
        for start in range(0, len(x), rows):
            outputs = batched.forward(params, x[start:start + rows])
            target = y[start:start + rows]
            correct = (outputs.argmax(-1) == target) if kind == "classification" else None
            pieces.append((example_losses(kind, outputs, target), correct))
        each = torch.cat([losses for losses, _ in pieces], 1)
        losses = each.mean(1)
        se = each.std(1) / math.sqrt(each.shape[1]) if each.shape[1] > 1 else torch.full_like(losses, math.nan)
        if kind != "classification":
            return losses, torch.full_like(losses, math.nan), se
        return losses, torch.cat([correct for _, correct in pieces], 1).float().mean(1), se


def example_losses(kind: Kind, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each member's loss on each example (P, B): what member_losses averages."""
    if kind == "regression":
        if targets.dim() < outputs.dim():
            targets = targets.expand(outputs.shape[0], *targets.shape)
        squared = F.mse_loss(outputs, targets, reduction="none")
        return squared.flatten(2).mean(2) if squared.dim() > 2 else squared
    if targets.dim() < outputs.dim() - 1:
        targets = targets.expand(outputs.shape[0], *targets.shape)
    return F.cross_entropy(outputs.flatten(0, 1), targets.flatten(), reduction="none").view(outputs.shape[0], -1)


def member_losses(kind: Kind, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each member's mean loss: cross-entropy (classification) or mean squared error (regression).

    ``outputs`` (P, B, C); ``targets`` per member (P, B[, C]) or shared by every member (B[, C]).
    """
    return example_losses(kind, outputs, targets).mean(1)


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep the memory a step frees for the next step, rather than hand it back to the
    operating system and take it again, a page fault per 4 KiB (once per process; False where not glibc).

    A step allocates and frees the same activations and gradients (1-2 MB each on mnist1d's CNN). glibc
    returns such blocks to the system as they are freed (mmap, and trimming the top of its heap), so the next
    step faults every page in afresh: 310,000-360,000 page faults and 0.85 s of system time in three
    trainings of mnist1d's grid, against 70,000 and 0.27 s with the thresholds fixed here. Blocks over
    32 MiB are still mapped and returned; up to 512 MiB freed at the heap's top is kept.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl, Windows): their allocators are left alone
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h; setting either also stops glibc adjusting them
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 512 << 20))


def train_population(
    task: Task,
    configs: Sequence[Config],
    epochs: int,
    on_epoch: EpochCallback | None = None,
    schedule: Schedule | None = None,
) -> list[MemberResult]:
    """Train every configuration (all of one batch size) on ``task``'s device; results in input order.

    ``schedule``: the learning rate over the ``epochs`` (default constant).
    """
    if not configs:
        return []
    keep_freed_memory()
    batch_size = configs[0].batch_size
    if any(c.batch_size != batch_size for c in configs):
        raise ValueError("a population shares one batch size")
    x_train = task.train[0]
    device = x_train.device
    n = len(x_train)
    # Rows grouped by optimizer (in input order within each): each kind's rows are contiguous, and stay so as
    # members leave, so the optimizer steps them as views rather than gathering them.
    ids = sorted(range(len(configs)), key=lambda i: OPTIMIZERS.index(optimizer_of(configs[i])))  # each row's input index
    members = [configs[i] for i in ids]

    with GLOBAL_RNG:  # the paths' probes draw from torch's global generator too
        models = [seeded_model(task, c.seed) for c in members]
        require_trainable(models[0], f"task '{task.name}'")
        # A tiny batch per member (two examples: BatchNorm needs more than one) to try torch.func on.
        probe = x_train[torch.arange(len(models) * 2, device=device) % n].view(len(models), 2, *x_train.shape[1:])
        # The population's own random numbers (Dropout): the same masks whatever trained before it or beside it.
        generator = torch.Generator(device=device).manual_seed(members[0].seed)
        batched = (_fused_mlp(models, device, task.kind, probe, generator)
                   or _batched_layers(models, device, probe, generator)
                   or _vmapped(models, device, probe))
        if batched is None:
            note_once(f"note: torch.func cannot vectorise the {type(models[0]).__name__} model of task "
                      f"'{task.name}': its members train one at a time (slower, same results)")
            batched = _one_at_a_time(models, device, probe.dim())
    with _own_random_numbers(batched, members[0].seed):
        return _train(task, configs, epochs, on_epoch, schedule, ids, members, batched)


def seeded_model(task: Task, seed: int) -> nn.Module:
    """A fresh model of ``task`` initialised from ``seed``; torch's global generator held meanwhile (GLOBAL_RNG)
    and left as it was."""
    with GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        # The CPU generator is what initialises a model built on the CPU; torch.manual_seed
        # would also seed every accelerator backend, at ~1 ms a call.
        torch.default_generator.manual_seed(seed)
        return task.make_model()


def convolutional(task: Task) -> bool:
    """Whether the task's model holds a convolution (one model built)."""
    model = seeded_model(task, 0)
    convolutions = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    return isinstance(model, nn.Module) and any(isinstance(m, convolutions) for m in model.modules())


@contextlib.contextmanager
def _own_random_numbers(batched: _Batched, seed: int) -> Iterator[None]:
    """A path that draws from torch's global generator (the model's own Dropout under vmap, or its own forward)
    holds it for the whole population, seeded with ``seed``: populations trained side by side
    (hpsearch.objective.population) then draw the same numbers in whatever order they run."""
    if not batched.global_rng:
        yield
        return
    with GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def _train(task: Task, configs: Sequence[Config], epochs: int, on_epoch: EpochCallback | None,
           schedule: Schedule | None, ids: list[int], members: list[Config], batched: _Batched) -> list[MemberResult]:
    """train_population's epochs, once its path is chosen (``ids``: each row's input index)."""
    x_train, y_train = task.train
    device = x_train.device
    n = len(x_train)
    batch_size = members[0].batch_size
    steps = math.ceil(n / batch_size)
    classifying = task.kind == "classification"
    params = batched.params
    # Positions of the trainable parameters: only they get gradients, optimizer state and steps.
    stepped = [k for k, p in enumerate(params) if p.requires_grad]

    results = [MemberResult(c) for c in configs]
    generators = [torch.Generator().manual_seed(c.seed) for c in configs]
    optimizer = PopulationOptimizer([params[k] for k in stepped], members, x_train, schedule or Schedule(), steps, epochs)
    limit: torch.Tensor | None = None

    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        rows = len(ids)
        alive = torch.ones(rows, dtype=torch.bool, device=device)
        losses_seen = torch.empty(steps, rows, device=device)  # read once, at the end of the epoch
        order = torch.stack([torch.randperm(n, generator=generators[i]) for i in ids]).to(device)
        batched.train(True)
        for step in range(steps):
            # index_select on the flat indices: a fifth of the time of x_train[index] with a 2-D index
            index = order[:, step * batch_size:(step + 1) * batch_size].reshape(-1)
            x = x_train.index_select(0, index).view(rows, -1, *x_train.shape[1:])
            y = y_train.index_select(0, index).view(rows, -1, *y_train.shape[1:])
            # Members are independent rows: a diverged member's NaN reaches no other member's gradient.
            trainable = [params[k] for k in stepped]
            if batched.grads is not None:
                losses, every = batched.grads(params, x, y)
                grads = [every[k] for k in stepped]
            else:
                losses = member_losses(task.kind, batched.forward(params, x), y)
                grads = list(torch.autograd.grad(losses.sum(), trainable))
            with torch.no_grad():
                loss = losses.detach()
                if limit is None:
                    limit = DIVERGENCE_FACTOR * loss
                losses_seen[step] = loss
                alive &= loss <= limit  # false for NaN and inf too: the member stops at this step
                optimizer.step(trainable, grads, alive)
        val_losses, val_acc, val_se = evaluate(batched, params, task.kind, task.val)
        with torch.no_grad():
            first_bad = (~(losses_seen <= limit)).to(torch.uint8).argmax(0)  # 0 where none was bad
            bad_loss = losses_seen.gather(0, first_bad.unsqueeze(0)).squeeze(0)
            stats = torch.stack([losses_seen.mean(0), val_losses, val_acc, alive.float(), first_bad.float() + 1,
                                 bad_loss, val_se]).cpu()
        seconds = time.perf_counter() - started

        healthy, diverged = [], []
        for row, i in enumerate(ids):
            r = results[i]
            r.seconds += seconds / rows
            r.step_ms += (seconds / steps * 1000 - r.step_ms) / epoch  # running mean over epochs
            train_loss, val_loss, val_accuracy, ok, step, value, se = stats[:, row].tolist()
            if ok and math.isfinite(val_loss):
                r.train_loss.append(train_loss)
                r.val_loss.append(val_loss)
                r.val_loss_se, r.val_examples = (se if math.isfinite(se) else None), len(task.val[0])
                if classifying:
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
        healthy.sort()  # in input order, whatever the rows' order
        diverged.sort()
        report = EpochReport(
            epoch,
            healthy,
            [results[i].train_loss[-1] for i in healthy],
            [results[i].val_loss[-1] for i in healthy],
            [results[i].val_accuracy[-1] for i in healthy] if classifying else [],
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
            exported = batched.export(params)
            for row, i in enumerate(ids):
                if row not in keep_rows:
                    results[i].params = {k: v[row].cpu() for k, v in exported.items()}
            keep = torch.tensor(keep_rows, dtype=torch.long, device=device)
            ids = [ids[row] for row in keep_rows]
            params = [p.detach()[keep].requires_grad_(p.requires_grad) for p in params]
            optimizer.keep(keep)
            batched.keep(keep)
            limit = limit[keep]
        if not ids:
            break
    return results


def train_and_test(task: Task, configs: Sequence[Config], epochs: int, schedule: Schedule | None = None,
                   ) -> list[MemberResult]:
    """Train configurations as the search did and evaluate them on the test split (``hpsearch test``): one, or
    the seeds of one (--repeats).

    The search's own code path, one population, with the test split in the validation slot: each model
    trains exactly as in its trial (evaluation changes nothing it learns). The trainer evaluates that slot
    after every epoch; only the figures after the last epoch are kept, so no earlier test figure can be
    read, let alone steer anything.
    """
    results = train_population(replace(task, val=task.test), configs, epochs, schedule=schedule)
    for result in results:
        del result.val_loss[:-1], result.val_accuracy[:-1]
    return results
