"""Study files: --config, flags over the file, one-line errors, fuzzed files, and report --format toml re-running
a study."""
from __future__ import annotations

import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpsearch.errors import BadInput
from hpsearch.report.results import read_results
from hpsearch.spec import PARAMS, parse_values
from hpsearch.studyfile import KEYS, read_study_file

from helpers import FUZZ, ROOT, run

STUDIES = ROOT / "studies"
TINY_FILE = """\
command = "grid"
lr = [0.1, 0.01]
weight_decay = "0"
batch_size = {low = 64, high = 128}
momentum = 0.9
epochs = 1
study = "tiny"
"""


def one_line_error(result, *words: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.mark.parametrize("text, words", [
    ('epochs = 1\nlr = = 0.1\n', ["bad.toml", "not valid TOML", "line 2"]),
    ('epochs = 1\nlearning_rate = "0.1"\n', ["bad.toml", "unknown key 'learning_rate'"]),
    ('weight-decay = "0"\n', ["bad.toml", "'weight-decay'", "did you mean 'weight_decay'"]),
    ('epochs = "five"\n', ["bad.toml", "'epochs'", "must be an integer", "a string"]),
    ('seed = true\n', ["bad.toml", "'seed'", "must be an integer", "a boolean"]),
    ('lr = "fast"\n', ["bad.toml", "'lr'", "not a number"]),
    ('lr = [0.1, true]\n', ["bad.toml", "'lr'", "a boolean"]),
    ('batch_size = {low = 16}\n', ["bad.toml", "'batch_size'", "{low = ..., high = ...[, count = N]}"]),
    ('prune = "sometimes"\n', ["bad.toml", "'prune'", "choose one of"]),
    ('trials = 10\n', ["bad.toml", "'trials'", "not a setting of 'hpsearch grid'"]),
    ('command = "tpe"\n', ["bad.toml", "is a tpe study", "hpsearch tpe --config"]),
])
def test_a_bad_study_file_is_a_one_line_error_naming_the_file_and_key(workdir, text, words):
    (workdir / "bad.toml").write_text(text)
    one_line_error(run("grid", "--config", "bad.toml"), *words)
    assert not (workdir / "studies").exists()


def test_a_missing_study_file_is_a_one_line_error(workdir):
    one_line_error(run("random", "--config", "nowhere.toml"), "nowhere.toml", "no such file")


TOML_VALUE = st.one_of(st.integers(-5, 5), st.floats(allow_nan=False), st.booleans(), st.text(max_size=8),
                       st.lists(st.one_of(st.floats(0, 1), st.text(max_size=5)), max_size=3),
                       st.fixed_dictionaries({"low": st.floats(0, 1), "high": st.floats(0, 1)}))


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value).replace("inf", "inf")
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


@FUZZ
@given(entries=st.dictionaries(st.sampled_from([*PARAMS, "epochs", "task", "trials", "seed", "jobs", "command", "lr-x"]),
                               TOML_VALUE, max_size=5),
       garbage=st.text(max_size=20))
def test_a_study_file_reads_or_is_bad_input(tmp_path_factory, entries, garbage):
    path = tmp_path_factory.mktemp("toml") / "study.toml"
    text = "\n".join(f"{key} = {_toml(value)}" for key, value in entries.items())
    for body in (text, text + "\n" + garbage):
        path.write_text(body)
        try:
            read_study_file(path, "grid", {*PARAMS, "epochs", "task", "seed", "jobs"})
        except BadInput as error:
            assert "\n" not in str(error)


def test_values_may_be_text_lists_numbers_or_range_tables(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('lr = {low = 1e-4, high = 1e-1, count = 4}\nweight_decay = [0, "1e-6:1e-2"]\nmomentum = 0.9\n'
                    'batch_size = "16:64"\ntrials = 7\n')
    values = read_study_file(path, "random", {"lr", "weight_decay", "batch_size", "momentum", "trials"})
    assert values == {"lr": "0.0001:0.1:4", "weight_decay": "0,1e-6:1e-2", "momentum": "0.9", "batch_size": "16:64",
                      "trials": 7}


def test_flags_given_override_the_file_and_the_rest_comes_from_it(workdir):
    (workdir / "tiny.toml").write_text(TINY_FILE)
    result = run("grid", "--config", "tiny.toml", "--lr", "0.05", "--seed", "3")
    assert result.exit_code == 0, result.output
    settings = read_results(["tiny"], None).settings("tiny")
    assert settings["seed"] == 3 and settings["epochs"] == 1
    assert settings["space"] == {"lr": "0.05", "weight_decay": "0", "batch_size": "64:128", "momentum": "0.9"}
    assert "Trained 2 trials" in result.stdout  # 1 lr x 1 weight decay x 2 batch sizes


def test_the_shipped_coarse_grid_equals_its_flags_and_report_writes_it_back(workdir):
    shipped = STUDIES / "digits-coarse.toml"
    from_file = run("grid", "--config", str(shipped), "--epochs", "1")
    assert from_file.exit_code == 0, from_file.output
    assert "Trained 24 trials" in from_file.stdout and "digits-coarse" in from_file.stdout
    flags = ["--task", "digits", "--lr", "1e-1,1e-2,1e-3,1e-4", "--weight-decay", "1e-4,1e-5,0",
             "--batch-size", "32,128", "--momentum", "0.9", "--epochs", "1", "--seed", "0", "--study", "digits-coarse"]
    from_flags = run("grid", *flags, "--storage", "other.journal")
    assert from_flags.exit_code == 0, from_flags.output
    settings = read_results(["digits-coarse"], None).settings("digits-coarse")
    assert settings == read_results(["digits-coarse"], "other.journal").settings("digits-coarse")

    written = run("report", "digits-coarse", "--format", "toml")
    assert written.exit_code == 0, written.output
    (workdir / "again.toml").write_text(written.stdout)
    everything = set(KEYS) | set(PARAMS)
    again, original = (read_study_file(p, "grid", everything) for p in (workdir / "again.toml", shipped))
    assert again.pop("epochs") == 1  # the flag given over the file
    assert again.pop("prune") == "none"  # the default, written out
    original.pop("epochs")
    assert set(again) == set(original)
    for key, value in original.items():
        if key in PARAMS:  # the same values, whatever the spelling
            assert parse_values(key, again[key]).grid() == parse_values(key, value).grid(), key
        else:
            assert again[key] == value, key
    rerun = run("grid", "--config", "again.toml")  # the written file continues the same study
    assert rerun.exit_code == 0 and "Nothing to train" in rerun.stdout, rerun.output


def test_a_random_study_file_records_its_budget(workdir):
    result = run("random", "--trials", "3", "--epochs", "1", "--study", "r", "--batch-size", "64")
    assert result.exit_code == 0, result.output
    written = tomllib.loads(run("report", "r", "--format", "toml").stdout)
    assert written["command"] == "random" and written["trials"] == 3 and written["batch_size"] == "64"
    assert written["lr"] == "1e-05:1" and written["study"] == "r"


def test_a_refined_study_comes_back_as_a_refine_file_that_re_creates_it(workdir):
    coarse = run("grid", "--study", "c", "--lr", "0.1,0.01", "--weight-decay", "0", "--batch-size", "128",
                 "--epochs", "1")
    assert coarse.exit_code == 0, coarse.output
    refined = run("refine", "--from", "c", "--top", "1", "--epochs", "1", "--study", "f")
    assert refined.exit_code == 0, refined.output
    written = run("report", "f", "--format", "toml").stdout
    assert tomllib.loads(written) == {"command": "refine", "from": ["c"], "top": 1, "sampler": "grid", "epochs": 1,
                                      "seed": 0, "prune": "none", "study": "f"}
    (workdir / "f.toml").write_text(written)
    again = run("refine", "--config", "f.toml")
    assert again.exit_code == 0 and "Nothing to train" in again.stdout, again.output


def test_optimizers_and_a_schedule_come_back_in_the_study_file(workdir):
    flags = ["--study", "opt", "--lr", "0.1", "--weight-decay", "0", "--batch-size", "256", "--epochs", "2"]
    result = run("grid", *flags, "--optimizer", "adam,sgd", "--schedule", "cosine", "--warmup", "1")
    assert result.exit_code == 0, result.output
    written = run("report", "opt", "--format", "toml", "--output", "opt.toml")
    assert written.exit_code == 0, written.output
    text = (workdir / "opt.toml").read_text()
    assert 'optimizer = "sgd,adam"' in text and 'schedule = "cosine"' in text and "warmup = 1" in text
    again = run("grid", "--config", "opt.toml")  # the same settings: the study continues, nothing to train
    assert again.exit_code == 0 and "Nothing to train: study 'opt' already has its 2 trials" in again.stdout, again.output
    (workdir / "bad.toml").write_text('schedule = "linear"\n')
    bad = run("grid", "--config", "bad.toml")
    assert bad.exit_code == 2 and "key 'schedule' = 'linear': choose one of constant, step" in bad.stderr
