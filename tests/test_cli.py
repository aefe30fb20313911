"""The command line end to end: click's CliRunner, the real journal, digits, 1 epoch."""
from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from hpsearch.cli import main

from helpers import ROOT, plain_study, run, tiny

TINY = tiny()
COLUMNS = ["rank", "lr", "weight_decay", "batch_size", "momentum", "epochs", "val_accuracy", "val_loss",
           "train_loss", "outcome", "seconds"]
README = ROOT / "README.md"


def test_grid_prints_a_ranked_table(workdir):
    result = run("grid", "--study", "g", *TINY)
    assert result.exit_code == 0, result.output
    header = " ".join(result.stdout.split("\n")[1:4])  # two-line headers
    for word in ("#", "trial", "lr", "weight", "decay", "batch", "size", "momentum", "epochs", "val", "acc", "loss",
                 "train", "outcome", "secs"):
        assert word in header.split(), word
    assert "Best: val acc" in result.stdout and "Trained 8 trials" in result.stdout
    assert (workdir / "studies" / "hpsearch.journal").exists()
    again = run("grid", "--study", "g", *TINY)
    assert "Nothing to train" in again.stdout


def test_random_and_tpe_run_and_rank(workdir):
    for command in ("random", "tpe"):
        result = run(command, "--trials", "4", "--epochs", "1", "--batch-size", "128", "--study", command)
        assert result.exit_code == 0, result.output
        assert "Trained 4 trials" in result.stdout and "Best: val acc" in result.stdout


def test_report_csv_is_best_first_with_diverged_trials_last(workdir):
    # lr 3 makes the digits MLP's loss explode within the first epoch
    assert run("grid", "--study", "c", "--lr", "3,1e-1,1e-2", "--weight-decay", "0", "--batch-size", "64",
               "--epochs", "1").exit_code == 0
    result = run("report", "c", "--format", "csv", "--output", "c.csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO((workdir / "c.csv").read_text())))
    assert len(rows) == 3 and all(c in rows[0] for c in COLUMNS)
    assert [r["rank"] for r in rows] == ["1", "2", ""]
    assert float(rows[0]["val_accuracy"]) >= float(rows[1]["val_accuracy"])
    last = rows[-1]
    assert last["outcome"] == "diverged" and last["lr"] == "3.0"
    assert last["val_accuracy"] == last["val_loss"] == last["train_loss"] == ""
    assert "epoch 1, step" in last["reason"]


def test_report_table_and_study_list(workdir):
    run("grid", "--study", "g", *TINY)
    table = run("report", "g")
    assert table.exit_code == 0 and table.stdout.count("completed") == 8
    for width in (80, 100, 120, 140):  # columns are left out until the table fits: no cell is cut short
        narrow = run("report", "g", env={"COLUMNS": str(width)})
        assert narrow.exit_code == 0 and narrow.stdout.count("completed") == 8
        lines = narrow.stdout.splitlines()
        assert max(len(line) for line in lines) <= width and "…" not in "".join(lines[:12]), narrow.stdout
    listing = run("report")
    assert listing.exit_code == 0 and "g" in listing.stdout and "grid" in listing.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["grid", "--lr", "0"], 2, "learning rate must be > 0"),
        (["grid", "--momentum", "1.5"], 2, "momentum must be in [0, 1)"),
        (["grid", "--batch-size", "0.5"], 2, "an integer from 1 to 1048576"),
        (["grid", "--lr", "1e-1:1e-3:3"], 2, "low end must be below"),
        (["grid", "--lr", "1e-4:1e-1"], 2, "needs a list of values or a count"),
        (["grid", "--epochs", "0"], 2, "--epochs 0: give an integer from 1 to 100000"),
        (["random", "--trials", "0"], 2, "--trials 0: give an integer from 1 to 1000000"),
        (["grid", "--task", "imagenet"], 2, "unknown task 'imagenet'"),
        (["grid", "--lrr", "1"], 2, "No such option"),
        (["grid", "--epochs", "many"], 2, "'many' is not a valid integer"),
        (["grid", "--device", "cuda:0", "--epochs", "1"], 2, "no CUDA device"),
        (["report", "nothing"], 2, "no studies here"),
        (["report", "--format", "pdf"], 2, "'pdf' is not one of"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(workdir, args, code, message):
    if "cuda:0" in args:
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is visible here")
    result = run(*args)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("Error: ")
    assert "Traceback" not in result.output


def test_unknown_study_names_the_ones_there(workdir):
    run("grid", "--study", "g", *TINY)
    result = run("report", "other")
    assert result.exit_code == 2 and "no study named 'other'" in result.stderr and "(studies there: g)" in result.stderr


def test_changed_settings_are_refused_with_a_hint(workdir):
    run("grid", "--study", "g", *TINY)
    result = run("grid", "--study", "g", *tiny(epochs=2))
    assert result.exit_code == 2 and "choose another --study name" in result.stderr


def test_a_password_in_a_storage_url_is_never_shown(workdir):
    result = run("grid", "--storage", "postgresql://me:s3cret@127.0.0.1:1/none", "--epochs", "1")
    assert result.exit_code == 1
    assert "s3cret" not in result.output and "me:***@" in result.stderr


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help_with_an_example_and_is_in_the_readme(command):
    result = run(command, "--help")
    assert result.exit_code == 0 and "Example" in result.stdout
    assert f"hpsearch {command}" in README.read_text()


def test_report_and_help_do_not_import_torch(workdir):
    run("grid", "--study", "g", *TINY)
    code = ("import sys; from hpsearch.cli import main\n"
            "try: main(['report', 'g'])\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'report imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=workdir)


@pytest.mark.parametrize("when", ['"state":4', '"state":1'])  # grid enqueued / first trials told
def test_ctrl_c_records_interrupted_trials_and_the_rerun_completes(workdir, when):
    """A real SIGINT to a real process: exit 130, nothing left RUNNING, then every point once."""
    args = [sys.executable, "-m", "hpsearch", "grid", "--study", "s", "--lr", "1e-4:1e-1:8",
            "--weight-decay", "0,1e-5:1e-3:3", "--batch-size", "16:128", "--momentum", "0.5,0.9,0.99",
            "--epochs", "4"]  # seconds of training after the first told trial: the signal lands in it
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(args, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = workdir / "studies" / "hpsearch.journal"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:  # wait for the first told trials
        if journal.exists() and when in journal.read_text():
            break
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert "Best: val acc" in out or "No trial completed" in out  # the results so far are printed

    from optuna.trial import TrialState

    assert not [t for t in plain_study("s", journal).trials if t.state == TrialState.RUNNING]
    done_before = {t.number: t.value for t in plain_study("s", journal).trials if t.state == TrialState.COMPLETE}
    rerun = subprocess.run(args, cwd=workdir, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    trials = plain_study("s", journal).trials
    finished = [tuple(sorted(t.params.items())) for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 384 and len(set(finished)) == 384
    assert all(trials[n].value == v for n, v in done_before.items())
    assert re.search(r"Trained \d+ trials", rerun.stdout)


def test_any_optuna_storage_url_and_the_environment_default(workdir, monkeypatch):
    url = f"sqlite:///{workdir / 'x.db'}"
    result = run("grid", "--study", "q", "--storage", url, *TINY)
    assert result.exit_code == 0, result.output
    import optuna

    assert len(optuna.load_study(study_name="q", storage=url).trials) == 8
    monkeypatch.setenv("HPSEARCH_STORAGE", str(workdir / "elsewhere.journal"))
    assert run("grid", "--study", "e", *TINY).exit_code == 0
    assert (workdir / "elsewhere.journal").exists() and not (workdir / "studies").exists()
    assert run("report", "e", "--format", "csv").stdout.count("\n") == 9  # header + 8 rows


def test_pruned_trials_show_as_such_with_their_epoch(workdir):
    result = run("grid", "--study", "p", "--prune", "asha", "--lr", "1,1e-1,1e-2,1e-3,1e-4", "--weight-decay", "0",
                 "--batch-size", "64,128", "--epochs", "4")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(run("report", "p", "--format", "csv").stdout)))
    pruned = [r for r in rows if r["outcome"] == "pruned"]
    assert pruned and all(re.fullmatch(r"pruned by asha after epoch [123]", r["reason"]) for r in pruned)
    assert all(r["rank"] == "" and r["val_accuracy"] == "" for r in pruned)
    assert rows[0]["outcome"] == "completed"
