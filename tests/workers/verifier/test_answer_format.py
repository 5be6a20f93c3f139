"""The math verifier's answer formats: boxed, gsm8k and final_number (the tiny model's task)."""

import pytest

from workers.verifier.math_extract import extract_answer


@pytest.mark.parametrize(
    ("response", "answer_format", "expected"),
    [
        ("357", "final_number", "357"),
        ("12+345=357", "final_number", "357"),
        ("-42", "final_number", "-42"),
        ("no digits here", "final_number", None),
        ("I think 3 or maybe \\boxed{4}", "boxed", "4"),
        ("so #### 18", "gsm8k", "18"),
        ("no hashes, \\boxed{7}", "gsm8k", "7"),
    ],
)
def test_extract_answer_by_format(response, answer_format, expected):
    assert extract_answer(response, "", answer_format) == expected


def test_final_number_reads_only_the_tail():
    hostile = "1" * 100_000 + " and the answer is 5"
    assert extract_answer(hostile, "", "final_number") == "5"


def test_unknown_format_is_an_error():
    with pytest.raises(ValueError, match="answer_format"):
        extract_answer("1", "", "roman")
