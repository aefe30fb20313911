"""Tune the search's defaults fast: bench-search's figures with training replayed from the grid.

    python bench/search_replay.py [--seeds N] [--first-seed S] [--methods A,B] [--tpe-batch 8]
                                  [--startup 10] [--asha-rf 3] [--asha-min 1] [--hb-rf 3] ...

A configuration's result depends only on its values and the study seed (bench/search_quality.py),
so the exhaustive grid's per-epoch curves (trained once per seed, cached in out/replay/) say what
any random or TPE trial would report, epoch by epoch, up to where a pruner stops it. This script
trains the grid for real once per seed, then runs the real search code (Optuna sampler, pruner,
populations, storage) with an objective that looks the curves up instead of training: the epochs and
the successes are bench-search's, in seconds of Optuna rather than minutes of training. Its wall
seconds mean nothing; settings chosen here are confirmed with bench/search_quality.py.

The options set the search's Strategy (sampler, pruner, batch sizes) for this run only.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import optuna

from hpsearch.objective import PopulationObjective
from hpsearch.search import samplers
from hpsearch.search.records import param_config
from hpsearch.search.run import Strategy
from hpsearch.train import EpochReport, MemberResult

import search_quality as sq  # bench/ is on sys.path when a script here runs

CACHE = sq.ROOT / "out" / "replay"
CURVES: dict[tuple, dict] = {}  # (config key, config seed) -> the grid trial's attributes


def grid_curves(seed: int) -> tuple[dict[tuple, dict], float]:
    """The exhaustive grid's trials at this seed (trained once, then read from the cache), and its best."""
    path = CACHE / f"grid-seed{seed}.json"
    if not path.exists():
        trials, _ = sq.run_one("grid", "none", seed, None)
        rows = []
        for t in trials:
            c = param_config(t.params, seed)
            rows.append({"key": list(c.key()), "seed": c.seed, "state": t.state.name, "value": t.value,
                         **{k: t.user_attrs.get(k) for k in ("outcome", "train_loss", "val_loss", "val_accuracy",
                                                             "stopped_epoch", "diverged_step", "reason")}})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows))
    rows = json.loads(path.read_text())
    curves = {(tuple(r["key"]), r["seed"]): r for r in rows}
    best = max(r["value"] for r in rows if r["state"] == "COMPLETE" and r["value"] is not None)
    return curves, best


def replay_population(configs, epochs, on_epoch=None):  # noqa: ANN001, ANN201 - train_population's
    """train_population, with each member's epochs read from the grid's curves instead of trained."""
    results = [MemberResult(c) for c in configs]
    recs = [CURVES[(c.key(), c.seed)] for c in configs]
    ids = list(range(len(configs)))
    for epoch in range(1, epochs + 1):
        healthy, diverged = [], []
        for i in ids:
            rec, r = recs[i], results[i]
            if rec["outcome"] == "diverged" and rec["stopped_epoch"] == epoch:
                r.outcome, r.stopped_epoch, r.diverged_step, r.reason = ("diverged", epoch, rec["diverged_step"],
                                                                         rec["reason"])
                diverged.append(i)
                continue
            r.train_loss.append(rec["train_loss"][epoch - 1])
            r.val_loss.append(rec["val_loss"][epoch - 1])
            r.val_accuracy.append(rec["val_accuracy"][epoch - 1])
            healthy.append(i)
        report = EpochReport(epoch, healthy, [results[i].train_loss[-1] for i in healthy],
                             [results[i].val_loss[-1] for i in healthy],
                             [results[i].val_accuracy[-1] for i in healthy], diverged, 0.0)
        stop = set(on_epoch(report)) if on_epoch else set()
        for i in stop & set(healthy):
            results[i].outcome, results[i].stopped_epoch = "stopped", epoch
            results[i].reason = f"stopped after epoch {epoch}"
        ids = [i for i in healthy if i not in stop]
        if not ids:
            break
    return results


class ReplayObjective(PopulationObjective):
    """The population objective (its grouping by batch size included), training replaced by the curves."""

    def prepare(self) -> None:
        pass  # nothing is trained, so no data is loaded

    def train_population(self, configs, epochs, on_epoch):  # noqa: ANN001, ANN201
        return replay_population(configs, epochs, on_epoch)


class RepeatingTPE(samplers.TrialSeededTPE):
    """TPE allowed to propose configurations it has tried (the behaviour before repeats were avoided)."""

    def _tried(self, study, trial, names):  # noqa: ANN001, ANN202
        return set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=384)
    parser.add_argument("--methods", default="tpe,tpe+asha,tpe+hyperband,random+asha,random+hyperband")
    parser.add_argument("--tpe-batch", type=int, default=Strategy().tpe_batch)
    parser.add_argument("--random-batch", type=int, default=Strategy().random_batch)
    parser.add_argument("--startup", type=int, default=None, help="TPE n_startup_trials")
    parser.add_argument("--ei", type=int, default=None, help="TPE n_ei_candidates")
    parser.add_argument("--multivariate", choices=["yes", "no"], default=None)
    parser.add_argument("--group", action="store_true")
    parser.add_argument("--endpoints", action="store_true", help="TPE consider_endpoints")
    parser.add_argument("--asha-rf", type=int, default=None)
    parser.add_argument("--asha-min", type=int, default=None)
    parser.add_argument("--asha-bootstrap", type=int, default=None)
    parser.add_argument("--asha-rate", type=int, default=None, help="ASHA min_early_stopping_rate")
    parser.add_argument("--hb-rf", type=int, default=None)
    parser.add_argument("--hb-min", type=int, default=None)
    parser.add_argument("--hb-bootstrap", type=int, default=None)
    parser.add_argument("--repeats", action="store_true", help="let TPE repeat configurations (the old default)")
    parser.add_argument("--quiet", action="store_true", help="no per-seed lines")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    tpe_options = {k: v for k, v in {"n_startup_trials": args.startup, "n_ei_candidates": args.ei,
                                     "multivariate": None if args.multivariate is None else args.multivariate == "yes",
                                     "group": args.group or None, "consider_endpoints": args.endpoints or None}.items()
                   if v is not None}
    def sampler(spec):  # noqa: ANN001, ANN202
        if spec.command == "tpe" and (tpe_options or args.repeats):
            return (RepeatingTPE if args.repeats else samplers.TrialSeededTPE)(spec.seed, **tpe_options)
        return samplers.sampler(spec)

    def pruner(spec):  # noqa: ANN001, ANN202
        base = samplers.pruner(spec)
        if spec.prune == "asha":
            opts = {"min_resource": base._min_resource, "reduction_factor": base._reduction_factor,
                    "min_early_stopping_rate": base._min_early_stopping_rate, "bootstrap_count": base._bootstrap_count}
            for key, value in (("reduction_factor", args.asha_rf), ("min_resource", args.asha_min),
                               ("bootstrap_count", args.asha_bootstrap), ("min_early_stopping_rate", args.asha_rate)):
                if value is not None:
                    opts[key] = value
            return optuna.pruners.SuccessiveHalvingPruner(**opts)
        if spec.prune == "hyperband":
            opts = {"min_resource": base._min_resource, "max_resource": base._max_resource,
                    "reduction_factor": base._reduction_factor, "bootstrap_count": base._bootstrap_count}
            for key, value in (("reduction_factor", args.hb_rf), ("min_resource", args.hb_min),
                               ("bootstrap_count", args.hb_bootstrap)):
                if value is not None:
                    opts[key] = value
            return optuna.pruners.HyperbandPruner(**opts)
        return base

    strategy = Strategy(sampler, pruner, args.tpe_batch, args.random_batch)
    methods = [m for m in sq.METHODS if m[0] in args.methods.split(",")]
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    limit = sq.GRID_EPOCHS * sq.TARGET_FRACTION
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in methods}
    started = time.perf_counter()
    for seed in seeds:
        CURVES.clear()
        curves, best = grid_curves(seed)
        CURVES.update(curves)
        threshold = best - sq.TOLERANCE - 1e-9
        for name, command, prune in methods:
            trials, seconds = sq.run_one(command, prune, seed, args.budget, objective=ReplayObjective("digits"),
                                         strategy=strategy)
            result = sq.score(trials, threshold)
            result.update(seed=seed, seconds=seconds)
            runs[name].append(result)
        if not args.quiet:
            print(f"  seed {seed}: " + "  ".join(
                f"{n} {r[-1]['epochs_to_target'] if r[-1]['success'] else 'miss'}" for n, r in runs.items()), flush=True)
    print(f"settings: {vars(args)}")
    for name, rs in runs.items():
        hits = [r["epochs_to_target"] for r in rs if r["success"]]
        strict = sum(sq.within_limit(r) for r in rs)
        worst = max(hits) if hits else None
        print(f"  {name:<17} <= {limit:g}: {strict}/{len(rs)}  in budget: {len(hits)}/{len(rs)}  "
              f"median {statistics.median(hits) if hits else '-'}  worst {worst}  "
              f"total epochs median {statistics.median(r['total_epochs'] for r in rs):g}  "
              f"sec {statistics.median(r['seconds'] for r in rs):.1f}", flush=True)
    print(f"(took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
