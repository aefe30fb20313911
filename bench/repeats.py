"""`make bench-repeats`: what --repeats K costs against --repeats 1 (README: How sure is the ranking).

    python bench/repeats.py [--runs N] [--repeats 1,3] [--large]

Whole `hpsearch grid` processes on the default grid (digits, 24 points, 5 epochs), interleaved
K=1, K=3, K=1, K=3, ... so that machine noise falls on every arm; the median of N runs per arm.
Search alone: the earliest trial start to the latest trial end in the journal. With --population
trainer each configuration's K seeds are K more members of its population, so the cost grows by far
less than K while the populations are small (the default grid: 12 configurations per batch size).
--large adds the bench's 384-point grid (bench/run.py), where populations are already 64 members.
Writes out/bench_repeats.json.
"""
from __future__ import annotations

import argparse
import json
import statistics

from _common import machine_info  # bench/ is on sys.path when a script here runs
from run import FULL_GRID, ROOT, grid_size, run_hpsearch_arm

DEFAULT_GRID: dict[str, str] = {}  # hpsearch grid's own default: 4 lr x 3 weight decays x 2 batch sizes


def measure(grid: dict[str, str], counts: list[int], runs: int) -> dict[str, dict]:
    arms: dict[int, list[dict]] = {k: [] for k in counts}
    for run in range(runs):
        for k in counts:
            result = run_hpsearch_arm(grid, ["--repeats", str(k), "--device", "cpu"], name=f"repeats-{k}")
            arms[k].append(result)
            print(f"  run {run + 1}/{runs} --repeats {k}: {result['whole_seconds']:.2f} s whole, "
                  f"{result['search_seconds']:.2f} s search, best {result['best']}", flush=True)
    base = arms[counts[0]]
    out = {}
    for k, results in arms.items():
        whole = statistics.median(r["whole_seconds"] for r in results)
        search = statistics.median(r["search_seconds"] for r in results)
        out[str(k)] = {"whole_seconds": whole, "search_seconds": search,
                       "whole_ratio": whole / statistics.median(r["whole_seconds"] for r in base),
                       "search_ratio": search / statistics.median(r["search_seconds"] for r in base),
                       "best": [r["best"] for r in results], "runs": results}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs of each arm")
    parser.add_argument("--repeats", default="1,3", help="the --repeats counts to compare, the first the baseline")
    parser.add_argument("--large", action="store_true", help="also the 384-point grid of bench/run.py")
    args = parser.parse_args()
    counts = [int(k) for k in args.repeats.split(",")]
    grids = {"default (24 points)": DEFAULT_GRID}
    if args.large:
        grids[f"bench ({grid_size(FULL_GRID)} points)"] = FULL_GRID
    result = {"counts": counts, "grids": {}}
    for name, grid in grids.items():
        print(f"{name}:", flush=True)
        measured = measure(grid, counts, args.runs)
        result["grids"][name] = measured
        for k, arm in measured.items():
            print(f"  --repeats {k}: median {arm['whole_seconds']:.2f} s whole ({arm['whole_ratio']:.2f}x), "
                  f"{arm['search_seconds']:.2f} s search ({arm['search_ratio']:.2f}x)", flush=True)
    result["machine"] = machine_info()
    path = ROOT / "out" / "bench_repeats.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
