"""The report: every output format (table, csv, markdown, json, html, PNG plots) through the real CLI on tiny
digits studies; where it may write; studies an older hpsearch or plain Optuna wrote. (The diagnosis, edges and
distance to the best it shows: test_results.py.)"""
from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import subprocess
import sys

import optuna
import pytest

from hpsearch.storage.store import load_study, open_storage

from helpers import plain_storage, plain_study, run, snapshot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- the formats, through the CLI, on two tiny real studies ---

@pytest.fixture(scope="module")
def journal(tmp_path_factory) -> str:
    """A coarse study (2 learning rates, 2 epochs) and a later one, marked as refined from it."""
    path = str(tmp_path_factory.mktemp("report") / "studies.journal")
    for study, lrs, epochs in (("coarse", "1e-1,1e-2", "2"), ("fine", "5e-2,2e-1", "3")):
        result = run("grid", "--study", study, "--lr", lrs, "--weight-decay", "0", "--batch-size", "32",
                     "--epochs", epochs, "--storage", path)
        assert result.exit_code == 0, result.output
    store = open_storage(path, create=False)
    fine = load_study(store.storage, store.shown, "fine")
    fine.set_user_attr("hpsearch", {**fine.user_attrs["hpsearch"],
                                    "source": {"studies": ["coarse"], "trials": [0], "top": 1, "rule": "test"}})
    fine.set_user_attr("test_result", {"config": {"lr": 0.05, "weight_decay": 0.0, "batch_size": 32,
                                                  "momentum": 0.9}, "trial": 0, "test_loss": 0.2,
                                       "test_accuracy": 0.95, "epochs": 3, "when": "2026-01-01T00:00:00"})
    return path


def _csv_rows(journal: str, *studies: str) -> list[dict]:
    result = run("report", *studies, "--format", "csv", "--storage", journal)
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.stdout)))


def test_csv_keeps_its_columns_and_adds_the_new_ones_last(journal):
    rows = _csv_rows(journal, "coarse")
    columns = list(rows[0])
    assert columns[:4] == ["rank", "study", "trial", "lr"]
    assert columns[-9:] == ["phase", "delta", "diagnosis", "edges",  # then the columns of "how sure"
                            "val_accuracy_se", "val_loss_se", "repeats", "tie", "bound"]
    assert float(rows[0]["delta"]) == 0.0 and float(rows[1]["delta"]) <= 0.0
    assert rows[0]["edges"].startswith("lr ")  # two learning rates: the best is on one edge or the other


def test_table_of_two_studies_shows_phase_delta_diagnosis_and_test(journal):
    result = run("report", "coarse", "fine", "--storage", journal)
    assert result.exit_code == 0, result.output
    header = " ".join(result.stdout.splitlines()[1:4]).split()
    for word in ("study", "phase", "vs", "best", "diagnosis"):
        assert word in header, word
    assert "refine" in result.stdout and " grid " in result.stdout
    assert "Test (study fine, trial 0" in result.stdout and "test accuracy 0.9500" in result.stdout


def test_markdown_is_a_pipe_table_with_the_best_line(journal):
    result = run("report", "coarse", "--format", "markdown", "--storage", journal)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| # | trial | lr |") and "diagnosis" in lines[0]
    assert re.fullmatch(r"\|(-{3}:|:-{3})(\|(-{3}:|:-{3}))+\|", lines[1])
    best = _csv_rows(journal, "coarse")[0]
    assert lines[2].startswith(f"| 1 | {best['trial']} | {float(best['lr']):.3g} |")
    assert len([line for line in lines if line.startswith("| ")]) == 3  # header + 2 trials
    assert any(line.startswith("- Best: val acc") for line in lines)
    # two learning rates searched: the best sits on one edge, and the note says which way to widen
    side = "largest" if float(best["lr"]) == 0.1 else "smallest"
    assert f"- best lr {float(best['lr']):.3g} is the {side} value searched: widen" in result.stdout


def test_json_has_every_trial_with_its_curves_and_the_study_settings(journal):
    result = run("report", "coarse", "fine", "--format", "json", "--storage", journal)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [s["study"] for s in document["studies"]] == ["coarse", "fine"]
    assert document["studies"][0]["settings"]["epochs"] == 2 and document["studies"][0]["test_result"] is None
    assert document["studies"][1]["phase"] == "refine" and document["studies"][1]["test_result"]["trial"] == 0
    assert len(document["trials"]) == 4
    for trial in document["trials"]:
        assert len(trial["curves"]["train_loss"]) == len(trial["curves"]["val_accuracy"]) == trial["epochs"]
        assert trial["curves"]["val_accuracy"][-1] == trial["val_accuracy"]  # full precision
        assert trial["state"] == "COMPLETE" and "seed" in trial["attrs"] and trial["diagnosis"]


def test_html_is_one_self_contained_file_with_the_plots(journal, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("report", "coarse", "fine", "--format", "html", "--storage", journal)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "coarse+fine.html").read_text()  # the default name, said on stderr
    assert "coarse+fine.html" in result.stderr
    assert "http://" not in page and "https://" not in page and "<script" not in page
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert all(base64.b64decode(s.split(",", 1)[1]).startswith(PNG_MAGIC) for s in sources)
    assert len(sources) == 3  # loss curves, metric against learning rate, importances
    for text in ("Ranked trials", "diagnosis", "mattered most", "How to read ±, ties and the diagnosis", "the data cannot tell them apart", "refine"):
        assert text in page, text


def test_plots_dir_gets_valid_pngs_and_the_importance_sentence(journal, tmp_path):
    result = run("report", "coarse", "--plots", str(tmp_path / "plots"), "--storage", journal)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert names == ["importance.png", "loss_curves.png", "metric_vs_lr.png"]
    assert all((tmp_path / "plots" / n).read_bytes().startswith(PNG_MAGIC) for n in names)
    assert "Wrote plots to" in result.stderr and "learning rate mattered most (100%" in result.stderr


def test_report_formats_and_plots_do_not_import_torch(journal, tmp_path):
    code = ("import sys; from hpsearch.cli import main\n"
            f"try: main(['report', 'coarse', '--format', 'html', '--output', 'r.html', '--plots', 'p',"
            f" '--storage', {journal!r}])\n"
            "except SystemExit as e: assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules, 'report imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=tmp_path)
    assert (tmp_path / "r.html").exists() and (tmp_path / "p" / "loss_curves.png").exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed "
                    "(apt-get install chromium) to check that the HTML report opens in a browser")
def test_html_report_opens_in_headless_chromium(journal, tmp_path):
    page = tmp_path / "report.html"
    assert run("report", "coarse", "--format", "html", "--output", str(page), "--storage", journal).exit_code == 0
    shot = tmp_path / "shot.png"
    browser = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
        check=False, capture_output=True, text=True, timeout=120)
    assert browser.returncode == 0, browser.stderr[-2000:]
    assert shot.read_bytes().startswith(PNG_MAGIC) and shot.stat().st_size > 10_000
    console = [line for line in browser.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console  # no JavaScript error or console message from the page


# --- where reports and plots may be written: never over the storage, never over a stranger's file ---

def _setup(folder, journal) -> None:
    """The studies in the default journal of ``folder``, and the files the hostile cases aim at."""
    import os
    import sqlite3

    (folder / "studies").mkdir()
    shutil.copyfile(journal, folder / "studies" / "hpsearch.journal")
    shutil.copyfile(journal, folder / "other.journal")
    sqlite3.connect(folder / "k.db").execute("CREATE TABLE t (x)").connection.commit()
    (folder / "data.csv").write_text("x,y\n1,2\n")
    (folder / "coarse.html").write_text("<html>my own page</html>\n")
    os.symlink("studies/hpsearch.journal", folder / "link.csv")
    os.link(folder / "studies" / "hpsearch.journal", folder / "hard.csv")
    for name in ("p-link", "p-stranger", "good"):
        (folder / name).mkdir()
    os.symlink("../studies/hpsearch.journal", folder / "p-link" / "loss_curves.png")
    (folder / "p-stranger" / "metric_vs_lr.png").write_text("my notes\n")
    (folder / "plotsj").mkdir()
    shutil.copyfile(journal, folder / "plotsj" / "importance.png")  # a journal named like a plot


HOSTILE_OUTPUTS = [  # (id, arguments after `report coarse`)
    ("the-journal", ["--format", "csv", "--output", "studies/hpsearch.journal"]),
    ("the-journal-through-dotdot", ["--format", "csv", "--output", "./studies/../studies/hpsearch.journal"]),
    ("a-symlink-to-the-journal", ["--format", "json", "--output", "link.csv"]),
    ("a-hard-link-to-the-journal", ["--format", "csv", "--output", "hard.csv"]),
    ("the-journal-flock", ["--format", "markdown", "--output", "studies/hpsearch.journal.flock"]),
    ("optunas-lock-file", ["--format", "csv", "--output", "studies/hpsearch.journal.lock"]),
    ("another-journal", ["--format", "csv", "--output", "other.journal"]),
    ("an-sqlite-database", ["--format", "toml", "--output", "k.db"]),
    ("a-users-data-file", ["--format", "csv", "--output", "data.csv"]),
    ("default-html-name-over-a-users-page", ["--format", "html"]),
    ("the-table-over-a-journal", ["--output", "other.journal"]),
    ("sqlite-storage-itself", ["--format", "csv", "--output", "k.db", "--storage", "sqlite:///k.db"]),
    ("plots-over-a-symlink-to-the-journal", ["--plots", "p-link"]),
    ("plots-over-a-users-file", ["--plots", "p-stranger"]),
    ("plots-folder-is-the-journal", ["--plots", "studies/hpsearch.journal"]),
    ("plots-folder-is-a-device", ["--plots", "/dev/null"]),
    ("plots-onto-the-journal-named-like-a-plot", ["--plots", "plotsj", "--storage", "plotsj/importance.png"]),
    ("good-plots-bad-output", ["--plots", "good", "--format", "csv", "--output", "studies/hpsearch.journal"]),
    ("good-plots-refused-format", ["fine", "--plots", "good", "--format", "toml", "--output", "fine.toml"]),
]


@pytest.mark.parametrize("args", [pytest.param(a, id=i) for i, a in HOSTILE_OUTPUTS])
def test_a_report_or_plot_never_writes_over_the_storage_or_a_strangers_file(journal, workdir, args):
    _setup(workdir, journal)
    if "sqlite:///k.db" in args:  # a real SQLite storage holding the study
        optuna.copy_study(from_study_name="coarse", from_storage=plain_storage(journal),
                          to_storage="sqlite:///k.db")
    open_storage(args[args.index("--storage") + 1] if "--storage" in args else None, create=False)  # its lock file too
    before = snapshot(workdir)
    result = run("report", "coarse", *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    assert snapshot(workdir) == before  # nothing written, the plots of a good folder neither


@pytest.mark.parametrize("fmt", ["table", "csv", "markdown", "json", "html", "toml"])
def test_a_report_writes_over_its_own_earlier_file(journal, tmp_path, fmt):
    page, plots = tmp_path / f"r.{fmt}", tmp_path / "plots"
    for _ in range(2):
        result = run("report", "coarse", "--format", fmt, "--output", str(page), "--plots", str(plots), "--storage", journal)
        assert result.exit_code == 0, result.output
    assert page.stat().st_size > 0 and len(list(plots.iterdir())) == 3


# --- values an older hpsearch stored, which parsing refuses now ---

def _hpsearch_trial(batch_size: int, accuracy: float, epochs: int = 1) -> optuna.trial.FrozenTrial:
    from optuna.distributions import FloatDistribution, IntDistribution

    return optuna.trial.create_trial(
        params={"lr": 0.1, "weight_decay": 0.0, "batch_size": batch_size, "momentum": 0.9},
        distributions={"lr": FloatDistribution(0.01, 0.1), "weight_decay": FloatDistribution(0.0, 0.0),
                       "batch_size": IntDistribution(32, max(32, batch_size)), "momentum": FloatDistribution(0.9, 0.9)},
        value=accuracy, user_attrs={"outcome": "completed", "epochs": epochs, "val_accuracy": [accuracy],
                                    "val_loss": [1.0], "train_loss": [1.0, 0.9]})


@pytest.mark.parametrize("odd", ["batch_size", "epochs"])
def test_stored_values_beyond_todays_bounds_are_shown_and_never_trained(workdir, odd):
    """A study written before the bounds (batch size 1e20, 1e20 epochs): report, the listing, csv and json show
    it as it is; refine leaves the trial out with a line, or asks for the flag; test refuses it in one line."""
    path = str(workdir / "old.journal")
    huge = 10**20
    study = optuna.create_study(storage=plain_storage(path), study_name="old", direction="maximize")
    study.set_user_attr("hpsearch", {"command": "grid", "task": "digits", "epochs": huge if odd == "epochs" else 1,
                                     "seed": 0, "prune": "none", "metric": "val_accuracy",
                                     "space": {"lr": "0.1", "weight_decay": "0", "batch_size": "32", "momentum": "0.9"}})
    study.add_trial(_hpsearch_trial(huge, 0.9) if odd == "batch_size" else _hpsearch_trial(32, 0.9, epochs=huge))
    study.add_trial(_hpsearch_trial(32, 0.5))
    for args in (["report", "old"], ["report", "old", "--format", "csv"], ["report", "old", "--format", "json"],
                 ["report"]):
        result = run(*args, "--storage", path)
        assert result.exit_code == 0 and "internal error" not in result.output, result.output
        assert args == ["report"] or str(huge) in result.stdout
    tested = run("test", "--study", "old", "--storage", path)
    refined = run("refine", "--from", "old", "--show", "--storage", path)
    if odd == "batch_size":
        assert tested.stderr.startswith("Error: trial 0 of study 'old' cannot be trained again (batch_size 1e+20")
        assert refined.exit_code == 0, refined.output
        assert "skipped old#0: batch_size 1e+20: a batch size must be an integer from 1 to 1048576" in refined.stdout
        assert "[old#1]" in refined.stdout and "old#0]" not in refined.stdout
    else:
        assert tested.stderr.startswith(f"Error: trial 0 of study 'old' cannot be trained again (epochs {huge} is not "
                                        "an integer from 1 to 100000)")
        assert refined.stderr.startswith(f"Error: study 'old' was run with epochs {huge}, which is not an integer "
                                         "from 1 to 100000 now; give --epochs")
        assert refined.exit_code == 2 and refined.stderr.count("\n") == 1
        assert run("refine", "--from", "old", "--show", "--epochs", "2", "--storage", path).exit_code == 0
    assert tested.exit_code == 2 and tested.stderr.count("\n") == 1, tested.output
    assert len(plain_study("old", path).user_attrs) == 1  # nothing recorded


# --- studies hpsearch did not make: listed, read-only, refused in one line ---

FOREIGN = ("strings", "minimize", "multi")


def _foreign_journal(path: str) -> None:
    """Three studies written by plain Optuna into the journal hpsearch uses, each with an attribute of its own."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = plain_storage(path)
    studies = {"strings": optuna.create_study(storage=storage, study_name="strings", direction="maximize"),
               "minimize": optuna.create_study(storage=storage, study_name="minimize", direction="minimize"),
               "multi": optuna.create_study(storage=storage, study_name="multi", directions=["minimize", "maximize"])}
    studies["strings"].optimize(lambda t: len(t.suggest_categorical("optimizer", ["sgd", "adam"]))
                                + t.suggest_float("lr", 1e-3, 1e-1, log=True), n_trials=3)
    studies["minimize"].optimize(lambda t: t.suggest_float("lr", 1e-3, 1e-1) ** 2, n_trials=3)  # hpsearch's names
    studies["multi"].optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_int("n", 1, 5)), n_trials=3)
    for study in studies.values():
        study.set_user_attr("owner", "someone else")


def _study_snapshot(path: str, name: str) -> tuple:
    study = plain_study(name, path)
    return study.user_attrs, [(t.number, t.state, t.params, t.values, t.user_attrs) for t in study.trials]


@pytest.fixture(scope="module")
def mixed_journal(tmp_path_factory) -> str:
    """The foreign studies beside one tiny hpsearch study."""
    path = str(tmp_path_factory.mktemp("foreign") / "studies.journal")
    _foreign_journal(path)
    result = run("grid", "--study", "ours", "--lr", "0.1", "--weight-decay", "0", "--batch-size", "256",
                 "--epochs", "1", "--storage", path)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture()
def mixed(mixed_journal, workdir) -> str:
    path = str(workdir / "studies.journal")
    shutil.copy(mixed_journal, path)
    return path


def test_the_listing_marks_foreign_studies_and_never_fails_because_of_them(mixed):
    result = run("report", "--storage", mixed)
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in result.stdout.splitlines() if line.startswith("│")}
    assert rows["strings"][:3] == ["foreign", "maximize", "3"]
    assert rows["minimize"][:3] == ["foreign", "minimize", "3"]
    assert rows["multi"][:3] == ["foreign", "minimize, maximize", "3"]
    assert rows["ours"][:3] == ["grid", "digits", "1"]


WRITING = {  # every command that writes a study, aimed at a foreign one
    "grid": ["grid", "--lr", "0.1", "--weight-decay", "0", "--batch-size", "256", "--epochs", "1"],
    "random": ["random", "--trials", "1", "--epochs", "1"],
    "tpe": ["tpe", "--trials", "1", "--epochs", "1"],
    "grid-jobs": ["grid", "--lr", "0.1,0.01", "--weight-decay", "0", "--batch-size", "256", "--epochs", "1",
                  "--jobs", "2"],
    "refine": ["refine", "--from", "ours", "--epochs", "1"],
}


@pytest.mark.parametrize("command", WRITING)
@pytest.mark.parametrize("kind", FOREIGN)
def test_writing_into_a_foreign_study_is_refused_before_anything_is_written(mixed, kind, command):
    before = _study_snapshot(mixed, kind)
    result = run(*WRITING[command], "--study", kind, "--storage", mixed)
    assert result.exit_code == 2, result.output
    assert result.stderr == f"Error: study '{kind}' was not made by hpsearch; choose another --study\n"
    assert _study_snapshot(mixed, kind) == before


@pytest.mark.parametrize("kind", FOREIGN)
def test_reading_commands_refuse_a_foreign_study_in_one_line(mixed, kind):
    before = _study_snapshot(mixed, kind)
    trials = "3 trials, 2 objectives (minimize, maximize)" if kind == "multi" else f"3 trials, 1 objective ({kind if kind == 'minimize' else 'maximize'})"
    for args, words in (
        (["report", kind], f"it holds {trials}; hpsearch reads its own studies only"),
        (["report", "ours", kind, "--format", "csv"], f"study '{kind}' was not made by hpsearch"),
        (["refine", "--from", kind, "--show"], f"study '{kind}' was not made by hpsearch"),
        (["test", "--study", kind], "test takes a study that hpsearch searched"),
    ):
        result = run(*args, "--storage", mixed)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"Error: study '{kind}' was not made by hpsearch;") and words in result.stderr
        assert result.stderr.count("\n") == 1 and "internal error" not in result.stderr
    assert _study_snapshot(mixed, kind) == before


def test_an_empty_study_without_attributes_is_claimed(workdir):
    """Nothing to lose: it may be one that another hpsearch process created a moment ago."""
    path = str(workdir / "empty.journal")
    optuna.create_study(storage=plain_storage(path), study_name="new", direction="maximize")
    result = run("grid", "--study", "new", "--lr", "0.1", "--weight-decay", "0", "--batch-size", "256",
                 "--epochs", "1", "--storage", path)
    assert result.exit_code == 0, result.output
    assert plain_study("new", path).user_attrs["hpsearch"]["command"] == "grid"
