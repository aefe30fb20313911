#!/usr/bin/env bash
# hpsearch on a GPU machine, in one go: versions, the CUDA tests, `hpsearch check` on CUDA, then the
# benchmarks on CUDA (general models first, the 384-point digits grid last: the slowest part, so that a run
# cut short still leaves the earlier results; each step before it has a time limit of its own, so that a hang
# cannot eat the last step's time). Run from the checkout's root, hpsearch installed or not:
#
#     OUT=out/gpu bash bench/gpu.sh
#
# Environment: OUT (folder for the log and the JSON; default out/gpu), DEVICE (cuda), REPEATS (3, bench/run.py),
# GENERAL_REPEATS (2, bench/general.py), PYTHON (python3). Optuna must be importable; hpsearch is taken from
# this checkout (PYTHONPATH), through `python -m hpsearch` where no hpsearch command is installed.
# On a machine without CUDA, DEVICE=cpu runs the same steps there (the CUDA tests are then skipped).
# Every step runs even when an earlier one fails; the exit status is that of the first failure (124: a limit).
set -o pipefail
OUT=${OUT:-out/gpu}
DEVICE=${DEVICE:-cuda}
REPEATS=${REPEATS:-3}
GENERAL_REPEATS=${GENERAL_REPEATS:-2}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
suffix=$([ "$DEVICE" = cpu ] && echo "" || echo "_${DEVICE//:/}")
status=0

step() {  # step NAME COMMAND...: one timed step; remembers the first failure
    echo
    echo "=== $1 ($(date -u +%H:%M:%S), ${SECONDS} s into the script)"
    shift
    "$@"
    local rc=$?
    echo "=== exit status $rc after ${SECONDS} s"
    [ "$rc" -ne 0 ] && [ "$status" -eq 0 ] && status=$rc
    return 0
}

{
    step "devices and versions" bash -c "nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader; nproc; $PY -c 'import sys, torch, optuna; print(\"python\", sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"-\", \"optuna\", optuna.__version__)'"
    # test_cuda.py: every trainer path and grid/check on CUDA against the CPU; test_train's CUDA test; the check
    # command (on CUDA where auto finds it); the batched-layers and optimizer tests under this machine's torch.
    step "tests" timeout -k 5 150 "$PY" -m pytest -q -p no:cacheprovider -rfEs tests/test_cuda.py tests/test_train.py tests/test_check.py \
        tests/test_train_layers.py tests/test_optimizers.py -k "cuda or population or layers or check"
    step "check digits" timeout -k 5 60 "$PY" -m hpsearch check --task digits --device "$DEVICE"
    step "check mnist1d" timeout -k 5 90 "$PY" -m hpsearch check --task mnist1d --device "$DEVICE"
    step "kernels per step (bench/launches.py)" timeout -k 5 60 "$PY" bench/launches.py --device "$DEVICE"
    step "bench/general.py" timeout -k 5 180 "$PY" bench/general.py --device "$DEVICE" --repeats "$GENERAL_REPEATS"
    cp "out/bench_general$suffix.json" "$OUT/" 2>/dev/null
    step "bench/run.py" "$PY" bench/run.py --device "$DEVICE" --repeats "$REPEATS" --no-models
    cp "out/bench$suffix.json" "$OUT/" 2>/dev/null
    echo
    echo "=== done after ${SECONDS} s, status $status"
    exit "$status"
} 2>&1 | tee "$OUT/log"
