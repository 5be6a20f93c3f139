"""Countdown verifier: grades an expression that should reach a target from given numbers using
+ - * and parentheses, each given number at most once. In-process and bounded: a linear-time
extraction from the response's tail, length / depth / literal caps, and a small hand-written
recursive-descent parser that evaluates integers itself (nothing is ever passed to eval).

Row: {"id"?, "response": str, "data_source"?,
      "ground_truth": {"target": int, "numbers": [int, ...]}}   (a dict, or that dict as JSON)
(the pool sends it rows with "kind": "math", "grader": "countdown": ray_pool.py)

Where the answer is read: in the response's last `tail_chars` characters, the text after the
last "<answer>" (up to the next "</answer>", the TinyZero convention) if there is one, else the
last non-blank line. It may end with "=" and the target ("3*7+5=26"). See README.md (Countdown)
for the grammar and the statuses.
"""

from __future__ import annotations

import json
import operator
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from workers.verifier import results as R

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
WHITESPACE = " \t\r\n"
TIMES = "*x\u00d7"  # '*', 'x' and the multiplication sign
MAX_GROUND_TRUTH_CHARS = 10_000


@dataclass(frozen=True)
class CountdownLimits:
    """Bounds on what is read and parsed, and on what a ground truth may hold."""

    tail_chars: int = 4096  # the answer is looked for in the response's last characters
    max_expression_chars: int = 256
    max_depth: int = 32  # nested parentheses
    max_literal_digits: int = 9
    max_numbers: int = 16
    max_number: int = 10**6  # given numbers are integers in [0, max_number]
    max_abs_target: int = 10**12


class Rejected(ValueError):
    """An answer that scores 0 without evaluation: status invalid_answer."""


def extract_answer(response: str, tail_chars: int) -> str:
    """The answer text (stripped; may be empty): after the last <answer> in the tail, up to the
    next </answer>, else the tail's last non-blank line. Linear in tail_chars."""
    tail = response[-tail_chars:] if tail_chars > 0 else ""
    start = tail.rfind(ANSWER_OPEN)
    if start >= 0:
        body = tail[start + len(ANSWER_OPEN):]
        end = body.find(ANSWER_CLOSE)
        return (body if end < 0 else body[:end]).strip(WHITESPACE)
    tail = tail.rstrip(WHITESPACE)
    return tail[tail.rfind("\n") + 1:].strip(WHITESPACE)


def tokenize(text: str, limits: CountdownLimits) -> list[Any]:
    """Integer literals (ASCII digits, no leading zero, at most max_literal_digits) and the
    symbols + - * ( ) ('x' and the multiplication sign read as '*'); whitespace between tokens.
    Anything else raises Rejected."""
    tokens: list[Any] = []
    index = 0
    while index < len(text):
        char = text[index]
        if "0" <= char <= "9":
            end = index
            while end < len(text) and "0" <= text[end] <= "9":
                end += 1
            digits = text[index:end]
            if len(digits) > limits.max_literal_digits:
                raise Rejected(f"a literal of {len(digits)} digits (at most "
                               f"{limits.max_literal_digits})")
            if len(digits) > 1 and digits[0] == "0":
                raise Rejected(f"literal {digits} has a leading zero")
            tokens.append(int(digits))
            index = end
            continue
        if char in TIMES:
            tokens.append("*")
        elif char in "+-()":
            tokens.append(char)
        elif char not in WHITESPACE:
            raise Rejected(f"character {char!r} is not allowed (numbers, + - * x ( ) only)")
        index += 1
    return tokens


class _Evaluator:
    """sum := product (('+'|'-') product)*; product := atom ('*' atom)*;
    atom := integer | '(' sum ')'. No unary sign; depth-capped, so recursion stays bounded."""

    def __init__(self, tokens: list[Any], max_depth: int) -> None:
        self.tokens, self.max_depth, self.position = tokens, max_depth, 0

    def _peek(self) -> Any:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def value(self) -> int:
        result = self.sum(0)
        if self.position != len(self.tokens):
            raise Rejected(f"unexpected {self._peek()!r} after a complete expression")
        return result

    def sum(self, depth: int) -> int:
        result = self.product(depth)
        while self._peek() in ("+", "-"):
            sign = self._peek()
            self.position += 1
            operand = self.product(depth)
            result = result + operand if sign == "+" else result - operand
        return result

    def product(self, depth: int) -> int:
        result = self.atom(depth)
        while self._peek() == "*":
            self.position += 1
            result *= self.atom(depth)
        return result

    def atom(self, depth: int) -> int:
        token = self._peek()
        self.position += 1
        if isinstance(token, int):
            return token
        if token != "(":
            raise Rejected(f"expected a number or '(', got {token!r}"
                           + (" (no unary signs)" if token in ("+", "-") else ""))
        if depth >= self.max_depth:
            raise Rejected(f"parentheses nested deeper than {self.max_depth}")
        result = self.sum(depth + 1)
        if self._peek() != ")":
            raise Rejected("unbalanced parentheses")
        self.position += 1
        return result


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool | float | str):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # int, or a numpy integer from parquet
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}") from None


def parse_ground_truth(raw: Any, limits: CountdownLimits) -> tuple[int, list[int]]:
    """(target, numbers) of {"target": int, "numbers": [int, ...]} or its JSON text; ValueError
    when malformed or outside the limits."""
    if isinstance(raw, str):
        if len(raw) > MAX_GROUND_TRUTH_CHARS:
            raise ValueError("ground_truth text too long")
        raw = json.loads(raw)
    if not isinstance(raw, dict):
        raise ValueError(f"ground_truth must be an object, got {type(raw).__name__}")
    target, numbers = _integer(raw.get("target"), "target"), raw.get("numbers")
    if hasattr(numbers, "tolist"):
        numbers = numbers.tolist()
    if not isinstance(numbers, list | tuple) or not 1 <= len(numbers) <= limits.max_numbers:
        raise ValueError(f"numbers must be a list of 1..{limits.max_numbers} integers")
    numbers = [_integer(number, "numbers[]") for number in numbers]
    if any(not 0 <= number <= limits.max_number for number in numbers):
        raise ValueError(f"numbers must lie in [0, {limits.max_number}]")
    if abs(target) > limits.max_abs_target:
        raise ValueError(f"|target| must be at most {limits.max_abs_target}")
    return target, numbers


class CountdownVerifier:
    """Scores countdown rows (module docstring) in-process; every outcome is a result row."""

    def __init__(self, limits: CountdownLimits | None = None) -> None:
        self.limits = limits or CountdownLimits()
        self.layers = {"in_process": True, "eval": False, "parser": "recursive descent",
                       **{key: value for key, value in asdict(self.limits).items()
                          if key in ("tail_chars", "max_expression_chars", "max_depth")}}

    def verify(self, row: Any, deadline: float | None = None) -> dict[str, Any]:
        return self.verify_many([row], deadline)[0]

    def verify_many(self, rows: list[Any], deadline: float | None = None) -> list[dict[str, Any]]:
        """Results in input order; rows not reached by `deadline` (time.monotonic()) get
        infra_error (each row takes microseconds, so only a tiny deadline does this)."""
        results = []
        for row in rows:
            row_id = row.get("id") if isinstance(row, dict) else None
            if deadline is not None and time.monotonic() >= deadline:
                result = R.make_result(row_id, R.INFRA_ERROR, message="batch deadline")
            else:
                try:
                    result = self._grade(row_id, row)
                except Exception as exc:  # noqa: BLE001 - a verifier bug, not the model's fault
                    result = R.make_result(row_id, R.INFRA_ERROR,
                                           message=f"countdown verifier failed: {exc!r}")
            result["layers"] = self.layers
            results.append(result)
        return results

    def close(self) -> None:
        """Nothing to release (no worker processes); here for the verifiers' common shape."""

    def _grade(self, row_id: Any, row: Any) -> dict[str, Any]:
        try:
            if not isinstance(row, dict) or not isinstance(row.get("response"), str):
                raise ValueError("a row is an object with a string response")
            target, numbers = parse_ground_truth(row.get("ground_truth"), self.limits)
        except (TypeError, ValueError, RecursionError) as exc:
            return R.make_result(row_id, R.BAD_INPUT, message=f"bad countdown row: {exc}")
        answer = extract_answer(row["response"], self.limits.tail_chars)
        if not answer:
            return R.make_result(row_id, R.NO_ANSWER, message="no answer found")
        try:
            expression, claim = self._split_claim(answer)
            tokens = tokenize(expression, self.limits)
            if not tokens:
                raise Rejected("empty expression")
            value = _Evaluator(tokens, self.limits.max_depth).value()
        except Rejected as exc:
            return R.make_result(row_id, R.INVALID_ANSWER, message=str(exc))
        text = "".join(str(token) for token in tokens)
        return self._judge(row_id, text, tokens, value, claim, target, numbers)

    def _split_claim(self, answer: str) -> tuple[str, str]:
        """(expression, claimed value) of "expr" or "expr = value"."""
        if len(answer) > self.limits.max_expression_chars:
            raise Rejected(f"answer longer than {self.limits.max_expression_chars} characters")
        expression, _, claim = answer.partition("=")
        if "=" in claim:
            raise Rejected("more than one '='")
        return expression, claim.strip(WHITESPACE)

    @staticmethod
    def _judge(row_id: Any, text: str, tokens: list[Any], value: int, claim: str, target: int,
               numbers: list[int]) -> dict[str, Any]:
        def wrong(message: str) -> dict[str, Any]:
            return R.make_result(row_id, R.WRONG_ANSWER, message=message, expression=text)

        extra = Counter(token for token in tokens if isinstance(token, int)) - Counter(numbers)
        if extra:
            used = ", ".join(str(number) for number in sorted(extra))
            return wrong(f"uses {used} more often than given (numbers {numbers})")
        if value != target:
            return wrong(f"evaluates to {value if abs(value) < 10**30 else 'a huge number'}, "
                         f"not {target}")
        if claim and claim != str(target):
            return wrong(f"claims = {claim[:40]!r}, but the target is {target}")
        return R.make_result(row_id, R.OK, passed=1, message="reaches the target",
                             expression=text)
