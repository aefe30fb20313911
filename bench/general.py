"""`make bench`, general models: hpsearch against plain Optuna on models beyond the digits MLP.

    python bench/general.py [--repeats N] [--models mnist1d,digits-cnn,spirals] [--before DIR] [--device cpu|cuda]

Each model's grid is 6 learning rates x 2 weight decays x batch sizes 32 and 64 (24 points), SGD
with momentum 0.9, as whole processes interleaved reference, hpsearch, reference, hpsearch, ...:

  mnist1d     the built-in mnist1d task's 1-D CNN (three Conv1d, a Linear), 3 epochs
  digits-cnn  examples/digits_cnn.py:digits_cnn, a 2-D CNN on the digits as 1x8x8 images, 3 epochs
  spirals     examples/my_task.py:spirals, the BatchNorm + Dropout MLP, 5 epochs

The reference is bench/reference_general.py over the same task object. ``--before DIR`` adds an
arm "before": hpsearch run with DIR (another checkout, e.g. ``git archive HEAD~1 | tar -x -C DIR``)
first on PYTHONPATH, so that a change is measured against the code before it, interleaved. Search alone: the
reference's optimize call; hpsearch's earliest trial start to latest trial end in its journal.
Then each model's trainer alone, in-process (a population of 12 at batch size 32, best of 3), and
its arithmetic rate (torch.utils.flop_counter on one member's forward; backward taken as twice the
forward) against a measured float32 matmul peak. Writes out/bench_general.json.
--device cuda: both arms, the trainer alone and the matmul peak on CUDA (clocks read after
torch.cuda.synchronize); writes out/bench_general_cuda.json. The default is the CPU on every machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine_info, synchronize  # bench/ is on sys.path when a script here runs
from run import device_name, hpsearch_command, json_line, matmul_peak, out_path, ratios, run_process

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "bench" / "reference_general.py"

GRID = {"lr": "1e-1,5e-2,2e-2,1e-2,5e-3,1e-3", "weight_decay": "1e-4,0", "batch_size": "32,64", "momentum": "0.9"}
MODELS = {  # name: (task reference, epochs)
    "mnist1d": ("mnist1d", 3),
    "digits-cnn": (str(ROOT / "examples" / "digits_cnn.py") + ":digits_cnn", 3),
    "spirals": (str(ROOT / "examples" / "my_task.py") + ":spirals", 5),
}
TRAINER_POPULATION, TRAINER_BATCH, TRAINER_EPOCHS = 12, 32, 2


def flags(epochs: int) -> list[str]:
    out = []
    for name, values in GRID.items():
        out += ["--" + name.replace("_", "-"), values]
    return out + ["--epochs", str(epochs)]


def reference_arm(task: str, epochs: int, device: str = "cpu") -> dict:
    whole, stdout = run_process([sys.executable, str(REFERENCE), "--task", task, "--device", device] + flags(epochs), ROOT)
    out = json_line(stdout)
    return {"whole_seconds": whole, "search_seconds": out["seconds"], "best": out["best"], "completed": out["trials"]}


def hpsearch_arm(task: str, epochs: int, before: Path | None = None, device: str = "cpu") -> dict:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-") as tmp:
        journal = Path(tmp) / "bench.journal"
        # The before arm as `python -m hpsearch`: the installed console script may call what DIR lacks.
        command = hpsearch_command() if before is None else [sys.executable, "-m", "hpsearch"]
        cmd = command + ["grid", "--task", task, "--study", "bench", "--storage", str(journal),
                                    "--device", device] + flags(epochs)
        if before is None:
            whole, _ = run_process(cmd, Path(tmp))
        else:  # the same command with the earlier checkout's hpsearch imported first
            env = {**os.environ, "PYTHONPATH": str(before)}
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, check=False)
            whole = time.perf_counter() - start
            if proc.returncode != 0:
                sys.exit(f"bench: the before arm failed:\n{proc.stderr[-3000:]}")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        trials = optuna.load_study(study_name="bench", storage=JournalStorage(JournalFileBackend(str(journal)))).trials
    timed = [t for t in trials if t.datetime_start and t.datetime_complete]
    search = (max(t.datetime_complete for t in timed) - min(t.datetime_start for t in timed)).total_seconds()
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return {"whole_seconds": whole, "search_seconds": search, "best": round(max(t.value for t in complete), 4),
            "completed": len(complete)}


def trainer_rate(task_ref: str, device: str = "cpu") -> dict:
    """The trainer alone on one model, on ``device``: a population of 12 and its FLOP/s."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from hpsearch.spec import make_config
    from hpsearch.tasks.builtin import load_task
    from hpsearch.train import train_population

    task = load_task(task_ref)
    model = task.make_model().eval()  # its FLOPs counted on the CPU
    with FlopCounterMode(display=False) as counter:
        model(task.train[0][:1])
    forward = counter.get_total_flops()  # per example
    per_member_epoch = 3 * forward * len(task.train[0]) + forward * len(task.val[0])
    lrs = [float(v) for v in GRID["lr"].split(",")]
    configs = [make_config({"lr": lrs[i % len(lrs)], "weight_decay": (1e-4, 0.0)[i // len(lrs) % 2],
                            "batch_size": TRAINER_BATCH, "momentum": 0.9}, 0) for i in range(TRAINER_POPULATION)]
    task = task.to(torch.device(device))
    train_population(task, configs[:2], 1)  # warm-up
    times = []
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        train_population(task, configs, TRAINER_EPOCHS)
        synchronize(device)
        times.append(time.perf_counter() - start)
    seconds = min(times)
    achieved = per_member_epoch * TRAINER_POPULATION * TRAINER_EPOCHS / seconds
    return {"population": TRAINER_POPULATION, "batch_size": TRAINER_BATCH, "epochs": TRAINER_EPOCHS,
            "seconds": seconds, "forward_flops_per_example": forward, "per_member_epoch_flops": per_member_epoch,
            "achieved_gflops": achieved / 1e9, "threads": torch.get_num_threads()}


def run_general(repeats: int = 3, names: list[str] | None = None, before: Path | None = None,
                device: str = "cpu") -> dict:
    names = names or list(MODELS)
    arms = {"reference": lambda task, epochs: reference_arm(task, epochs, device),
            "hpsearch": lambda task, epochs: hpsearch_arm(task, epochs, device=device)}
    if before is not None:
        arms["before"] = lambda task, epochs: hpsearch_arm(task, epochs, before, device)
    print(f"\nGeneral models on {device}: {', '.join(names)}; 24-point grid each, arms {', '.join(arms)} interleaved, "
          f"{repeats} repeats; load average {os.getloadavg()[0]:.2f}", flush=True)
    runs: dict[str, dict[str, list[dict]]] = {name: {arm: [] for arm in arms} for name in names}
    for repeat in range(1, repeats + 1):
        for name in names:
            task, epochs = MODELS[name]
            for arm, run in arms.items():
                result = run(task, epochs)
                runs[name][arm].append(result)
                print(f"  repeat {repeat} {name:<10} {arm:<9} whole {result['whole_seconds']:6.2f} s  "
                      f"search {result['search_seconds']:6.2f} s  best {result['best']:.4f}", flush=True)
    _, peak = matmul_peak(device)
    summary = {}
    print()
    header = (f"{'model':<10} {'ref whole':>9} {'hp whole':>9} {'x whole':>8} {'ref search':>10} {'hp search':>9} "
              f"{'x search':>8} {'ref best':>8} {'hp best':>8} {'trainer GFLOP/s':>15} {'% peak':>7}")
    print(header)
    print("-" * len(header))
    for name in names:
        med = {arm: {k: statistics.median(r[k] for r in rs) for k in ("whole_seconds", "search_seconds")}
               for arm, rs in runs[name].items()}
        best = {arm: max(r["best"] for r in rs) for arm, rs in runs[name].items()}
        rate = trainer_rate(MODELS[name][0], device)
        rate["fraction_of_peak"] = rate["achieved_gflops"] * 1e9 / peak
        ref, hp = med["reference"], med["hpsearch"]
        s = {"medians": med, "best": best, "completed": min(r["completed"] for r in runs[name]["hpsearch"]),
             "whole_ratio": ratios(ref, hp)["whole"], "search_ratio": ratios(ref, hp)["search"], "trainer": rate}
        summary[name] = s
        print(f"{name:<10} {ref['whole_seconds']:9.2f} {hp['whole_seconds']:9.2f} {s['whole_ratio']:7.2f}x "
              f"{ref['search_seconds']:10.2f} {hp['search_seconds']:9.2f} {s['search_ratio']:7.2f}x "
              f"{best['reference']:8.4f} {best['hpsearch']:8.4f} {rate['achieved_gflops']:15.2f} "
              f"{100 * rate['fraction_of_peak']:6.1f}%")
        if "before" in med:
            old = med["before"]
            s.update({f"before_{part}_ratio": value for part, value in ratios(ref, old).items()})
            print(f"{'  before':<10} {'':9} {old['whole_seconds']:9.2f} {s['before_whole_ratio']:7.2f}x "
                  f"{'':10} {old['search_seconds']:9.2f} {s['before_search_ratio']:7.2f}x {'':8} {best['before']:8.4f}")
    print(f"(seconds are medians of {repeats}; x = reference time / hpsearch time; trainer: a population of "
          f"{TRAINER_POPULATION} at batch size {TRAINER_BATCH}, in-process; matmul peak {peak / 1e9:.1f} GFLOP/s)")
    result = {"grid": GRID, "models": {n: MODELS[n] for n in names}, "repeats": repeats, "device": device, "runs": runs,
              "before": str(before) if before else None,
              "summary": summary, "matmul_peak_gflops": peak / 1e9, "machine": machine_info(device)}
    out = out_path("bench_general", device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--before", type=Path, help="an earlier checkout: adds its hpsearch as the arm 'before'")
    parser.add_argument("--device", type=device_name, default="cpu",
                        help="cpu (default) or cuda[:INDEX]: where both the reference and hpsearch train")
    args = parser.parse_args()
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown or args.repeats < 1:
        sys.exit(f"bench: unknown model(s) {', '.join(unknown)}" if unknown else "bench: --repeats must be >= 1")
    run_general(args.repeats, names, args.before, args.device)


if __name__ == "__main__":
    main()
