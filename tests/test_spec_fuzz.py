"""Fuzz the VALUES syntax: any text parses or is a one-line BadInput, never another exception; what parses
prints back (Dimension.text) to text that parses to the same thing. (Study files: test_studyfile.py.)"""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hpsearch.errors import BadInput
from hpsearch.spec import COMMANDS, PARAMS, parse_space, parse_values

from helpers import FUZZ

# Texts close to the grammar (numbers, ':' and ','), where the interesting mistakes are, and any text.
NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-10**6, 10**6).map(str),
    st.sampled_from(["0", "1", "-0", ".5", "1e-3", "1e400", "1e-400", "2e", "+3", "32", "256", "0.99", "nan", ""]),
)
ITEM = st.one_of(NUMBER, st.lists(NUMBER, min_size=2, max_size=4).map(":".join))
VALUES = st.one_of(st.lists(ITEM, min_size=1, max_size=4).map(",".join), st.text(max_size=30))


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
