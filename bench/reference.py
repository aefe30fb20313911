"""In-repo reference arm for `make bench`: a plain Optuna + PyTorch grid search, no hpsearch.

Written to the specification of the yardstick (shared/bench/plain_optuna.py), not imported from it:
a plain Optuna study (in-memory storage, GridSampler, seed 0) over a plain PyTorch loop, one trial
after another, torch.optim.SGD (or, with --optimizer adam, torch.optim.Adam), minibatches sliced from tensors already in memory (no DataLoader).
The model and split are hpsearch's `digits` task: an MLP 64-128-10 with ReLU, stratified
60/20/20 train/val/test with seed 0; the objective is the final validation accuracy.
With --device cuda (not in the yardstick, which trains on the CPU alone) the tensors and the model live
on CUDA, as a user would write it: .to(device), and the minibatch order drawn there; the clock is read
after torch.cuda.synchronize. The default, cpu, is the yardstick's loop unchanged.

    python bench/reference.py --lr 1e-1,1e-2,1e-3,1e-4 --weight-decay 1e-4,1e-5,0 \
        --batch-size 32,128 --momentum 0.9 --epochs 5

Prints one JSON line: arm, trials, epochs, seconds, search_seconds (the optimize call: first trial
start to last trial end; for this arm the same as seconds), trials_per_s, best, best_params.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from typing import Callable

import optuna
import torch


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def digits_splits(seed: int = 0) -> list[torch.Tensor]:
    """x_train, y_train, x_val, y_val of digits: pixels / 16 as float32, labels int64."""
    import numpy as np  # here: bench/reference_general.py imports this module without needing the digits
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, random_state=seed, stratify=y)
    x_val, _, y_val, _ = train_test_split(x_rest, y_rest, test_size=0.5, random_state=seed, stratify=y_rest)
    return [torch.tensor(x_train), torch.tensor(y_train, dtype=torch.int64),
            torch.tensor(x_val), torch.tensor(y_val, dtype=torch.int64)]


def timed_grid(grid: dict[str, list], epochs: int, make_model: Callable[[], torch.nn.Module],
               make_optimizer: Callable[[torch.nn.Module, float, float, float], torch.optim.Optimizer],
               train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
               device: torch.device) -> tuple[optuna.Study, int, float]:
    """The yardstick's loop over ``grid``: a GridSampler study (seed 0, in memory), one trial after another,
    minibatches sliced from the tensors, the final validation accuracy; returns the study, its trial count
    and the seconds of the optimize call (read after torch.cuda.synchronize on CUDA)."""
    (x_train, y_train), (x_val, y_val) = train, val
    n = len(x_train)

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", min(grid["lr"]), max(grid["lr"]))
        weight_decay = trial.suggest_float("weight_decay", min(grid["weight_decay"]), max(grid["weight_decay"]))
        batch_size = trial.suggest_categorical("batch_size", grid["batch_size"])
        momentum = trial.suggest_float("momentum", min(grid["momentum"]), max(grid["momentum"]))
        torch.manual_seed(trial.number)
        model = make_model().to(device)
        optimizer = make_optimizer(model, lr, momentum, weight_decay)
        accuracy = 0.0
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(n, device=device)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
            trial.report(accuracy, epoch)
        return accuracy

    n_trials = len(list(itertools.product(*grid.values())))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.GridSampler(grid, seed=0))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return study, n_trials, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lr", type=floats, default=[1e-1, 1e-2, 1e-3, 1e-4])
    parser.add_argument("--weight-decay", type=floats, default=[1e-4, 1e-5, 0.0])
    parser.add_argument("--batch-size", type=ints, default=[32, 128])
    parser.add_argument("--momentum", type=floats, default=[0.9])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd",
                        help="adam: torch.optim.Adam with betas (momentum, 0.999), as hpsearch's --optimizer adam")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:INDEX")
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = torch.device(args.device)
    x_train, y_train, x_val, y_val = (t.to(device) for t in digits_splits())
    grid = {"lr": args.lr, "weight_decay": args.weight_decay, "batch_size": args.batch_size, "momentum": args.momentum}

    def make_optimizer(model: torch.nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
        if args.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)

    def make_model() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))

    study, n_trials, seconds = timed_grid(grid, args.epochs, make_model, make_optimizer, (x_train, y_train),
                                          (x_val, y_val), device)
    print(json.dumps({
        "arm": "reference" if args.optimizer == "sgd" else f"reference-{args.optimizer}",
        "trials": n_trials,
        "epochs": args.epochs,
        "seconds": round(seconds, 3),
        "search_seconds": round(seconds, 3),
        "trials_per_s": round(n_trials / seconds, 3),
        "best": round(study.best_value, 4),
        "best_params": study.best_params,
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }))


if __name__ == "__main__":
    main()
