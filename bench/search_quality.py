"""`make bench-search`: quality per compute of grid, random and TPE, with and without pruning.

    python bench/search_quality.py [--seeds N] [--first-seed S] [--budget TRIALS] [--methods A,B] [--quick]

The question: on the digits task, how many training epochs does each search method spend until it
has found a configuration within 0.5% (0.005 absolute validation accuracy) of the exhaustive grid's
best? The space is the 384-point benchmark grid (lr x weight decay x batch size x momentum, 5
epochs); random and TPE get the same comma lists, so they sample the same discrete values, and a
configuration's result depends only on its values and the study seed (it equals the grid's result
for that point at that seed).

For each seed s: the exhaustive grid (no pruning) gives the best value B_s. Then, all with seed s,
each in a fresh journal file: grid+asha; random, random+asha, random+hyperband; tpe, tpe+asha,
tpe+hyperband (random and TPE with --budget trials).

Epochs a trial spends: len(val_accuracy) for completed and pruned trials, stopped_epoch for diverged
ones, 0 for failed ones. Walking trials in trial-number order and summing epochs, a run's "epochs to
target" is the sum up to and including the first COMPLETE trial with value >= B_s - 0.005 (success);
a run without one failed. A grid's trial order is its enqueue order (sorted by batch size), so a
grid's epochs to target is an artefact of that order; its total epochs is the honest number.

Target: pruned random or TPE at most 1/5 of the exhaustive grid's epochs (1920 / 5 = 384) with >= 95%
success. The verdict takes the strict reading: a seed succeeds only if its epochs to target are at
most 384, and the target is met where >= 95% of seeds do. The table also shows the looser figures:
the success rate within the whole trial budget, and the median epochs to target over those runs.
--methods runs a subset (the exhaustive grid always runs: it sets each seed's target);
--first-seed starts at another seed, to check settings chosen on seeds 0-9 on seeds they never saw.
Writes out/bench_search.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from hpsearch.search.run import run_search
from hpsearch.spec import build_spec

from _common import machine_info  # bench/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "bench_search.json"
SPACE = {
    "lr": "1e-1,3e-2,1e-2,3e-3,1e-3,3e-4,1e-4,3e-5",
    "weight_decay": "1e-3,1e-4,1e-5,0",
    "batch_size": "16,32,64,128",
    "momentum": "0.5,0.9,0.99",
}
EPOCHS = 5
GRID_POINTS = 8 * 4 * 4 * 3  # 384
GRID_EPOCHS = GRID_POINTS * EPOCHS  # 1920: the exhaustive grid's epochs, the yardstick
TOLERANCE = 0.005  # absolute validation accuracy
TARGET_FRACTION = 1 / 5
TARGET_SUCCESS = 0.95

# (method, command, prune); the exhaustive grid ("grid") runs first for each seed and sets B_s.
METHODS = [
    ("grid", "grid", "none"),
    ("grid+asha", "grid", "asha"),
    ("random", "random", "none"),
    ("random+asha", "random", "asha"),
    ("random+hyperband", "random", "hyperband"),
    ("tpe", "tpe", "none"),
    ("tpe+asha", "tpe", "asha"),
    ("tpe+hyperband", "tpe", "hyperband"),
]
TARGETS = {"pruned random": ["random+asha", "random+hyperband"], "pruned TPE": ["tpe+asha", "tpe+hyperband"]}


def trial_epochs(trial: optuna.trial.FrozenTrial) -> int:
    """Training epochs a trial spent (a diverged trial's partial last epoch counts as one)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        if trial.user_attrs.get("outcome") == "diverged":
            return int(trial.user_attrs.get("stopped_epoch") or 0)
        return len(trial.user_attrs.get("val_accuracy", []))
    return 0  # failed (or anything else): nothing trained to count


def run_one(command: str, prune: str, seed: int, trials: int | None, **search: Any,
            ) -> tuple[list[optuna.trial.FrozenTrial], float]:
    """One search in a fresh journal file; returns its trials in trial-number order and wall seconds.

    ``search``: run_search's objective and strategy, where they differ from its defaults."""
    with tempfile.TemporaryDirectory(prefix="hpsearch-quality-") as tmp:
        journal = str(Path(tmp) / "study.journal")
        spec = build_spec(command, **SPACE, epochs=EPOCHS, seed=seed, trials=trials if command != "grid" else None,
                          study="quality", storage=journal, prune=prune)
        start = time.perf_counter()
        run_search(spec, **search)
        seconds = time.perf_counter() - start
        study = optuna.load_study(study_name="quality", storage=JournalStorage(JournalFileBackend(journal)))
        found = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    return found, seconds


def score(trials: list[optuna.trial.FrozenTrial], threshold: float) -> dict:
    """Epochs to the first complete trial at or above threshold, and the run's totals."""
    spent, to_target, hit_trial = 0, None, None
    for trial in trials:
        spent += trial_epochs(trial)
        if (to_target is None and trial.state == TrialState.COMPLETE and trial.value is not None
                and trial.value >= threshold):
            to_target, hit_trial = spent, trial.number
    complete = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    states = {}
    for t in trials:
        outcome = t.user_attrs.get("outcome", t.state.name.lower())
        states[outcome] = states.get(outcome, 0) + 1
    return {"success": to_target is not None, "epochs_to_target": to_target, "hit_trial": hit_trial,
            "total_epochs": spent, "trials": len(trials), "outcomes": states,
            "best": max(complete) if complete else None}


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def within_limit(run: dict) -> bool:
    """The strict reading of success: the target found within 1/5 of the exhaustive grid's epochs."""
    return run["success"] and run["epochs_to_target"] <= GRID_EPOCHS * TARGET_FRACTION


def summarise(runs: list[dict]) -> dict:
    hits = [r["epochs_to_target"] for r in runs if r["success"]]
    med = median(hits)
    strict = sum(within_limit(r) for r in runs)
    return {"runs": len(runs), "successes_within_limit": strict, "success_rate_within_limit": strict / len(runs),
            "successes": len(hits), "success_rate": len(hits) / len(runs),
            "median_epochs_to_target": med, "fraction_of_grid": None if med is None else med / GRID_EPOCHS,
            "median_total_epochs": median([r["total_epochs"] for r in runs]),
            "median_seconds": median([r["seconds"] for r in runs]),
            "median_best": median([r["best"] for r in runs if r["best"] is not None])}


def meets(s: dict) -> bool:
    """The strict reading: enough seeds found the target within 1/5 of the grid's epochs."""
    return s["success_rate_within_limit"] >= TARGET_SUCCESS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=None, help="how many seeds (default 10; 2 with --quick)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0): seeds S..S+N-1")
    parser.add_argument("--methods", default=None,
                        help=f"comma list of methods to run (default all: {','.join(n for n, _, _ in METHODS)}); "
                             "the exhaustive grid always runs")
    parser.add_argument("--budget", type=int, default=None, help="trials per random/TPE run (default 384, as many as the grid has points, so pruned runs can spend saved epochs on more trials; 48 with --quick)")
    parser.add_argument("--quick", action="store_true", help="for development: 2 seeds, budget 48")
    args = parser.parse_args()
    seeds = args.seeds if args.seeds is not None else (2 if args.quick else 10)
    budget = args.budget if args.budget is not None else (48 if args.quick else 384)
    if seeds < 1 or budget < 1 or args.first_seed < 0:
        sys.exit("bench-search: --seeds and --budget must be >= 1, --first-seed >= 0")
    known = [name for name, _, _ in METHODS]
    wanted = set(known) if args.methods is None else {"grid", *(m.strip() for m in args.methods.split(",") if m.strip())}
    if wanted - set(known):
        sys.exit(f"bench-search: unknown method(s) {', '.join(sorted(wanted - set(known)))}; choose from {', '.join(known)}")
    methods = [m for m in METHODS if m[0] in wanted]
    seed_range = range(args.first_seed, args.first_seed + seeds)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    print(f"bench-search: digits, {GRID_POINTS}-point space x {EPOCHS} epochs (exhaustive grid = {GRID_EPOCHS} epochs), "
          f"seeds {seed_range[0]}..{seed_range[-1]}, random/TPE budget {budget} trials, target within {TOLERANCE} of the grid's best; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    started = time.perf_counter()
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in methods}
    grid_best: dict[int, float] = {}
    near: dict[int, int] = {}  # grid points within the tolerance of the best: how rare a hit is
    for seed in seed_range:
        for name, command, prune in methods:
            trials, seconds = run_one(command, prune, seed, None if command == "grid" else budget)
            if name == "grid":  # the exhaustive grid: its best sets this seed's target
                complete = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
                grid_best[seed] = max(complete)
                near[seed] = sum(v >= grid_best[seed] - TOLERANCE - 1e-9 for v in complete)
            # 1e-9: accuracies are fractions of the validation set; float noise must not decide a tie
            result = score(trials, grid_best[seed] - TOLERANCE - 1e-9)
            result.update(seed=seed, seconds=seconds, grid_best=grid_best[seed])
            runs[name].append(result)
        line = "  ".join(f"{name} {r[-1]['epochs_to_target'] if r[-1]['success'] else 'miss'}"
                         for name, r in runs.items())
        print(f"  seed {seed}: grid best {grid_best[seed]:.4f} ({near[seed]} of {GRID_POINTS} points within "
              f"{TOLERANCE}); epochs to target: {line} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    summary = {name: summarise(rs) for name, rs in runs.items()}

    print()
    limit = GRID_EPOCHS * TARGET_FRACTION
    print(f"Epochs until a configuration within {TOLERANCE} of the exhaustive grid's best, {seeds} seeds "
          f"(medians; epochs to target over successful runs; fraction of the grid's {GRID_EPOCHS} epochs)")
    header = (f"{'method':<17} {f'<= {limit:g} ep':>10} {'in budget':>10} {'epochs to target':>17} {'x grid':>7} "
              f"{'total epochs':>13} {'wall s':>7}")
    print(header)
    print("-" * len(header))
    for name, s in summary.items():
        med = "-" if s["median_epochs_to_target"] is None else f"{s['median_epochs_to_target']:g}"
        frac = "-" if s["fraction_of_grid"] is None else f"{s['fraction_of_grid']:.3f}"
        mark = "*" if name.startswith("grid") else ""
        strict = "-" if name.startswith("grid") else f"{s['successes_within_limit']}/{s['runs']}"
        print(f"{name:<17} {strict:>10} {s['successes']:>5}/{s['runs']:<4} {med + mark:>17} {frac:>7} "
              f"{s['median_total_epochs']:>13g} {s['median_seconds']:>7.2f}")
    print(f"  <= {limit:g} ep: seeds that found the target within {limit:g} epochs (1/5 of the grid; the target's"
          f" reading); in budget: seeds that found it within the whole trial budget")
    print("  * a grid's epochs to target depends on its trial order (enqueued by batch size): an artefact;"
          " its total epochs is the cost of the whole (pruned) grid")

    print()
    verdicts = {}
    for target, names in TARGETS.items():
        names = [n for n in names if n in summary]
        if not names:
            continue
        parts = []
        for name in names:
            s = summary[name]
            med = "-" if s["median_epochs_to_target"] is None else f"{s['median_epochs_to_target']:g}"
            parts.append(f"{name}: {100 * s['success_rate_within_limit']:.0f}% within {limit:g} epochs "
                         f"({'met' if meets(s) else 'not met'}); {100 * s['success_rate']:.0f}% within the budget, "
                         f"median {med} epochs")
        verdicts[target] = any(meets(summary[n]) for n in names)
        print(f"target {target}: target found within {limit:g} epochs (1/5 of {GRID_EPOCHS}) in >= "
              f"{100 * TARGET_SUCCESS:.0f}% of seeds: {'MET' if verdicts[target] else 'NOT MET'} ({'; '.join(parts)})")
    print(f"(took {time.perf_counter() - started:.0f} s)")


    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "task": "digits", "space": SPACE, "epochs": EPOCHS, "grid_points": GRID_POINTS, "grid_epochs": GRID_EPOCHS,
        "tolerance": TOLERANCE, "seeds": list(seed_range), "budget": budget, "quick": args.quick,
        "target": {"fraction_of_grid": TARGET_FRACTION, "success_rate": TARGET_SUCCESS, "met": verdicts,
                   "methods": TARGETS},
        "grid_best": grid_best, "grid_points_within_tolerance": near, "summary": summary, "runs": runs,
        "machine": machine_info(),
    }, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
