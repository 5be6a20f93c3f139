"""Pieces of the code verifier that need no sandbox: extraction, codec, comparison, row checks."""

from __future__ import annotations

import math

import pytest

from workers.verifier import results as R
from workers.verifier.code import extract_code, outputs_match, values_equal
from workers.verifier.wire import (
    FrameBuffer,
    UnsupportedValue,
    decode_value,
    encode_value,
    pack_message,
)


def test_extract_code_takes_the_last_python_block_or_everything():
    response = "First:\n```python\nx = 1\n```\nBetter:\n```py\nx = 2\n```\nDone."
    assert extract_code(response) == "x = 2\n"
    assert extract_code("```\nprint(3)\n```") == "print(3)\n"
    assert extract_code("print(4)") == "print(4)"


@pytest.mark.parametrize("value", [
    None, True, 0, -(10**30), 1.5, math.inf, "s", b"\x00b", [1, (2, 3)], {"a": {1: [None]}},
    {1, 2}, frozenset({3}), (), 1 + 2j,
])
def test_codec_round_trips_exact_types(value):
    decoded = decode_value(encode_value(value))
    assert decoded == value and type(decoded) is type(value)


def test_codec_refuses_subclasses_and_objects():
    class Sneaky(int):
        def __eq__(self, other):
            return True

    for value in (Sneaky(1), object(), [Sneaky(2)], {"k": print}):
        with pytest.raises(UnsupportedValue):
            encode_value(value)
    nested: list = []
    for _ in range(100):
        nested = [nested]
    with pytest.raises(UnsupportedValue):
        encode_value(nested)


def test_frames_split_across_reads():
    data = pack_message({"a": 1}) + pack_message([2])
    buffer = FrameBuffer()
    assert buffer.feed(data[:5]) == []
    assert buffer.feed(data[5:]) == [{"a": 1}, [2]]


def test_values_equal_is_type_strict():
    assert values_equal(3, 3) and not values_equal(3, 3.0) and not values_equal(1, True)
    assert values_equal(0.1 + 0.2, 0.3) and values_equal(2.0, 2)
    assert values_equal([1, [2]], (1, (2,))) and not values_equal([1], [1, 2])
    assert values_equal({"a": 1}, {"a": 1}) and not values_equal({"1": 1}, {1: 1})
    assert not values_equal("1", 1) and not values_equal(None, 0)


def test_outputs_match_ignores_trailing_whitespace_only():
    assert outputs_match(b"1 2  \n3\n\n", "1 2\n3")
    assert not outputs_match(b"1  2\n", "1 2")
    assert not outputs_match(b"", "0")


@pytest.mark.parametrize("row", [
    "not a dict", {"id": 1}, {"id": 2, "code": 5, "tests": {"style": "stdio", "cases": []}},
    {"id": 3, "code": "x", "tests": {"style": "magic"}},
    {"id": 4, "code": "x", "tests": {"style": "stdio", "cases": [{"stdin": 1}]}},
    {"id": 5, "code": "x", "tests": {"style": "call", "cases": [{"args": [1], "expected": 1}]}},
    {"id": 6, "code": "x", "tests": {"style": "call", "fn_name": "f", "cases": [{"args": 1}]}},
    {"id": 7, "code": "x", "tests": {"style": "assert", "entry_point": "f"}},
])
def test_malformed_rows_are_bad_input(row, code_verifier):
    result = code_verifier.verify(row)
    assert result["status"] == R.BAD_INPUT and result["reward"] == 0.0
    assert R.is_masked(result)


def test_result_rows_validate_status():
    assert R.make_result(1, R.OK, passed=2, total=2)["reward"] == 1.0
    assert R.make_result(1, R.OK, passed=1, total=2)["reward"] == 0.0
    with pytest.raises(ValueError, match="unknown verifier status"):
        R.make_result(1, "great")


def test_landlock_read_rules_are_not_nested():
    from workers.verifier.sandbox import interpreter_read_paths

    paths = interpreter_read_paths()
    assert any(path == "/usr" or path.startswith("/usr/") for path in paths)
    for path in paths:
        assert not any(path.startswith(other + "/") for other in paths if other != path), path
