"""Math verifier: extraction, exact fast paths, Math-Verify guards, hostile answers, CHAMP data."""

from __future__ import annotations

import time

import pytest

from workers.verifier import math_extract as X
from workers.verifier import math_forms as F
from workers.verifier import results as R


def boxed(answer: str) -> str:
    return f"Reasoning... so the answer is \\boxed{{{answer}}}."


def test_last_box_wins_and_nesting_is_kept():
    assert X.last_boxed("\\boxed{1} then \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert X.last_boxed("\\fbox{7}") == "7"
    assert X.last_boxed("\\boxed 5 is it") == "5"
    assert X.last_boxed("no box here") is None
    assert X.last_boxed("\\boxed{unclosed") is None


def test_scanner_is_linear_and_capped():
    start = time.perf_counter()
    with pytest.raises(X.AnswerRejected):
        X.last_boxed("\\boxed{" + "{" * 200_000)
    assert X.last_boxed("x" * 2_000_000 + "\\boxed{3}") == "3"
    assert time.perf_counter() - start < 1.0


def test_gsm8k_answers_by_data_source():
    assert X.extract_answer("so #### 1,234", "openai/gsm8k") == "1,234"
    assert X.extract_answer("so #### 12", "math") is None
    assert X.extract_answer("#### 5 but \\boxed{6}", "math") == "6"


def test_sanitize_rejects_control_and_lookalike_digits():
    assert X.sanitize("\u22123") == "-3"
    assert X.sanitize("\U0001d7d1") == "3"  # mathematical bold digit three
    for bad in ("3\x00", "\x1b[31m3", "\u0663", "\u0417", "9" * 1000):
        with pytest.raises(X.AnswerRejected):
            X.sanitize(bad)


def test_plain_values_are_exact():
    assert F.plain_value("1,000") == 1000
    assert F.plain_value("-\\frac{3}{6}") == F.plain_value("-0.5")
    assert F.plain_value("x+1") is None
    assert F.plain_value("\\frac{1}{0}") is None


EQUIVALENT = [
    ("\\frac{1}{2}", "0.5"), ("x^2+2x+1", "(x+1)^2"), ("y=2x+1", "y = 1+2x"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"), ("x=2", "2"), ("(1,2)", "(1, 2)"),
    ("1,000", "1000"), ("-3", "\u22123"), ("\\dfrac{3}{4}", "\\frac34"),
    ("2", "\\sqrt{4}"), ("3+2\\sqrt{2}", "(1+\\sqrt{2})^{2}"), ("1", "\\sin^2 x + \\cos^2 x"),
    ("\\frac{x^2-1}{x-1}", "x+1"),
]
NOT_EQUIVALENT = [
    ("3", "3 \\text{ or } 57"), ("3", "\\pm 3"), ("3", "3, 57"),
    ("500000000500000000", "\\sum_{n=1}^{10^9} n"),
    ("\\frac{1}{2^{98}}", "\\frac{1}{2^{99}}"),
    ("1-\\frac{1}{\\mathrm{e}}", "1+\\frac{1}{\\mathrm{e}}"),
    ("x+y=1", "2x+2y=3"), ("x - 1 = 0", "x^2 - 1 = 0"), ("x=x", "y=y"),
    ("\\pi", "3.14159"), ("3", "\\frac{1}{0}"), ("2", "\\sqrt{4}+10^{-30}"),
    ("x^2", "x^3"), ("\\sqrt{2}", "1.41"), ("2^{1000}", "2^{1000}+1"),
]
HOSTILE = [
    "1+" * 50_000 + "1", "{" * 5000 + "7" + "}" * 5000, "9^{9^{9^{9}}}", "(10^{10})!",
    "(1+\\sqrt{2})^{100000}", "9" * 100_000, "7\x00", "\x1b[2J7", "\u0667",
    "\\frac{1}{0}", "\\int_0^{10^{10}} e^{x^2} dx", "\\lim_{n\\to\\infty} n!",
    "10^{10^{10}}", "\\underbrace{" * 300 + "7" + "}" * 300, "\\sqrt{" * 2000 + "2" + "}" * 2000,
]


@pytest.mark.slow
def test_equivalent_answers_score_one(patient_math_verifier):
    rows = [{"id": i, "response": boxed(a), "ground_truth": g}
            for i, (g, a) in enumerate(EQUIVALENT)]
    results = patient_math_verifier.verify_many(rows)
    assert [(r["status"], r["message"]) for r in results if r["reward"] != 1.0] == []


@pytest.mark.slow
def test_known_false_positives_score_zero(math_verifier):
    rows = [{"id": i, "response": boxed(a), "ground_truth": g}
            for i, (g, a) in enumerate(NOT_EQUIVALENT)]
    results = math_verifier.verify_many(rows)
    assert [NOT_EQUIVALENT[r["id"]] for r in results if r["reward"] != 0.0] == []


def test_hedging_is_graded_on_the_last_box(math_verifier):
    rows = [{"id": 0, "response": "\\boxed{5} or maybe \\boxed{3}", "ground_truth": "3"},
            {"id": 1, "response": "\\boxed{3} or maybe \\boxed{5}", "ground_truth": "3"}]
    assert [r["reward"] for r in math_verifier.verify_many(rows)] == [1.0, 0.0]


@pytest.mark.slow
def test_hostile_answers_score_zero_in_time_and_the_pool_survives(math_verifier):
    rows = [{"id": i, "response": boxed(a), "ground_truth": "7"} for i, a in enumerate(HOSTILE)]
    start = time.monotonic()
    results = math_verifier.verify_many(rows, deadline=time.monotonic() + 120)
    hard = math_verifier.limits.hard_timeout_s
    assert time.monotonic() - start < hard * len(HOSTILE) / 2 + 10
    assert [r["reward"] for r in results] == [0.0] * len(HOSTILE)
    assert not any(R.is_masked(r) for r in results), results
    again = math_verifier.verify({"id": "next", "response": boxed("x^2-1"),
                                  "ground_truth": "(x-1)(x+1)"})
    assert again["reward"] == 1.0


def test_bad_rows_are_reported_not_raised(math_verifier):
    results = math_verifier.verify_many([{"id": 1}, {"id": 2, "response": 5, "ground_truth": "1"},
                                         {"id": 3, "response": "x", "ground_truth": None},
                                         "not a row"])
    assert [r["status"] for r in results] == [R.BAD_INPUT] * 4
    assert math_verifier.verify({"id": 4, "response": "no box", "ground_truth": "1"})[
        "status"] == R.NO_ANSWER


def _rewrite(answer: str) -> str:
    """An equivalent spelling: a plain number as a fraction, anything else with extra spacing."""
    value = F.plain_value(answer)
    if value is not None and value.denominator == 1:
        return f"\\frac{{{2 * value.numerator}}}{{2}}"
    return " " + answer.replace("+", " + ").replace("=", " = ").replace("\\frac", "\\dfrac") + " "


@pytest.mark.slow
def test_champ_reference_answers_verify_against_themselves(patient_math_verifier):
    import champ_dataset

    problems = champ_dataset.load("v0").problems
    assert len(problems) == 270
    rows = []
    for name, problem in problems.items():
        rows.append({"id": name, "response": boxed(problem.answer), "ground_truth": problem.answer})
        rows.append({"id": name + "/rewritten", "response": boxed(_rewrite(problem.answer)),
                     "ground_truth": problem.answer})
    results = patient_math_verifier.verify_many(rows)
    assert [(r["id"], r["status"], r["message"]) for r in results if r["reward"] != 1.0] == []
