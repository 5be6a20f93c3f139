"""Code verifier: runs a solution against stdio, call or assert tests and compares outside it.

Expected values never enter the sandbox: stdio output and JSON return values come out and are
compared here, type-strict; HumanEval-style `check(candidate)` functions run in a separate
trusted child whose `candidate` is a stub forwarding each call to the sandboxed solution.
"""

from __future__ import annotations

import math
import re
import signal
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from workers.verifier import results as R
from workers.verifier.child import EXIT_COMPILE, EXIT_MEMORY
from workers.verifier.executor import Child, CodeExecutor, ExecLimits, Outcome, Slot
from workers.verifier.wire import MAX_MESSAGE_BYTES, UnsupportedValue, decode_value, encode_value

FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
FLOAT_TOLERANCE = 1e-6
NUMBER_TOKEN = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
FLOAT_TOKEN = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?\d+[eE][-+]?\d+")
WHITESPACE = re.compile(r"(\s+)")  # split keeping the separators, which must match exactly
STYLES = ("stdio", "call", "assert")


class BadInput(ValueError):
    """A malformed row: reported as bad_input, never charged to the model."""


@dataclass(frozen=True)
class CodeLimits:
    """Wall-clock budget: per test (a stdio case, a call, a whole check) and per request."""

    test_timeout_s: float = 5.0
    request_timeout_s: float = 60.0


def extract_code(response: str) -> str:
    """The last ```python fenced block of a model response, or the whole text if none."""
    blocks = FENCE.findall(response)
    return blocks[-1] if blocks else response


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.rstrip().splitlines()]


def tokens_match(actual: str, expected: str) -> bool:
    """Equal text, or two numbers: where the expected one is written with a decimal point or
    an exponent, within FLOAT_TOLERANCE of it, absolute or relative (as competitive-programming
    checkers compare floats); where it is an integer, exactly its value (3.0 for 3, never
    1000001 for 1000000). Anything else: exact text."""
    if actual == expected:
        return True
    if not (NUMBER_TOKEN.fullmatch(expected) and NUMBER_TOKEN.fullmatch(actual)):
        return False
    if not FLOAT_TOKEN.fullmatch(expected):
        return Decimal(actual) == Decimal(expected)
    actual_value, expected_value = float(actual), float(expected)
    return math.isfinite(actual_value) and math.isfinite(expected_value) and math.isclose(
        actual_value, expected_value, rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE)


def outputs_match(actual: bytes, expected: str) -> bool:
    """Line by line, ignoring trailing spaces and trailing blank lines; within a line, the same
    whitespace between tokens and each token matching (tokens_match: floats within 1e-6)."""
    actual_lines, expected_lines = _lines(actual.decode("utf-8", errors="replace")), _lines(expected)
    if actual_lines == expected_lines:
        return True
    if len(actual_lines) != len(expected_lines):
        return False
    for actual_line, expected_line in zip(actual_lines, expected_lines, strict=True):
        if actual_line == expected_line:
            continue
        actual_parts, expected_parts = WHITESPACE.split(actual_line), WHITESPACE.split(expected_line)
        if len(actual_parts) != len(expected_parts) or not all(
                tokens_match(a, e) for a, e in zip(actual_parts, expected_parts, strict=True)):
            return False
    return True


def values_equal(expected: Any, actual: Any) -> bool:
    """Type-strict equality of a JSON expected value and a decoded return value."""
    if type(expected) is bool or type(actual) is bool:
        return type(expected) is type(actual) and expected == actual
    if type(expected) is float and type(actual) in (int, float):
        return math.isclose(expected, actual, rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE)
    if type(expected) in (int, str) or expected is None:
        return type(actual) is type(expected) and actual == expected
    if type(expected) is list:
        return (type(actual) in (list, tuple) and len(actual) == len(expected)
                and all(values_equal(e, a) for e, a in zip(expected, actual, strict=True)))
    if type(expected) is dict:
        return (type(actual) is dict and set(actual) == set(expected)
                and all(values_equal(expected[key], actual[key]) for key in expected))
    return False


def classify(outcome: Outcome) -> str | None:
    """The failure status a child's ending implies, or None for a clean exit 0."""
    if outcome.output_limited or outcome.signal == signal.SIGXFSZ:
        return R.OUTPUT_LIMIT
    if outcome.timed_out or outcome.signal == signal.SIGXCPU:
        return R.TIMEOUT
    if outcome.signal:
        return R.CRASH
    if outcome.returncode == EXIT_MEMORY:
        return R.MEMORY
    if outcome.returncode == EXIT_COMPILE:
        return R.COMPILE_ERROR
    return R.RUNTIME_ERROR if outcome.returncode else None


def _stderr_tail(outcome: Outcome) -> str:
    return bytes(outcome.stderr).decode("utf-8", errors="replace")[-300:]


def _mib(size: int) -> str:
    return f"{size / (1 << 20):g} MiB"


def ending(outcome: Outcome, limits: ExecLimits) -> str:
    """What to say about a run that failed: the cap it hit, or the end of its stderr."""
    if outcome.signal == signal.SIGXFSZ:
        return f"a file went over the {limits.file_size_mb} MiB file size limit"
    if outcome.output_limited:
        stream = outcome.limited_stream or "output"
        cap = MAX_MESSAGE_BYTES if stream == "reply" else limits.output_bytes
        return (f"{stream} went over the {_mib(cap)} output cap (ExecLimits.output_bytes, "
                f"CLI --output-limit-mb)")
    return _stderr_tail(outcome)


class CodeVerifier:
    """Verifies code rows on a CodeExecutor; every failure becomes a result row."""

    def __init__(self, executor: CodeExecutor, limits: CodeLimits | None = None) -> None:
        self.executor = executor
        self.limits = limits or CodeLimits()

    def verify(self, row: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
        """Score one row {"id", "code" | "response", "tests"} before the monotonic deadline
        (a response becomes a program through program_from_response)."""
        row_id = row.get("id") if isinstance(row, dict) else None
        request_deadline = time.monotonic() + self.limits.request_timeout_s
        deadline = min(deadline or request_deadline, request_deadline)
        try:
            code, tests = _parse_row(row)
        except BadInput as exc:
            return R.make_result(row_id, R.BAD_INPUT, message=str(exc), layers=self.layers)
        try:
            with self.executor.slot() as slot:
                status, passed, total, message = self._run(slot, code, tests, deadline)
        except Exception as exc:  # noqa: BLE001 - infrastructure failure, masked by the trainer
            return R.make_result(row_id, R.INFRA_ERROR, message=f"{type(exc).__name__}: {exc}",
                                 layers=self.layers)
        return R.make_result(row_id, status, passed=passed, total=total, message=message,
                             layers=self.layers)

    @property
    def layers(self) -> dict[str, Any]:
        return self.executor.layers

    def _ending(self, outcome: Outcome) -> str:
        return ending(outcome, self.executor.limits)

    def _run(self, slot: Slot, code: str, tests: dict, deadline: float) -> tuple:
        style = tests["style"]
        if style == "stdio":
            return self._run_stdio(slot, code, tests["cases"], deadline)
        if style == "call":
            return self._run_calls(slot, code, tests, deadline)
        return self._run_assert(slot, code, tests, deadline)

    def _test_deadline(self, deadline: float) -> float:
        return min(time.monotonic() + self.limits.test_timeout_s, deadline)

    def _run_stdio(self, slot: Slot, code: str, cases: list, deadline: float) -> tuple:
        for index, case in enumerate(cases):
            child = slot.spawn("sandbox")
            child.send({"program": "stdio", "code": code, "stdin": case["stdin"]})
            outcome = child.finish(self._test_deadline(deadline))
            status = classify(outcome)
            if status:
                return status, index, len(cases), f"case {index}: {self._ending(outcome)}"
            if not outputs_match(outcome.stdout, case["stdout"]):
                return R.WRONG_ANSWER, index, len(cases), f"case {index}: output differs"
        return R.OK, len(cases), len(cases), ""

    def _start_candidate(self, slot: Slot, code: str, entry_point: str,
                         deadline: float) -> tuple[Child, tuple | None]:
        child = slot.spawn("sandbox")
        child.send({"program": "calls", "code": code, "entry_point": entry_point})
        if child.next_frame(self._test_deadline(deadline)) == {"ready": True}:
            return child, None
        outcome = child.finish(time.monotonic())
        status = classify(outcome) or R.RUNTIME_ERROR
        return child, (status, f"solution did not load: {self._ending(outcome)}")

    def _run_calls(self, slot: Slot, code: str, tests: dict, deadline: float) -> tuple:
        cases = tests["cases"]
        child, failure = self._start_candidate(slot, code, tests["fn_name"], deadline)
        if failure:
            return failure[0], 0, len(cases), failure[1]
        passed, first_failure = 0, None
        for index, case in enumerate(cases):
            child.send({"args": encode_value(case["args"])})
            reply = child.next_frame(self._test_deadline(deadline))
            if reply is None:
                outcome = child.finish(time.monotonic())
                status = classify(outcome) or R.RUNTIME_ERROR
                return status, passed, len(cases), f"case {index}: {self._ending(outcome)}"
            verdict = _judge_reply(reply, case["expected"])
            if verdict is None:
                passed += 1
            elif first_failure is None:
                first_failure = (verdict[0], f"case {index}: {verdict[1]}")
        child.kill()  # every call is answered: its exit status no longer matters
        if first_failure:
            return first_failure[0], passed, len(cases), first_failure[1]
        return R.OK, passed, len(cases), ""

    def _run_assert(self, slot: Slot, code: str, tests: dict, deadline: float) -> tuple:
        check_deadline = self._test_deadline(deadline)
        candidate, failure = self._start_candidate(slot, code, tests["entry_point"], deadline)
        if failure:
            return failure[0], 0, 1, failure[1]
        judge = slot.spawn("trusted")
        judge.send({"program": "judge", "prompt": tests.get("prompt", ""),
                    "test": tests["test"], "entry_point": tests["entry_point"]})
        try:
            return self._relay(candidate, judge, check_deadline)
        finally:
            judge.kill()
            candidate.kill()

    def _relay(self, candidate: Child, judge: Child, deadline: float) -> tuple:
        """Forward the judge's calls to the candidate until the judge gives a verdict."""
        while True:
            frame = judge.next_frame(deadline)
            if frame is None:
                if time.monotonic() >= deadline:
                    return R.TIMEOUT, 0, 1, "check ran past its deadline"
                return R.INFRA_ERROR, 0, 1, f"judge died: {_stderr_tail(judge.kill())}"
            if "verdict" in frame:
                return _verdict_result(frame)
            candidate.send({"args": frame["call"], "sync": bool(frame.get("sync"))})
            reply = candidate.next_frame(deadline)
            if reply is None:
                outcome = candidate.finish(time.monotonic())
                status = classify(outcome) or R.RUNTIME_ERROR
                return status, 0, 1, f"candidate ended: {self._ending(outcome)}"
            judge.send(reply)


def _verdict_result(frame: dict) -> tuple:
    if frame["verdict"] == "pass":
        return R.OK, 1, 1, ""
    message = frame.get("message", "")
    if frame["verdict"] == "bad_test":
        return R.BAD_INPUT, 0, 1, message
    if frame["verdict"] == "raised":  # the candidate's exception ended the check
        status = R.MEMORY if frame.get("type") == "MemoryError" else R.RUNTIME_ERROR
        return status, 0, 1, f"candidate raised {message}"
    return R.WRONG_ANSWER, 0, 1, message


def _judge_reply(reply: dict, expected: Any) -> tuple[str, str] | None:
    if "raised" in reply:
        status = R.MEMORY if reply["raised"] == "MemoryError" else R.RUNTIME_ERROR
        return status, f"{reply['raised']}: {reply.get('message', '')}"
    try:
        actual = decode_value(reply.get("value"))
    except (ValueError, TypeError, KeyError):
        return R.WRONG_ANSWER, "malformed return value"
    if values_equal(expected, actual):
        return None
    return R.WRONG_ANSWER, "return value differs"


def _parse_row(row: Any) -> tuple[str, dict]:
    if not isinstance(row, dict):
        raise BadInput("row is not an object")
    tests = row.get("tests")
    if not isinstance(tests, dict) or tests.get("style") not in STYLES:
        raise BadInput(f"'tests' must be an object with style in {STYLES}")
    _check_tests(tests)
    code = row.get("code")
    if code is None and isinstance(row.get("response"), str):
        code = program_from_response(row["response"], tests.get("prefix") or "")
    if not isinstance(code, str):
        raise BadInput("row needs a string 'code' (or 'response')")
    return code, tests


def program_from_response(response: str, prefix: str = "") -> str:
    """The program a response stands for: its last fenced block (or all of it), after the
    tests' `prefix` when there is one (a HumanEval prompt the response completes)."""
    code = extract_code(response)
    return f"{prefix}\n{code}" if prefix else code


def _check_tests(tests: dict) -> None:
    style = tests["style"]
    if style == "assert":
        if not isinstance(tests.get("entry_point"), str) or not isinstance(tests.get("test"), str):
            raise BadInput("assert tests need string 'entry_point' and 'test'")
        return
    cases = tests.get("cases")
    if not isinstance(cases, list) or not cases:
        raise BadInput(f"{style} tests need a non-empty 'cases' list")
    for index, case in enumerate(cases):
        if style == "stdio" and not (isinstance(case, dict) and isinstance(case.get("stdin"), str)
                                     and isinstance(case.get("stdout"), str)):
            raise BadInput(f"stdio case {index} needs string 'stdin' and 'stdout'")
        if style == "call":
            if not (isinstance(case, dict) and isinstance(case.get("args"), list)
                    and "expected" in case):
                raise BadInput(f"call case {index} needs a list 'args' and an 'expected'")
            try:
                encode_value(case["args"])
            except UnsupportedValue as exc:
                raise BadInput(f"call case {index}: {exc}") from exc
    if style == "call" and not isinstance(tests.get("fn_name"), str):
        raise BadInput("call tests need a string 'fn_name'")
