"""Countdown verifier: right, wrong and hostile answers, multiset use of the numbers, the answer's
place in the response, malformed rows, bounds, and a fuzz that it never raises."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.verifier import results as R
from workers.verifier.countdown import CountdownLimits, CountdownVerifier, extract_answer

TRUTH = {"target": 26, "numbers": [2, 3, 5, 7]}


@pytest.fixture(scope="module")
def verifier():
    return CountdownVerifier()


def grade(verifier, response, truth=None, **row):
    return verifier.verify({"id": "r", "kind": "countdown", "response": response,
                            "ground_truth": TRUTH if truth is None else truth, **row})


@pytest.mark.parametrize("response", [
    "3*7+5", "5+3*7", "7*3+5", "(3*7)+5", "((3*7)+(5))", "3x7+5", "3 × 7 + 5", "3\t*7 +  5",
    "3*7+5\n", "  3*7+5  \n\n", "I try 3 times 7.\nThen add 5:\n3*7+5",
    "3*7+5=26", "3*7+5 = 26 ", "<answer>3*7+5</answer>", "x\n<answer> 3*7+5 </answer>\ntrailing",
    "<answer>1</answer> then <answer>3*7+5</answer>", "<answer>3*7+5", "(7)*(3)+(5)",
])
def test_right_answers_score_one(verifier, response):
    result = grade(verifier, response)
    assert (result["status"], result["reward"], result["passed"]) == (R.OK, 1.0, 1), result
    assert result["id"] == "r" and result["layers"]["eval"] is False


def test_result_carries_the_parsed_expression(verifier):
    assert grade(verifier, "3 x 7 + 5")["expression"] == "3*7+5"
    assert grade(verifier, "<answer>(3×7)+5=26</answer>")["expression"] == "(3*7)+5"
    assert grade(verifier, "3*7+2")["expression"] == "3*7+2"  # wrong answers carry it too
    assert "expression" not in grade(verifier, "3/7")


def test_multiset_semantics(verifier):
    twice = {"target": 12, "numbers": [3, 3, 4]}
    assert grade(verifier, "3*4", twice)["status"] == R.OK  # unused numbers are fine
    assert grade(verifier, "3+3+4+2", {"target": 12, "numbers": [3, 3, 4, 2]})["status"] == R.OK
    assert grade(verifier, "(3+3)*2", {"target": 12, "numbers": [3, 3, 2]})["status"] == R.OK
    once = grade(verifier, "(3+3)*2", {"target": 12, "numbers": [3, 2, 4]})
    assert once["status"] == R.WRONG_ANSWER and "3" in once["message"]
    assert grade(verifier, "0*5+7", {"target": 7, "numbers": [0, 5, 7]})["status"] == R.OK
    several = {"target": 24, "numbers": [2, 3, 4, 6]}
    for answer in ("4*6", "(2+6)*3", "2*3*4", "(6-3)*4*2", "6*4*(3-2)"):
        assert grade(verifier, answer, several)["status"] == R.OK, answer


@pytest.mark.parametrize("response, why", [
    ("3*7+2", "evaluates to 23"), ("2*(3+5+7)-2*2", "more often"), ("3*7+5+5", "more often"),
    ("4*6+2", "4, 6 more often"), ("13*2", "13 more often"), ("3*7+5=27", "claims"),
    ("3*7+5=twenty-six", "claims"), ("26", "26 more often"), ("<answer>7</answer>", "evaluates"),
])
def test_wrong_answers_score_zero(verifier, response, why):
    result = grade(verifier, response)
    assert (result["status"], result["reward"]) == (R.WRONG_ANSWER, 0.0), result
    assert why in result["message"]


@pytest.mark.parametrize("response", [
    "-3*7+5", "3*7+-5", "+3*7+5", "3*7/1+5", "3*7+5.0", "3**7", "3*7+(5", "3*7+5)", "()",
    "3 7", "3*7+05", "3*7+5==26", "3*7+5=26=26", "3*7+5;", "2^3", "3*7+5 and 2",
    "３*7+5", "𝟑*7+5", "٣*7+5", "3*7\u22125", "3*7\u20135", "3*7+5\x00", "\x1b[31m3*7+5\x1b[0m",
    "3*7+5\u200b", "1" * 10 + "*2", "9" * 500, "(" * 40 + "3" + ")" * 40 + "*7+5",
    "3*7+" + "+".join(["0"] * 200),
])
def test_hostile_or_malformed_answers_are_invalid(verifier, response):
    result = grade(verifier, response)
    assert (result["status"], result["reward"]) == (R.INVALID_ANSWER, 0.0), result
    assert len(result["message"]) <= R.MESSAGE_LIMIT


@pytest.mark.parametrize("response", ["", "   ", "\n\n\t", "<answer></answer>", "<answer> \n"])
def test_no_answer(verifier, response):
    result = grade(verifier, response)
    assert (result["status"], result["reward"]) == (R.NO_ANSWER, 0.0)


@pytest.mark.parametrize("truth", [
    None, "not json", "[1, 2]", {"numbers": [2, 3]}, {"target": 5}, {"target": 5, "numbers": []},
    {"target": "26", "numbers": [2, 3]}, {"target": 26.0, "numbers": [2, 3]},
    {"target": 26, "numbers": [2, 3.0]}, {"target": 26, "numbers": [True, 3]},
    {"target": 26, "numbers": [-2, 3]}, {"target": 26, "numbers": [10**7]},
    {"target": 10**13, "numbers": [2]}, {"target": 26, "numbers": list(range(17))},
    {"target": 26, "numbers": "2,3"}, "[" * 5000, "x" * 20000,
])
def test_malformed_ground_truth_is_bad_input(verifier, truth):
    row = {"id": 1, "response": "3*7+5", "ground_truth": truth}
    result = verifier.verify(row)
    assert result["status"] == R.BAD_INPUT and R.is_masked(result) and result["reward"] == 0.0


@pytest.mark.parametrize("row", [None, "3*7+5", [], {"ground_truth": TRUTH},
                                 {"response": 37, "ground_truth": TRUTH}])
def test_malformed_rows_are_bad_input(verifier, row):
    assert verifier.verify(row)["status"] == R.BAD_INPUT


def test_ground_truth_as_json_text(verifier):
    assert grade(verifier, "3*7+5", json.dumps(TRUTH))["status"] == R.OK


def test_answer_is_read_from_the_tail_only():
    assert extract_answer("3*7+5\n" + "." * 50 + "\n", tail_chars=4096) == "." * 50
    assert extract_answer("<answer>3*7+5</answer>" + " " * 100, tail_chars=64) == ""
    assert extract_answer("<answer>3*7+5</answer>" + " " * 10, tail_chars=64) == "3*7+5"
    short = CountdownVerifier(CountdownLimits(tail_chars=16))
    assert grade(short, "<answer>3*7+5</answer>" + " " * 100)["status"] == R.NO_ANSWER


HOSTILE_RESPONSES = [
    "1+" * 50_000 + "1",
    "(" * 50_000 + "3" + ")" * 50_000,
    "9" * 100_000,
    "<answer>" * 12_500,
    "<answer>" + "3*7+5 " * 20_000 + "</answer>",
    "\x00\x1b[2J" * 25_000,
    "３" * 100_000,
    "\u2212" * 100_000,
    ("3*7+5\n" * 20_000) + "(" * 100 + "3" + ")" * 100,
    "x" * 100_000,
]


def test_hostile_responses_return_quickly(verifier):
    started = time.monotonic()
    results = verifier.verify_many([{"id": i, "response": response, "ground_truth": TRUTH}
                                    for i, response in enumerate(HOSTILE_RESPONSES)])
    elapsed = time.monotonic() - started
    assert [result["id"] for result in results] == list(range(len(HOSTILE_RESPONSES)))
    assert all(result["reward"] == 0.0 for result in results)
    assert all(result["status"] in (R.INVALID_ANSWER, R.NO_ANSWER, R.WRONG_ANSWER)
               for result in results), [result["status"] for result in results]
    assert elapsed < 5.0  # loose: each is a bounded, linear scan (microseconds when idle)


def test_depth_and_length_caps_are_configurable():
    strict = CountdownVerifier(CountdownLimits(max_depth=2, max_expression_chars=12))
    assert grade(strict, "((3*7))+5")["status"] == R.OK
    assert grade(strict, "(((3*7)))+5")["status"] == R.INVALID_ANSWER
    assert grade(strict, "3*7+5 " + " " * 8)["status"] == R.OK  # stripped before the cap
    assert grade(strict, "3 * 7 + 5 = 26")["status"] == R.INVALID_ANSWER
    assert strict.layers["max_depth"] == 2 and strict.layers["in_process"] is True


def test_batch_deadline_masks_rows_not_reached(verifier):
    rows = [{"id": i, "response": "3*7+5", "ground_truth": TRUTH} for i in range(3)]
    results = verifier.verify_many(rows, deadline=time.monotonic() - 1.0)
    assert [r["status"] for r in results] == [R.INFRA_ERROR] * 3 and all(map(R.is_masked, results))
    assert [r["status"] for r in verifier.verify_many(rows, time.monotonic() + 60)] == [R.OK] * 3


def test_many_verifications_are_cheap(verifier):
    rows = [{"id": i, "response": f"{i % 9 + 1}*7+5", "ground_truth": {
        "target": (i % 9 + 1) * 7 + 5, "numbers": [i % 9 + 1, 7, 5, 2]}} for i in range(10_000)]
    started = time.monotonic()
    results = verifier.verify_many(rows)
    assert all(result["status"] == R.OK for result in results)
    assert time.monotonic() - started < 30.0  # behaviour, not a benchmark: no per-row process


def _expressions(numbers: list[int]):
    """Random expressions over a random sub-multiset of numbers, with varied spelling."""
    def combine(parts):
        left, right, op, paren, space = parts
        text = f"{left}{space}{op}{space}{right}"
        return f"({text})" if paren else text

    leaves = st.sampled_from([str(n) for n in numbers])
    return st.recursive(leaves, lambda inner: st.tuples(
        inner, inner, st.sampled_from(["+", "-", "*", "x", "×"]), st.booleans(),
        st.sampled_from(["", " "])).map(combine), max_leaves=6)


def _reference_value(text: str) -> int:
    return eval(text.replace("x", "*").replace("×", "*"), {"__builtins__": {}})  # test-made text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 30), min_size=1, max_size=6), st.data())
def test_grading_agrees_with_a_reference(numbers, data):
    verifier = CountdownVerifier()
    text = data.draw(_expressions(numbers))
    value = _reference_value(text)
    used = [int(token) for token in text.replace("(", " ").replace(")", " ").replace("+", " ")
            .replace("-", " ").replace("*", " ").replace("x", " ").replace("×", " ").split()]
    fits = all(used.count(n) <= numbers.count(n) for n in used)
    target = value if data.draw(st.booleans()) else value + 1
    result = verifier.verify({"response": text, "ground_truth": {"target": target,
                                                                  "numbers": numbers}})
    expected = R.OK if fits and target == value else R.WRONG_ANSWER
    assert result["status"] == expected, (text, numbers, target, result)
    assert _reference_value(result["expression"]) == value


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300), st.sampled_from(["", "<answer>", "\n"]))
def test_arbitrary_text_never_raises(text, prefix):
    result = CountdownVerifier().verify({"response": prefix + text, "ground_truth": TRUTH})
    assert result["status"] in R.MODEL_STATUSES and set(result) >= {"reward", "status", "layers"}
    if result["status"] == R.OK:
        assert _reference_value(result["expression"]) == TRUTH["target"]
    else:
        assert result["reward"] == 0.0
