"""Fuzz the VALUES syntax and study files: any text parses or is a one-line BadInput, never another
exception; what parses prints back (Dimension.text) to text that parses to the same thing."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpsearch.errors import BadInput
from hpsearch.spec import COMMANDS, PARAMS, parse_space, parse_values
from hpsearch.studyfile import read_study_file

# Texts close to the grammar (numbers, ':' and ','), where the interesting mistakes are, and any text.
NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**6, 10**6).map(str),
    st.sampled_from(["0", "1", "-0", ".5", "1e-3", "1e400", "1e-400", "2e", "+3", "32", "256", "0.99", "nan", ""]),
)
ITEM = st.one_of(NUMBER, st.lists(NUMBER, min_size=2, max_size=4).map(":".join))
VALUES = st.one_of(st.lists(ITEM, min_size=1, max_size=4).map(",".join), st.text(max_size=30))
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(name=st.sampled_from(PARAMS), text=VALUES)
def test_values_parse_or_are_bad_input_and_round_trip(name, text):
    try:
        dim = parse_values(name, text)
    except BadInput as error:
        assert "\n" not in str(error) and str(error)
        return
    assert parse_values(name, dim.text()) == dim


@FUZZ
@given(command=st.sampled_from(COMMANDS), texts=st.dictionaries(st.sampled_from(PARAMS), VALUES, max_size=4))
def test_a_space_parses_or_is_bad_input(command, texts):
    try:
        space = parse_space(command, texts)
    except BadInput as error:
        assert "\n" not in str(error)
        return
    assert parse_space(command, space.texts()) == space


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
