"""Issue 13, math: each input graders of the field got wrong, with the right value, and more
inputs of the same kind (lists with ellipses, digits and spaces, GSM8K extraction, blank
references, decorations, exact numbers, percent, equations, a worker that cannot start)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from workers.verifier import results as R

GSM8K = "openai/gsm8k"


def boxed(answer: str) -> str:
    return f"Reasoning... so the answer is \\boxed{{{answer}}}."


def grade(verifier, cases: list[tuple]) -> list[tuple]:
    """(gold, response, data_source, expected reward) rows whose reward differs."""
    rows = [{"id": i, "ground_truth": gold, "response": response, "data_source": source}
            for i, (gold, response, source, _) in enumerate(cases)]
    results = verifier.verify_many(rows)
    return [(case, result["status"], result["message"])
            for case, result in zip(cases, results, strict=True) if result["reward"] != case[3]]


# 1. A list with an ellipsis is never one of its numbers; sequences compare as sequences.
ELLIPSIS_CASES = [
    ("1, 2, \\ldots, n", boxed("2"), "", 0.0),  # the issue's input
    ("1, 2, \\dots, n", boxed("2"), "", 0.0),
    ("1, 2, \\cdots, n", boxed("2"), "", 0.0),
    ("1, 2, \\ldots, n", boxed("n"), "", 0.0),
    ("1, 2, \\ldots, n", boxed("1, 2, \\ldots"), "", 0.0),
    ("1, 2, \\ldots, n", boxed("1, 2, \\ldots, n+1"), "", 0.0),
    ("2, 4, 6, \\ldots", boxed("6"), "", 0.0),
    ("a_1, a_2, \\ldots, a_n", boxed("a_1"), "", 0.0),
    ("\\{1, 2, \\ldots, n\\}", boxed("2"), "", 0.0),
    ("3", boxed("(1, 2, 3, \\ldots)"), "", 0.0),
    ("3", boxed("3 \\ldots"), "", 0.0),
    ("2", boxed("x_1 = 2, \\ldots"), "", 0.0),
    ("2", boxed("1, 2, ..., n"), "", 0.0),
    ("1, 2, \\ldots, n", boxed("1, 2, ..., n"), "", 1.0),
    ("1, 2, \\ldots, n", boxed("1,2,\\cdots,n"), "", 1.0),
    ("\\{1, 2, \\ldots, n\\}", boxed("\\{1,2,\\dots,n\\}"), "", 1.0),
    ("1, \\frac{1}{2}, \\frac{1}{4}, \\ldots", boxed("1, 0.5, 0.25, \\dots"), "", 1.0),
    ("1, 2", boxed("2, 1"), "", 1.0),  # a plain list of answers: any order
    ("1, 1, 2", boxed("1, 2"), "", 0.0),  # ... but every item counts
]

# 2. Whitespace between digits is a separator, never deleted: 2 2/3 is the mixed number 8/3.
DIGIT_SPACE_CASES = [
    ("\\frac{22}{3}", boxed("2 2/3"), "", 0.0),  # the issue's inputs
    ("\\frac{8}{3}", boxed("2 2/3"), "", 1.0),
    ("\\frac{11}{2}", boxed("1 1/2"), "", 0.0),
    ("\\frac{3}{2}", boxed("1 1/2"), "", 1.0),
    ("-\\frac{8}{3}", boxed("-2 2/3"), "", 1.0),
    ("\\frac{13}{4}", boxed("3\\frac{1}{4}"), "", 1.0),
    ("\\frac{13}{4}", boxed("3 \\frac{1}{4}"), "", 1.0),
    ("1000", boxed("1\\,000"), "", 1.0),
    ("0", boxed("1\\,000"), "", 0.0),
    ("1000000", boxed("1 000 000"), "", 1.0),
    ("12", boxed("1 2"), "", 0.0),
    ("2", boxed("1 2"), "", 0.0),
]

# 3. GSM8K: the whole answer after the mark, not its leading number.
GSM8K_EXTRACTION_CASES = [
    ("3", "... #### 3/4", GSM8K, 0.0),  # the issue's inputs
    ("\\frac{3}{4}", "... #### 3/4", GSM8K, 1.0),
    ("3", "#### 3.5", GSM8K, 0.0),
    ("3", "#### 3 1/2", GSM8K, 0.0),
    ("\\frac{7}{2}", "#### 3 1/2", GSM8K, 1.0),
    ("10", "#### 10-3", GSM8K, 0.0),
    ("2", "#### 2^{10}", GSM8K, 0.0),
    ("-3", "#### -3", GSM8K, 1.0),
    ("3", "#### -3", GSM8K, 0.0),
    ("1234", "#### 1,234", GSM8K, 1.0),
    ("5", "#### 5 or 6", GSM8K, 0.0),
    ("29", "#### 29 dollars and 30 cents", GSM8K, 0.0),
]

# 5. Decorations a person reads through do not hide the number.
DECORATION_CASES = [
    ("29", "so #### $29", GSM8K, 1.0),  # the issue's input
    ("29", "#### **29**", GSM8K, 1.0),
    ("29", "#### 29.", GSM8K, 1.0),
    ("29", "#### *29*", GSM8K, 1.0),
    ("29", "#### \\$29.00", GSM8K, 1.0),
    ("29", "#### \u20ac29", GSM8K, 1.0),
    ("29", "#### $\\boxed{29}$", GSM8K, 1.0),
    ("29", "#### 29 dollars", GSM8K, 1.0),
    ("29", "#### The answer is: 29.", GSM8K, 1.0),
    ("29", "#### **Answer:** $29", GSM8K, 1.0),
    ("29", "####\n29", GSM8K, 1.0),
    ("29", boxed("\\$29"), "", 1.0),
    ("29", boxed("29."), "", 1.0),
    ("29", boxed("\\textbf{29}"), "", 1.0),
    ("29", boxed("29 \\text{ dollars}"), "", 1.0),
    ("29", boxed("\\text{\\$}29"), "", 1.0),
]

# 6. The answer is found wherever it is, in linear time.
LONG_TAIL_CASES = [
    ("29", "#### 29\n" + "and some more thinking. " * 400, GSM8K, 1.0),  # the issue's input
    ("29", "#### 29" + "x" * 100_000, GSM8K, 0.0),  # one token: 29xxx... is no number
    ("29", "\\boxed{29}" + " filler" * 20_000, "", 1.0),
]

# 8. Percent signs are ignored; the same equation rearranged is equal; the last #### decides.
POLICY_CASES = [
    ("28\\%", boxed("28"), "", 1.0),  # the issue's inputs
    ("2x+4y-3=0", boxed("y=-\\frac{1}{2}x+\\frac{3}{4}"), "", 1.0),
    ("2x+4y-3=0", boxed("y=-\\frac{1}{2}x+\\frac{1}{4}"), "", 0.0),
    ("28", boxed("28\\%"), "", 1.0),
    ("28", boxed("28 \\text{ percent}"), "", 1.0),
    ("28\\%", boxed("0.28"), "", 0.0),  # ignored, not divided by 100
    ("2x+4y-3=0", boxed("4y = 3 - 2x"), "", 1.0),
    ("y = 2x + 1", boxed("2y = 4x + 2"), "", 1.0),
    ("x^2+y^2=1", boxed("y^2 = 1 - x^2"), "", 1.0),
    ("2x+4y-3=0", boxed("2x+4y+3=0"), "", 0.0),
    ("x = 1", boxed("x = -1"), "", 0.0),
    ("x + y = 1", boxed("x + z = 1"), "", 0.0),
    ("18", "#### 18, no wait #### 20", GSM8K, 0.0),
    ("20", "#### 18, no wait #### 20", GSM8K, 1.0),
    ("29", "\\boxed{29} and then #### 30", GSM8K, 0.0),
    ("29", "#### 29\n\nThat is all. ####", GSM8K, 1.0),  # a trailing mark with nothing after
    ("29", "#### 29 ####\n####", GSM8K, 1.0),
]

KINDS = {"ellipsis": ELLIPSIS_CASES, "digit_space": DIGIT_SPACE_CASES,
         "gsm8k_extraction": GSM8K_EXTRACTION_CASES, "decoration": DECORATION_CASES,
         "long_tail": LONG_TAIL_CASES, "policy": POLICY_CASES}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_issue_inputs_and_their_kind_grade_right(kind, math_verifier):
    assert grade(math_verifier, KINDS[kind]) == []


def test_a_long_tail_is_read_in_linear_time(math_verifier):
    row = {"id": 0, "ground_truth": "29", "data_source": GSM8K,
           "response": "#### 29\n" + "filler line\n" * 500_000}
    start = time.perf_counter()
    assert math_verifier.verify(row)["reward"] == 1.0
    assert time.perf_counter() - start < 2.0


# 4. A row without a usable reference is bad_input: masked, never rewarded, never charged.
@pytest.mark.parametrize("gold", ["", "   ", "\n\t", "\\boxed{}", "$ $", "\\text{ }", "####",
                                  float("nan"), float("inf"), None, True, ["1"]])
def test_a_blank_or_unusable_reference_is_bad_input(gold, math_verifier):
    for response in ("\\boxed{}", boxed("1"), "#### ", ""):
        result = math_verifier.verify({"id": 0, "response": response, "ground_truth": gold})
        assert result["status"] == R.BAD_INPUT and R.is_masked(result), (gold, response, result)
        assert result["reward"] == 0.0


def test_an_empty_answer_is_no_answer(math_verifier):
    for response in ("\\boxed{}", "\\boxed{ }", "\\boxed{$ $}"):
        result = math_verifier.verify({"id": 0, "response": response, "ground_truth": "0"})
        assert result["status"] == R.NO_ANSWER, result


# 7. Numbers keep their exact decimal value.
@pytest.mark.parametrize(("gold", "answer"), [
    (0.00001, "0.00001"), (0.00001, "10^{-5}"), (1e-7, "\\frac{1}{10^7}"), (1e20, "10^{20}"),
    (0.1, "\\frac{1}{10}"), ("1e-05", "0.00001"), ("1e-05", "10^{-5}"), (72, "72"),
    (2.5, "\\frac{5}{2}"),
])
def test_numeric_references_keep_their_value(gold, answer, math_verifier):
    result = math_verifier.verify({"id": 0, "response": boxed(answer), "ground_truth": gold})
    assert result["reward"] == 1.0, result
    wrong = math_verifier.verify({"id": 0, "response": boxed(answer + "+1"), "ground_truth": gold})
    assert wrong["reward"] == 0.0, wrong


def run_cli(tmp_path, kind: str, rows: list, *extra: str, timeout: float = 120) -> tuple:
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(row if isinstance(row, str) else json.dumps(row) + "\n"
                              for row in rows))
    start = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "workers.verifier", kind, "--input", str(source), "--output",
         str(target), "--workers", "2", *extra], capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stderr
    results = [json.loads(line) for line in target.read_text().splitlines()]
    return results, time.monotonic() - start


@pytest.mark.slow
def test_cli_keeps_json_numbers_exact(tmp_path):
    rows = ['{"id": 1, "response": "... \\\\boxed{0.00001}", "ground_truth": 0.00001}\n',
            '{"id": 2, "response": "\\\\boxed{0.000010}", "ground_truth": 1e-5}\n',
            '{"id": 3, "response": "\\\\boxed{0.1}", "ground_truth": 0.10}\n',
            '{"id": 4, "response": "\\\\boxed{0.00002}", "ground_truth": 0.00001}\n']
    results, _ = run_cli(tmp_path, "math", rows)
    assert [(r["id"], r["reward"]) for r in results] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 0.0)]


# 14. A worker that dies while starting fails the batch in seconds, naming the cause.
@pytest.mark.slow
def test_a_math_worker_that_cannot_start_fails_fast():
    from workers.verifier.math_verifier import MathLimits, MathVerifier

    verifier = MathVerifier(MathLimits(memory_mb=40, workers=2))
    try:
        start = time.monotonic()
        results = verifier.verify_many([{"id": 0, "response": boxed("x+1"), "ground_truth": "1+x"}],
                                       deadline=time.monotonic() + 600)
        assert time.monotonic() - start < 30
        assert results[0]["status"] == R.INFRA_ERROR and R.is_masked(results[0])
        assert "did not start" in results[0]["message"]
        assert "memory_mb=40 is too small?" in results[0]["message"], results[0]["message"]
        again = verifier.verify({"id": 1, "response": boxed("x+1"), "ground_truth": "1+x"})
        assert again["status"] == R.INFRA_ERROR and "did not start" in again["message"]
    finally:
        verifier.close()


@pytest.mark.slow
def test_an_interpreter_without_math_verify_fails_fast(tmp_path, monkeypatch):
    from workers.verifier import math_verifier as M

    interpreter = tmp_path / "python-without-math-verify"
    interpreter.write_text("#!/bin/sh\necho 'Traceback (most recent call last):' >&2\n"
                           "echo \"ModuleNotFoundError: No module named 'math_verify'\" >&2\n"
                           "exit 1\n")
    interpreter.chmod(0o755)
    monkeypatch.setattr(M.sys, "executable", str(interpreter))
    verifier = M.MathVerifier(M.MathLimits(workers=2))
    try:
        start = time.monotonic()
        result = verifier.verify({"id": 0, "response": boxed("x+1"), "ground_truth": "1+x"},
                                 deadline=time.monotonic() + 600)
        assert time.monotonic() - start < 10
    finally:
        verifier.close()
    assert result["status"] == R.INFRA_ERROR
    assert result["message"] == ("math worker did not start: exit status 1: "
                                 "ModuleNotFoundError: No module named 'math_verify'")


@pytest.mark.slow
def test_cli_with_a_memory_cap_too_small_answers_in_seconds(tmp_path):
    rows = [{"id": 1, "response": boxed("x+1"), "ground_truth": "1+x"},
            {"id": 2, "response": boxed("3"), "ground_truth": "3"}]
    results, elapsed = run_cli(tmp_path, "math", rows, "--memory-mb", "40")
    assert elapsed < 60
    assert results[0]["status"] == R.INFRA_ERROR
    assert "memory_mb=40 is too small?" in results[0]["message"], results[0]["message"]
    assert results[1]["status"] == R.OK  # decided exactly, no worker needed
