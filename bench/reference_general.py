"""Reference arm for the general models of `make bench`: plain Optuna + PyTorch over an hpsearch task.

The loop of bench/reference.py (its timed_grid: in-memory tensors, torch.optim.SGD, one trial
after another, GridSampler with seed 0) but over the SAME task object hpsearch trains: its
make_model and its train / validation tensors, loaded through hpsearch.tasks.builtin.load_task.
Models with BatchNorm or Dropout switch between model.train() and model.eval() as usual.
--device cuda: the task's tensors and each model on CUDA, the minibatch order drawn there, the clock
read after torch.cuda.synchronize; the default is the CPU.

    python bench/reference_general.py --task mnist1d --lr 1e-1,1e-2 --weight-decay 1e-4,0 \
        --batch-size 32,64 --momentum 0.9 --epochs 3

Prints one JSON line: arm, task, trials, epochs, seconds (the optimize call), trials_per_s, best, best_params.
"""
from __future__ import annotations

import argparse
import json

import optuna
import torch
from reference import floats, ints, timed_grid  # bench/ is on sys.path when a script here runs

from hpsearch.tasks.builtin import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, help="an hpsearch task: mnist1d, examples/digits_cnn.py:digits_cnn, ...")
    parser.add_argument("--lr", type=floats, required=True)
    parser.add_argument("--weight-decay", type=floats, required=True)
    parser.add_argument("--batch-size", type=ints, required=True)
    parser.add_argument("--momentum", type=floats, default=[0.9])
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:INDEX")
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = torch.device(args.device)
    task = load_task(args.task).to(device)
    (x_train, y_train), (x_val, y_val) = task.train, task.val
    grid = {"lr": args.lr, "weight_decay": args.weight_decay, "batch_size": args.batch_size, "momentum": args.momentum}

    def make_optimizer(model: torch.nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)

    study, n_trials, seconds = timed_grid(grid, args.epochs, task.make_model, make_optimizer, (x_train, y_train),
                                          (x_val, y_val), device)
    print(json.dumps({
        "arm": "reference", "task": args.task, "trials": n_trials, "epochs": args.epochs,
        "seconds": round(seconds, 3), "trials_per_s": round(n_trials / seconds, 3),
        "best": round(study.best_value, 4), "best_params": study.best_params,
        "torch": torch.__version__, "optuna": optuna.__version__, "threads": torch.get_num_threads(),
        "device": str(device),
    }))


if __name__ == "__main__":
    main()
