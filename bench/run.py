"""`make bench`: hpsearch against a plain Optuna + PyTorch reference, run as whole processes.

    python bench/run.py [--repeats N] [--quick] [--device cpu|cuda|cuda:INDEX]

Arms, each a whole subprocess, interleaved A B (C) A B (C) ... so that machine noise falls on all:

  A  reference   python bench/reference.py ...         (plain Optuna GridSampler, one trial at a time)
  B  hpsearch    hpsearch grid --study bench --storage <fresh journal> ...   (in a fresh temp dir)
  C  yardstick   python ../shared/bench/plain_optuna.py ...   (only where that file exists, and on the CPU alone:
                 it takes no device, so on CUDA the in-repo reference, written to its specification, stands for it)
  D  ref-adam    python bench/reference.py ... --optimizer adam   (torch.optim.Adam, betas (momentum, 0.999))
  E  hp-adam     hpsearch grid ... --optimizer adam                (D and E: leave out with --no-adam)

Then, unless --no-models or --quick, bench/general.py: the same comparison on three models beyond the digits
MLP (mnist1d's 1-D CNN, a 2-D CNN on the digits, a BatchNorm + Dropout MLP); out/bench_general.json.

--device cuda: the reference moves its data and model to CUDA, hpsearch gets --device cuda, the trainer
alone and the matmul peak run there, clocks are read after torch.cuda.synchronize, and the results go to
out/bench_cuda.json (the CPU's stay in out/bench.json). The default is the CPU on every machine.

Whole process: time.perf_counter around subprocess.run. Search alone: for A and C the optimize call
(their JSON `seconds`); for B the earliest trial start to the latest trial end in the journal it
wrote, read with plain Optuna. Then the trainer alone, in-process, for growing population sizes,
and its arithmetic rate against a measured matmul peak. Everything also goes to out/bench.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from _common import machine_info, synchronize  # bench/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "bench" / "reference.py"
YARDSTICK = (ROOT / ".." / "shared" / "bench" / "plain_optuna.py").resolve()


def out_path(name: str, device: str) -> Path:
    """out/NAME.json on the CPU, out/NAME_cuda.json (or _cuda1 for cuda:1) on CUDA."""
    suffix = "" if device == "cpu" else "_" + device.replace(":", "")
    return ROOT / "out" / f"{name}{suffix}.json"


def device_name(text: str) -> str:
    """argparse type of --device: cpu, cuda or cuda:INDEX (no auto: a benchmark says where it ran)."""
    import re

    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r}: choose cpu, cuda or cuda:INDEX")
    return text

FULL_GRID = {
    "lr": "1e-1,3e-2,1e-2,3e-3,1e-3,3e-4,1e-4,3e-5",
    "weight_decay": "1e-3,1e-4,1e-5,0",
    "batch_size": "16,32,64,128",
    "momentum": "0.5,0.9,0.99",
}
QUICK_GRID = {"lr": "1e-1,1e-2,1e-3,1e-4", "weight_decay": "1e-4,1e-5,0", "batch_size": "32,128", "momentum": "0.9"}
EPOCHS = 5

POPULATIONS = (1, 4, 16, 64, 256)
SCALING_BATCH = 32
SCALING_EPOCHS = 2
MLP_PARAMS = 64 * 128 + 128 + 128 * 10 + 10  # 9610, the digits MLP 64-128-10


def grid_flags(grid: dict[str, str]) -> list[str]:
    flags = []
    for name, values in grid.items():
        flags += ["--" + name.replace("_", "-"), values]
    return flags + ["--epochs", str(EPOCHS)]


def grid_size(grid: dict[str, str]) -> int:
    size = 1
    for values in grid.values():
        size *= len(values.split(","))
    return size


def hpsearch_command() -> list[str]:
    """The hpsearch console script next to this interpreter (the venv's), else the one on PATH, else
    ``python -m hpsearch`` where hpsearch is importable without being installed (PYTHONPATH=checkout)."""
    here = Path(sys.executable).parent / "hpsearch"
    found = str(here) if here.exists() else shutil.which("hpsearch")
    if found:
        return [found]
    import importlib.util

    if importlib.util.find_spec("hpsearch") is None:
        sys.exit("bench: the hpsearch command is not installed (run `make install`)")
    return [sys.executable, "-m", "hpsearch"]


def run_process(cmd: list[str], cwd: Path) -> tuple[float, str]:
    """Run one arm; returns whole-process wall seconds and its stdout. A failure stops the bench."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        sys.exit(f"bench: {' '.join(cmd[:3])} ... exited with status {proc.returncode}")
    return seconds, proc.stdout


def json_line(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"bench: no JSON line in the output:\n{stdout[-2000:]}")


def run_json_arm(name: str, script: Path, grid: dict[str, str], extra: Sequence[str] = ()) -> dict:
    whole, stdout = run_process([sys.executable, str(script)] + grid_flags(grid) + list(extra), ROOT)
    out = json_line(stdout)
    return {"arm": name, "whole_seconds": whole, "search_seconds": out["seconds"], "trials": out["trials"],
            "completed": out["trials"], "best": out["best"], "best_params": out["best_params"]}


def run_hpsearch_arm(grid: dict[str, str], extra: Sequence[str] = (), name: str = "hpsearch") -> dict:
    """hpsearch grid as a whole process in a fresh folder; ``extra`` holds --device (and --optimizer)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    with tempfile.TemporaryDirectory(prefix="hpsearch-bench-") as tmp:
        journal = Path(tmp) / "bench.journal"  # fresh per run: the grid starts from nothing
        cmd = hpsearch_command() + ["grid", "--study", "bench", "--storage", str(journal)] + grid_flags(grid) + list(extra)
        whole, _ = run_process(cmd, Path(tmp))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name="bench", storage=JournalStorage(JournalFileBackend(str(journal))))
        trials = study.get_trials(deepcopy=False)
    timed = [t for t in trials if t.datetime_start and t.datetime_complete]
    search = (max(t.datetime_complete for t in timed) - min(t.datetime_start for t in timed)).total_seconds()
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = max(complete, key=lambda t: t.value)
    return {"arm": name, "whole_seconds": whole, "search_seconds": search, "trials": len(trials),
            "completed": len(complete), "best": round(best.value, 4), "best_params": best.params}


def ratios(slow: dict, fast: dict, prefix: str = "") -> dict[str, float]:
    """{PREFIXwhole, PREFIXsearch}: ``slow``'s seconds over ``fast``'s, whole process and search alone."""
    return {f"{prefix}{part}": slow[f"{part}_seconds"] / fast[f"{part}_seconds"] for part in ("whole", "search")}


def summarise(runs: list[dict]) -> dict:
    whole = statistics.median(r["whole_seconds"] for r in runs)
    search = statistics.median(r["search_seconds"] for r in runs)
    trials = runs[0]["trials"]
    bests = sorted({r["best"] for r in runs})
    return {"runs": len(runs), "trials": trials, "completed": min(r["completed"] for r in runs),
            "whole_seconds": whole, "search_seconds": search,
            "whole_min": min(r["whole_seconds"] for r in runs), "whole_max": max(r["whole_seconds"] for r in runs),
            "whole_trials_per_s": trials / whole, "search_trials_per_s": trials / search,
            "best": bests[-1], "best_all_runs": bests, "best_params": runs[0]["best_params"]}


def scaling_curve(device: str = "cpu") -> list[dict]:
    """The trainer alone, in-process, on ``device``: one population per size, all at batch size 32, 2 epochs."""
    import torch

    from hpsearch.spec import make_config
    from hpsearch.tasks.builtin import load_task
    from hpsearch.train import train_population

    task = load_task("digits").to(torch.device(device))
    rng = random.Random(0)
    # Varied, non-diverging configurations (a diverged member leaves the population and would flatter the rate).
    params = [{"lr": 10 ** rng.uniform(-4, -1.5), "weight_decay": rng.choice([0.0, 1e-5, 1e-4, 1e-3]),
               "batch_size": SCALING_BATCH, "momentum": rng.choice([0.5, 0.9])} for _ in range(max(POPULATIONS))]
    configs = [make_config(p, 0) for p in params]
    train_population(task, configs[:4], 1)  # warm-up: first-call costs of vmap and autograd
    curve = []
    for size in POPULATIONS:
        times, diverged = [], 0
        for _ in range(3):
            synchronize(device)
            start = time.perf_counter()
            results = train_population(task, configs[:size], SCALING_EPOCHS)
            synchronize(device)
            times.append(time.perf_counter() - start)
            diverged = max(diverged, sum(r.outcome != "completed" for r in results))
        seconds = min(times)  # best of 3: a shared machine only ever adds time to a pure computation
        member_epochs_per_s = size * SCALING_EPOCHS / seconds
        curve.append({"population": size, "seconds": seconds, "epochs": SCALING_EPOCHS, "diverged": diverged,
                      "member_epochs_per_s": member_epochs_per_s,
                      "trials_per_s_at_5_epochs": member_epochs_per_s / EPOCHS})
    curve[-1]["threads"] = torch.get_num_threads()
    return curve


def matmul_peak(device: str = "cpu") -> tuple[int, float]:
    """A float32 n x n matmul's best of 5 on ``device``, in FLOP/s: n = 2048 on the CPU, 8192 on CUDA
    (torch's default float32 there: no TF32)."""
    import torch

    n = 2048 if device == "cpu" else 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return n, 2 * n**3 / best


def flop_rate(largest: dict, train_samples: int, val_samples: int, device: str = "cpu") -> dict:
    """Achieved FLOP/s of the largest population, and a quick float32 matmul peak of this machine."""
    per_member_epoch = 6 * MLP_PARAMS * train_samples + 2 * MLP_PARAMS * val_samples
    flops = per_member_epoch * largest["population"] * largest["epochs"]
    achieved = flops / largest["seconds"]
    n, peak = matmul_peak(device)
    return {"per_member_epoch_flops": per_member_epoch, "population": largest["population"],
            "achieved_gflops": achieved / 1e9, "matmul_n": n, "matmul_peak_gflops": peak / 1e9,
            "fraction_of_peak": achieved / peak,
            "estimate": "6 x params x train samples + 2 x params x val samples per member-epoch"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each arm (>= 3 advised)")
    parser.add_argument("--quick", action="store_true", help="the 24-point default grid instead of the 384-point one")
    parser.add_argument("--no-adam", action="store_true", help="leave out the Adam arms (reference and hpsearch with Adam)")
    parser.add_argument("--no-models", action="store_true",
                        help="leave out the general models (bench/general.py: mnist1d's CNN, a digits CNN, a BatchNorm MLP)")
    parser.add_argument("--device", type=device_name, default="cpu",
                        help="cpu (default) or cuda[:INDEX]: where both the reference and hpsearch train")
    args = parser.parse_args()
    device = args.device
    if args.repeats < 1:
        sys.exit("bench: --repeats must be >= 1")

    grid = QUICK_GRID if args.quick else FULL_GRID
    size = grid_size(grid)
    on = ["--device", device]
    arms = {"reference": lambda: run_json_arm("reference", REFERENCE, grid, on),
            "hpsearch": lambda: run_hpsearch_arm(grid, on)}
    yardstick = YARDSTICK.exists() and device == "cpu"  # the yardstick takes no device: it trains on the CPU
    if yardstick:
        arms["yardstick"] = lambda: run_json_arm("yardstick", YARDSTICK, grid)
    if not args.no_adam:  # the same grid with Adam (momentum = beta1) on both sides
        arms["ref-adam"] = lambda: run_json_arm("ref-adam", REFERENCE, grid, on + ["--optimizer", "adam"])
        arms["hp-adam"] = lambda: run_hpsearch_arm(grid, on + ["--optimizer", "adam"], "hp-adam")

    print(f"bench: {'quick' if args.quick else 'full'} grid of {size} points x {EPOCHS} epochs on digits, device {device}; "
          f"arms {', '.join(arms)}, interleaved, {args.repeats} repeats; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    # Untimed warm-up, so that the first timed arm does not pay for a cold file cache.
    subprocess.run([sys.executable, "-c", "import torch, optuna, sklearn.datasets, hpsearch.cli"], check=True)

    runs: dict[str, list[dict]] = {name: [] for name in arms}
    started = time.perf_counter()
    for repeat in range(1, args.repeats + 1):
        for name, run in arms.items():
            result = run()
            result["repeat"] = repeat
            runs[name].append(result)
            print(f"  repeat {repeat} {name:<9} whole {result['whole_seconds']:7.2f} s  "
                  f"search {result['search_seconds']:7.2f} s  best {result['best']:.4f}", flush=True)
    summary = {name: summarise(rs) for name, rs in runs.items()}

    print()
    print(f"Grid search, {size} trials x {EPOCHS} epochs: medians of {args.repeats} whole-process runs")
    header = f"{'arm':<10} {'whole s':>8} {'(min-max)':>15} {'search s':>9} {'trials/s whole':>15} {'trials/s search':>16} {'best val acc':>13}"
    print(header)
    print("-" * len(header))
    for name, s in summary.items():
        spread = f"({s['whole_min']:.1f}-{s['whole_max']:.1f})"
        best = f"{s['best']:.4f}" + ("*" if len(s["best_all_runs"]) > 1 else "")
        print(f"{name:<10} {s['whole_seconds']:8.2f} {spread:>15} {s['search_seconds']:9.2f} "
              f"{s['whole_trials_per_s']:15.2f} {s['search_trials_per_s']:16.2f} {best:>13}")
    if any(len(s["best_all_runs"]) > 1 for s in summary.values()):
        print("  * the best value differed between repeats; the highest is shown")
    for name in ("hpsearch", "hp-adam"):
        if name in summary and summary[name]["completed"] < size:
            print(f"  note: {name} completed {summary[name]['completed']} of {size} trials (others diverged)")

    ref, hp = summary["reference"], summary["hpsearch"]
    found = ratios(ref, hp)
    print()
    print(f"hpsearch vs reference (reference time / hpsearch time): whole process {found['whole']:.2f}x, "
          f"search alone {found['search']:.2f}x")
    if "hp-adam" in summary:
        found.update(ratios(summary["ref-adam"], summary["hp-adam"], "adam_"))
        print(f"with Adam, hpsearch vs reference: whole process {found['adam_whole']:.2f}x, search alone "
              f"{found['adam_search']:.2f}x ({found['adam_whole'] / found['whole']:.0%} and "
              f"{found['adam_search'] / found['search']:.0%} of SGD's ratios)")
    if "yardstick" in summary:
        ys = summary["yardstick"]
        found.update(ratios(ys, ref, "yardstick_"))
        same = "same" if ys["best"] == ref["best"] else "DIFFERENT"
        print(f"yardstick vs in-repo reference (yardstick time / reference time): whole process "
              f"{found['yardstick_whole']:.2f}x, search alone {found['yardstick_search']:.2f}x "
              f"(1.00 = agree; best val acc {same}: {ys['best']:.4f} vs {ref['best']:.4f})")
    elif device != "cpu":
        print(f"yardstick left out on {device}: it takes no device; bench/reference.py, written to its "
              f"specification, stands for plain Optuna there")
    else:
        print(f"yardstick {YARDSTICK} not found: the in-repo reference alone stands for plain Optuna")
    print(f"(arms took {time.perf_counter() - started:.0f} s)", flush=True)

    print()
    print(f"Trainer alone (in-process train_population), batch size {SCALING_BATCH}, {SCALING_EPOCHS} epochs, "
          f"best of 3 runs; trials/s scaled to {EPOCHS}-epoch trials (= member-epochs/s / {EPOCHS})")
    curve = scaling_curve(device)
    print(f"{'population':>10} {'seconds':>8} {'member-epochs/s':>16} {'trials/s (5 ep)':>16} {'vs pop 1':>9}")
    for point in curve:
        speedup = point["member_epochs_per_s"] / curve[0]["member_epochs_per_s"]
        flag = f"  ({point['diverged']} diverged)" if point["diverged"] else ""
        print(f"{point['population']:>10} {point['seconds']:8.3f} {point['member_epochs_per_s']:16.1f} "
              f"{point['trials_per_s_at_5_epochs']:16.1f} {speedup:8.1f}x{flag}")

    from hpsearch.tasks.builtin import load_task

    task = load_task("digits")
    rate = flop_rate(curve[-1], len(task.train[0]), len(task.val[0]), device)
    print()
    print(f"achieved {rate['achieved_gflops']:.2f} GFLOP/s in the trainer (6 x params x samples, population "
          f"{rate['population']}; params {MLP_PARAMS}, {len(task.train[0])} training samples per epoch, plus the "
          f"validation forward 2 x params x {len(task.val[0])}), vs a measured matmul peak of "
          f"{rate['matmul_peak_gflops']:.1f} GFLOP/s on this machine's {device} ({100 * rate['fraction_of_peak']:.1f}% of it)")


    out = out_path("bench", device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "grid": grid, "grid_points": size, "epochs": EPOCHS, "quick": args.quick, "repeats": args.repeats,
        "device": device, "yardstick": str(YARDSTICK) if yardstick else None,
        "runs": runs, "summary": summary, "ratios": found,
        "scaling": {"batch_size": SCALING_BATCH, "epochs": SCALING_EPOCHS, "curve": curve}, "flops": rate,
        "machine": machine_info(device),
    }, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)} (load average at the end {os.getloadavg()[0]:.2f})")

    if not (args.no_models or args.quick):  # models beyond the digits MLP, each against plain Optuna on the same task
        from general import run_general

        run_general(args.repeats, device=device)


if __name__ == "__main__":
    main()
