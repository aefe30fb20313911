"""Where the time of a small model's training step goes on a device: kernels per step and time per step.

    python bench/launches.py [--device cuda] [--population 96] [--batch-size 32]

Three measurements on the digits MLP (64-128-10), each after a warm-up, clocks read after synchronising:
  op          one tiny tensor operation (x.add_(1) on one element), repeated: the floor of any operation
  reference   one step of bench/reference.py's loop (forward, cross-entropy, backward, SGD with momentum)
  population  one step of hpsearch's trainer for a population of --population members (train_population,
              one epoch, divided by its steps; the epoch's validation pass and host reads included)
Kernels are counted with torch.profiler (CUDA kernels, or on the CPU the operators). A step whose time is
about kernels x the op floor is launch-bound: its arithmetic is not what it waits for.
Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch.profiler import ProfilerActivity, profile

from _common import synchronize  # bench/ is on sys.path when a script here runs


def timed(fn, repeats: int, device: str) -> float:
    """Seconds per call of ``fn``, the best of three batches of ``repeats`` calls."""
    best = math.inf
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def kernels(fn, device: str) -> int:
    """Device kernels (CUDA) or top-level operators (CPU) launched by one call of ``fn``."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    events = prof.events()
    if device.startswith("cuda"):
        return sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return sum(1 for e in events if e.cpu_parent is None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--population", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    device, bs = args.device, args.batch_size

    from hpsearch.spec import make_config
    from hpsearch.tasks.builtin import load_task
    from hpsearch.train import train_population

    task = load_task("digits").to(torch.device(device))
    (x, y), n = task.train, len(task.train[0])
    one = torch.zeros(1, device=device)
    op = timed(lambda: one.add_(1), 2000, device)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    idx = torch.randperm(n, device=device)[:bs]

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()

    ref = timed(step, 300, device)
    ref_kernels = kernels(step, device)

    configs = [make_config({"lr": 10 ** (-1 - 3 * i / args.population), "weight_decay": 1e-4, "batch_size": bs,
                            "momentum": 0.9}, 0) for i in range(args.population)]
    steps = math.ceil(n / bs)
    epoch = lambda: train_population(task, configs, 1)  # noqa: E731
    epoch()  # warm-up
    pop = timed(epoch, 1, device) / steps
    pop_kernels = kernels(epoch, device) / steps

    rows = [("op (x.add_(1))", op, 1, 1), ("reference step", ref, ref_kernels, 1),
            (f"population step, {args.population} members", pop, pop_kernels, args.population)]
    what = "kernels" if device.startswith("cuda") else "operators"
    print(f"device {device}, digits MLP, batch size {bs}, {steps} steps an epoch")
    print(f"{'':34} {'us/step':>9} {what + '/step':>14} {'us/' + what[:-1]:>12} {'us per member-step':>19}")
    for name, seconds, count, members in rows:
        print(f"{name:34} {seconds * 1e6:9.1f} {count:14.1f} {seconds * 1e6 / max(count, 1):12.2f} "
              f"{seconds * 1e6 / members:19.2f}")
    print(json.dumps({"device": device, "batch_size": bs, "population": args.population, "steps_per_epoch": steps,
                      "op_us": op * 1e6, "reference_step_us": ref * 1e6, "reference_kernels_per_step": ref_kernels,
                      "population_step_us": pop * 1e6, "population_kernels_per_step": pop_kernels,
                      "member_step_us": pop * 1e6 / args.population,
                      "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None}))


if __name__ == "__main__":
    main()
