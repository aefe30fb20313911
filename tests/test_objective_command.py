"""Your own training code as a command (everything after --): real subprocesses, a tiny script without torch.

The script's curve peaks at lr 1e-2; its modes plant each thing a real script does wrong or slowly.
"""
from __future__ import annotations

import csv
import io
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from helpers import plain_study, run, wait_for

SCRIPT = r'''
import json, math, os, subprocess, sys, time
modes = set(sys.argv[1:])
mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
lr, epochs = float(os.environ["HPSEARCH_LR"]), int(os.environ["HPSEARCH_EPOCHS"])
if "fork" in modes:  # a worker that would run for ever, in the trial's process group
    subprocess.Popen([sys.executable, "-c", "import os, time\nopen('child-%d.pid' % os.getppid(), 'w').write(str(os.getpid()))\n"
                      "while True: time.sleep(0.1)"])
    while not os.path.exists("child-%d.pid" % os.getpid()):  # started and written before the first epoch
        time.sleep(0.01)
if mode == "fail":
    print("starting", flush=True)
    print("Traceback ...\nValueError: boom in the user's script", file=sys.stderr, flush=True)
    sys.exit(3)
if mode == "none":
    print("trained, but said nothing hpsearch can read")
    sys.exit(0)
if mode == "megabytes":
    sys.stdout.write("x" * (3 * 2**20))  # 3 MB without a line end, then the usual lines
    sys.stdout.write("\n")
for epoch in range(1, epochs + 1):
    accuracy = max(0.05, 1 - abs(math.log10(lr) + 2) / 4) * epoch / epochs
    print(f"epoch {epoch} done (a line hpsearch leaves in the log)")
    if mode == "badname":
        print(json.dumps({"epoch": epoch, "acc": accuracy}), flush=True)
    elif mode == "nan":
        print(json.dumps({"epoch": epoch, "val_accuracy": float("nan")}), flush=True)
    elif mode == "diverge-at-once":
        print(json.dumps({"epoch": epoch, "val_accuracy": 0.1, "train_loss": float("nan")}), flush=True)
    elif mode == "diverge" and epoch == 2:
        print(json.dumps({"epoch": epoch, "val_accuracy": 0.1, "train_loss": float("inf")}), flush=True)
    else:
        print(json.dumps({"epoch": epoch, "val_accuracy": accuracy, "val_loss": 1.1 - accuracy,
                          "train_loss": 1.05 - accuracy}), flush=True)
    if "slow-high" in modes and lr > 0.05:
        time.sleep(60)
    while "hold" in modes and os.path.exists("hold"):  # held in training until the test removes the file
        time.sleep(0.05)
'''

GRID = ["--lr", "1e-1,1e-2,1e-3", "--weight-decay", "0", "--batch-size", "32", "--epochs", "2"]


@pytest.fixture()
def script(workdir) -> list[str]:
    path = workdir / "fake_train.py"
    path.write_text(SCRIPT)
    return [sys.executable, str(path)]


def rows(study: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(run("report", study, "--format", "csv").stdout)))


def test_a_command_is_run_per_trial_and_its_lines_are_the_curves(script, workdir):
    result = run("grid", "--study", "c", *GRID, "--", *script, "ok", "{lr}", "{epochs}", "{trial}")
    assert result.exit_code == 0, result.output
    study = plain_study("c")
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    best = max(study.trials, key=lambda t: t.value)
    assert best.params["lr"] == 1e-2 and best.value == pytest.approx(1.0)
    assert best.user_attrs["val_accuracy"] == [0.5, 1.0] and best.user_attrs["train_loss"] == pytest.approx([0.55, 0.05])
    assert best.intermediate_values == {1: 0.5, 2: 1.0}
    log = (workdir / "studies" / "logs" / "c" / f"trial-{best.number}.log").read_text()
    assert "epoch 1 done (a line hpsearch leaves in the log)" in log and '"epoch": 2' in log
    assert study.user_attrs["hpsearch"]["run"][-4:] == ["ok", "{lr}", "{epochs}", "{trial}"]


def test_placeholders_and_the_environment_carry_the_values(workdir):
    (workdir / "echo.py").write_text(
        "import json, os, sys\nopen('seen-' + os.environ['HPSEARCH_TRIAL'], 'w').write(json.dumps("
        "{'argv': sys.argv[1:], 'env': {k: v for k, v in os.environ.items() if k.startswith('HPSEARCH_')}}))\n"
        "print(json.dumps({'epoch': 1, 'val_accuracy': 0.5}))\n")
    result = run("grid", "--study", "p", "--lr", "0.03", "--weight-decay", "0", "--batch-size", "16", "--epochs", "1",
                 "--seed", "7", "--", sys.executable, "echo.py", "--lr={lr}", "{batch_size}", "{optimizer}", "{split}",
                 "{seed}", "{device}", "{{literal}}")
    assert result.exit_code == 0, result.output
    import json

    seen = json.loads((workdir / "seen-0").read_text())
    trial = plain_study("p").trials[0]
    assert seen["argv"] == ["--lr=0.03", "16", "sgd", "val", str(trial.user_attrs["seed"]), "cpu", "{literal}"]
    env = seen["env"]
    assert env["HPSEARCH_LR"] == "0.03" and env["HPSEARCH_BATCH_SIZE"] == "16" and env["HPSEARCH_EPOCHS"] == "1"
    assert json.loads(env["HPSEARCH_PARAMS"])["weight_decay"] == 0.0


def test_pruning_and_divergence_end_the_trials_process_group(script, workdir):
    """A pruned trial's script (sleeping 60 s after each epoch) and the worker it forked die at once."""
    started = time.monotonic()
    grid = ["--lr", "1e-4,1e-2,1e-1", *GRID[2:]]  # lr 0.1 comes last, below the best at epoch 1: ASHA prunes it
    result = run("grid", "--study", "pr", *grid, "--prune", "asha", "--", *script, "fork", "slow-high")
    assert result.exit_code == 0, result.output
    outcomes = {t.params["lr"]: t.user_attrs["outcome"] for t in plain_study("pr").trials}
    assert outcomes == {1e-4: "completed", 1e-2: "completed", 0.1: "pruned"}, outcomes
    assert time.monotonic() - started < 50  # the pruned script was asleep for 60 s: it was ended, not waited for
    pids = [int(p.read_text()) for p in workdir.glob("child-*.pid")]
    assert len(pids) == 3
    for pid in pids:  # every forked worker died with its trial, whatever became of the trial
        wait_for(lambda: not _alive(pid), f"the forked child {pid} to die", timeout=15)

    diverged = run("grid", "--study", "dv", *GRID, "--", *script, "diverge")
    assert diverged.exit_code == 0
    reasons = {r["outcome"] for r in rows("dv")}
    assert reasons == {"diverged"} and "train_loss not finite at epoch 2" in rows("dv")[0]["reason"]
    at_once = run("grid", "--study", "dv1", *GRID, "--", *script, "diverge-at-once")  # before any epoch is kept
    assert at_once.exit_code == 0
    assert {(r["outcome"], r["reason"]) for r in rows("dv1")} == {("diverged", "train_loss not finite at epoch 1")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent to reap it is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_a_timeout_stops_the_trial_and_the_search_goes_on(script):
    result = run("grid", "--study", "t", *GRID, "--timeout", "3", "--", *script, "slow-high")
    assert result.exit_code == 0, result.output
    by_lr = {float(r["lr"]): r for r in rows("t")}
    assert by_lr[0.1]["outcome"] == "timed_out" and "ran past --timeout 3 s" in by_lr[0.1]["reason"]
    assert by_lr[0.01]["outcome"] == by_lr[0.001]["outcome"] == "completed"
    assert "timed out" in result.output


@pytest.mark.parametrize("mode, words", [
    ("fail", "the command exited with status 3: ValueError: boom in the user's script (log: studies/logs/"),
    ("none", "the command exited without a metric line"),
    ("badname", "unknown metric 'acc'; report val_accuracy, val_loss, train_loss"),
    ("nan", "val_accuracy nan at epoch 1 is not an accuracy in [0, 1]"),
])
def test_a_script_that_misbehaves_fails_its_trials_with_the_reason(script, workdir, mode, words):
    result = run("grid", "--study", mode, "--lr", "0.01", "--weight-decay", "0", "--batch-size", "32", "--epochs", "1",
                 "--retries", "0", "--", *script, mode)
    assert result.exit_code == 0, result.output  # failed trials are results; the search ends normally
    (row,) = rows(mode)
    assert row["outcome"] == "failed" and words in row["reason"], row["reason"]
    assert words[:40] in " ".join(result.output.split())  # the failed row's reason is shown, log path included
    assert (workdir / "studies" / "logs" / mode / "trial-0.log").exists()


def test_megabytes_of_output_go_to_the_log_and_the_metrics_still_count(script, workdir):
    result = run("grid", "--study", "mb", "--lr", "0.01", "--weight-decay", "0", "--batch-size", "32", "--epochs", "1",
                 "--", *script, "megabytes")
    assert result.exit_code == 0, result.output
    (row,) = rows("mb")
    assert row["outcome"] == "completed" and float(row["val_accuracy"]) == 1.0
    assert (workdir / "studies" / "logs" / "mb" / "trial-0.log").stat().st_size > 3 * 2**20


@pytest.mark.parametrize("command, words", [
    (["no-such-program-xyz", "{lr}"], "the command after --: 'no-such-program-xyz' not found on the PATH"),
    (["./missing.py"], "the command after --: ./missing.py is not an executable file"),
    ([sys.executable, "t.py", "{learning_rate}"], "'{learning_rate}' is not a placeholder; use {lr}, {weight_decay}"),
    ([sys.executable, "t.py", "{lr"], "'{lr': expected '}' before end of string"),
])
def test_a_bad_command_is_one_line_before_anything_is_written(workdir, command, words):
    result = run("grid", "--study", "bad", *GRID, "--", *command)
    assert result.exit_code == 2 and words in result.stderr, result.output
    assert "Traceback" not in result.output
    assert not (workdir / "studies" / "logs").exists()


@pytest.mark.parametrize("flags, words", [
    (["--task", "digits"], "--task digits: your own code (--objective or a command) trains without a task"),
    (["--objective", "x.py:f"], "give --objective or a command after --, not both"),
    (["--schedule", "cosine"], "your own code sets its own learning-rate schedule"),
    (["--timeout", "0"], "--timeout 0: give a number of seconds > 0"),
])
def test_own_code_flags_that_do_not_go_together_are_refused(script, flags, words):
    result = run("grid", *GRID, *flags, "--", *script)
    assert result.exit_code == 2 and words in result.stderr, result.output


def test_the_whole_recipe_runs_on_a_command_and_the_test_split_is_locked(script, workdir):
    assert run("grid", "--study", "coarse", *GRID, "--", *script, "ok").exit_code == 0
    again = run("grid", "--study", "coarse", *GRID, "--", *script, "other")  # another command: another study
    assert again.exit_code == 2 and "study 'coarse' was run with run=" in again.stderr
    refined = run("refine", "--from", "coarse", "--study", "fine", "--epochs", "2", "--top", "1")
    assert refined.exit_code == 0, refined.output
    fine = plain_study("fine")
    assert fine.user_attrs["hpsearch"]["run"][-1] == "ok" and len(fine.trials) == 3  # 1e-2 and a refined step each side
    tested = run("test", "--study", "fine")
    assert tested.exit_code == 0, tested.output
    record = plain_study("fine").user_attrs["test_result"]
    assert record["test_accuracy"] == pytest.approx(1.0) and record["config"]["lr"] == 0.01
    assert (workdir / "studies" / "logs" / "fine" / "test").is_dir()
    locked = run("test", "--study", "fine")
    assert locked.exit_code == 2 and "tested already" in locked.stderr
    written = run("report", "fine", "--format", "toml", "--output", "fine.toml")
    assert written.exit_code == 0 and "refine" in (workdir / "fine.toml").read_text()
    written = run("report", "coarse", "--format", "toml", "--output", "coarse.toml")
    assert written.exit_code == 0 and '"fake_train.py' not in (workdir / "coarse.toml").read_text()
    assert "run = [" in (workdir / "coarse.toml").read_text()
    continued = run("grid", "--config", "coarse.toml")
    assert continued.exit_code == 0 and "Nothing to train: study 'coarse' already has its 3 trials" in continued.stdout


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["kill-9", "ctrl-c", "sigterm"])
def test_stopping_hpsearch_leaves_no_trial_process_and_the_rerun_trains_each_point_once(script, workdir, spawned, stop):
    (workdir / "hold").touch()
    args = ["grid", "--study", "k", *GRID, "--", *script, "fork", "hold"]
    proc = spawned(workdir, args)
    wait_for(lambda: list(workdir.glob("child-*.pid")), "a trial's forked worker to start", timeout=120)
    found = next(workdir.glob("child-*.pid"))
    child, script_pid = int(found.read_text()), int(found.name.split("-")[1].split(".")[0])
    proc.send_signal(stop)
    proc.communicate()
    assert proc.returncode == {signal.SIGKILL: -9, signal.SIGINT: 130, signal.SIGTERM: 143}[stop]
    for pid in (script_pid, child):  # the script and the worker it forked, both held in training
        wait_for(lambda: not _alive(pid), f"trial process {pid} to die with hpsearch", timeout=20)
    (workdir / "hold").unlink()
    resumed = spawned(workdir, args, text=True)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    trials = plain_study("k").trials
    done = [t.params["lr"] for t in trials if t.state.name == "COMPLETE"]
    assert sorted(done) == [1e-3, 1e-2, 1e-1]  # each grid point exactly once
    stopped = "died" if stop == signal.SIGKILL else "interrupted"  # a stop it saw is recorded as such
    assert [t.user_attrs.get("outcome") for t in trials if t.state.name != "COMPLETE"] == [stopped]
    for path in workdir.glob("child-*.pid"):  # the rerun's forked workers ended with their trials too
        pid = int(path.read_text())
        wait_for(lambda: not _alive(pid), f"forked worker {pid} to end with its trial", timeout=20)


def test_the_readme_recipe_runs_on_the_example_script_both_ways(workdir):
    """examples/train_cnn.py, unchanged, through grid -> refine -> report -> test, as a command and as a function."""
    from helpers import ROOT

    example = str(ROOT / "examples" / "train_cnn.py")
    small = ["--lr", "0.1,0.01", "--weight-decay", "0", "--batch-size", "64", "--epochs", "1"]
    command = [sys.executable, example, "--lr", "{lr}", "--weight-decay", "{weight_decay}", "--batch-size",
               "{batch_size}", "--momentum", "{momentum}", "--epochs", "{epochs}", "--seed", "{seed}", "--split", "{split}"]
    for name, how in (("cmd", ["--", *command]), ("fn", ["--objective", f"{example}:objective"])):
        assert run("grid", "--study", name, *small, *how).exit_code == 0
        refined = run("refine", "--from", name, "--study", f"{name}-fine", "--top", "1", "--epochs", "1")
        assert refined.exit_code == 0, refined.output
        assert run("test", "--study", f"{name}-fine").exit_code == 0
        report = run("report", name, f"{name}-fine")
        assert report.exit_code == 0 and "Test (study" in report.stdout
    # the same script, the same seeds: both ways train the same models
    by_way = {name: {t.params["lr"]: t.value for t in plain_study(name).trials} for name in ("cmd", "fn")}
    assert by_way["cmd"] == pytest.approx(by_way["fn"], abs=1e-6)
