"""`make bench-own`: what hpsearch costs around your own training code, against the plain ways to run it.

    python bench/own_code.py [--repeats N] [--epochs E]

The training is examples/train_cnn.py (a small CNN on the digits), over the same 12 configurations
(lr 1e-1, 3e-2, 1e-2, 3e-3 x batch size 32, 64, weight decay 0: 8; see GRID) in every arm;
arms are whole processes, interleaved A B C ... per repeat so that machine noise falls on all:

  function   optuna  plain Optuna study.optimize (GridSampler, in-memory) calling the script's train()
             hp-fn   hpsearch grid --objective examples/train_cnn.py:objective
  command    shell   a bash loop running `python examples/train_cnn.py --lr ... ` per configuration
             hp-cmd  hpsearch grid -- python examples/train_cnn.py --lr {lr} ...
  workers    hp-cmd-2  the same with --jobs 2 (on 2 cores)

Overhead = hpsearch's time / the plain way's time - 1, from medians (target: within 5%).
Writes out/bench_own.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine_info  # bench/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "train_cnn.py"
OUT = ROOT / "out" / "bench_own.json"
GRID = {"lr": [0.1, 0.03, 0.01, 0.003], "weight_decay": [0.0], "batch_size": [32, 64]}
FLAGS = ["--lr {lr}", "--weight-decay {weight_decay}", "--batch-size {batch_size}", "--momentum {momentum}",
         "--epochs {epochs}", "--seed {seed}", "--split {split}"]

OPTUNA_ARM = r'''
import argparse, json, sys, time
import optuna
sys.path.insert(0, sys.argv[1])
import train_cnn
grid = json.loads(sys.argv[2]); epochs = int(sys.argv[3])
optuna.logging.set_verbosity(optuna.logging.WARNING)

def objective(trial):
    args = argparse.Namespace(lr=trial.suggest_float("lr", 1e-5, 1), weight_decay=trial.suggest_float("weight_decay", 0, 1),
                              batch_size=trial.suggest_int("batch_size", 1, 1024), momentum=0.9, epochs=epochs,
                              seed=trial.number, split="val", device="cpu")
    last = {}
    def report(epoch, **metrics):
        last.update(metrics)
        trial.report(metrics["val_accuracy"], epoch)
    train_cnn.train(args, report)
    return last["val_accuracy"]

study = optuna.create_study(direction="maximize", sampler=optuna.samplers.GridSampler(grid, seed=0))
start = time.perf_counter()
study.optimize(objective, n_trials=len(grid["lr"]) * len(grid["weight_decay"]) * len(grid["batch_size"]))
print(json.dumps({"seconds": time.perf_counter() - start, "best": study.best_value}))
'''


def hpsearch_command() -> str:
    here = Path(sys.executable).parent / "hpsearch"
    return str(here) if here.exists() else shutil.which("hpsearch") or sys.exit("bench: hpsearch is not installed")


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd[:4])} ... exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def search_seconds(journal: Path) -> float:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="b", storage=JournalStorage(JournalFileBackend(str(journal))))
    timed_trials = [t for t in study.trials if t.datetime_start and t.datetime_complete]
    assert len(timed_trials) == len(study.trials), "bench: a trial did not finish"
    return (max(t.datetime_complete for t in timed_trials) - min(t.datetime_start for t in timed_trials)).total_seconds()


def grid_flags(epochs: int) -> list[str]:
    return ["--lr", ",".join(map(str, GRID["lr"])), "--weight-decay", ",".join(map(str, GRID["weight_decay"])),
            "--batch-size", ",".join(map(str, GRID["batch_size"])), "--epochs", str(epochs)]


def arm(name: str, epochs: int) -> dict:
    python = sys.executable
    command = [python, str(EXAMPLE)] + " ".join(FLAGS).split()
    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-own-") as tmp:
        folder = Path(tmp)
        if name == "optuna":
            whole, out = timed([python, "-c", OPTUNA_ARM, str(EXAMPLE.parent), json.dumps(GRID), str(epochs)], folder)
            return {"whole": whole, "search": json.loads(out)["seconds"]}
        if name == "shell":
            lines = [" ".join([python, str(EXAMPLE), "--lr", str(lr), "--weight-decay", str(wd), "--batch-size", str(bs),
                               "--momentum", "0.9", "--epochs", str(epochs), "--seed", str(seed), "--split", "val"])
                     for seed, (lr, wd, bs) in enumerate(itertools.product(*GRID.values()))]
            script = folder / "loop.sh"
            script.write_text("set -e\n" + "\n".join(f"{line} > out-{i}.txt" for i, line in enumerate(lines)) + "\n")
            whole, _ = timed(["bash", str(script)], folder)
            return {"whole": whole, "search": whole}
        hpsearch = [hpsearch_command(), "grid", "--study", "b", "--storage", "b.journal", *grid_flags(epochs)]
        how = {"hp-fn": ["--objective", f"{EXAMPLE}:objective"], "hp-cmd": ["--", *command],
               "hp-cmd-2": ["--jobs", "2", "--", *command]}[name]
        whole, _ = timed(hpsearch + how, folder)
        return {"whole": whole, "search": search_seconds(folder / "b.journal")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    names = ["optuna", "hp-fn", "shell", "hp-cmd", "hp-cmd-2"]
    points = len(list(itertools.product(*GRID.values())))
    print(f"bench-own: examples/train_cnn.py, {points} configurations x {args.epochs} epochs, arms {', '.join(names)}, "
          f"interleaved, {args.repeats} repeats; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(1, args.repeats + 1):
        for name in names:
            result = arm(name, args.epochs)
            runs[name].append(result)
            print(f"  repeat {repeat} {name:<9} whole {result['whole']:7.2f} s  search {result['search']:7.2f} s", flush=True)
    median = {name: {key: statistics.median(r[key] for r in rs) for key in ("whole", "search")} for name, rs in runs.items()}
    overhead = {
        "function_whole": median["hp-fn"]["whole"] / median["optuna"]["whole"] - 1,
        "function_search": median["hp-fn"]["search"] / median["optuna"]["search"] - 1,
        "command_whole": median["hp-cmd"]["whole"] / median["shell"]["whole"] - 1,
        "jobs2_speedup": median["hp-cmd"]["whole"] / median["hp-cmd-2"]["whole"],
    }
    print()
    for name, m in median.items():
        print(f"{name:<9} whole {m['whole']:7.2f} s  search {m['search']:7.2f} s  ({points / m['search']:.2f} trials/s)")
    print()
    print(f"function mode vs Optuna's study.optimize: {overhead['function_whole']:+.1%} whole process, "
          f"{overhead['function_search']:+.1%} search alone")
    print(f"command mode vs a shell loop: {overhead['command_whole']:+.1%} whole process")
    print(f"--jobs 2 vs --jobs 1 (command mode, {os.cpu_count()} CPUs): {overhead['jobs2_speedup']:.2f}x")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"grid": GRID, "epochs": args.epochs, "runs": runs, "median": median,
                               "overhead": overhead, "machine": machine_info()}, indent=2) + "\n")
    print(f"\nwrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
