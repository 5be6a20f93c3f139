"""Math-Verify worker process: compares answers in its main thread so SIGALRM timeouts work.

Run as `python -m workers.verifier.math_worker MEMORY_MB TIMEOUT_S`; it reads framed
{"gold", "answer"} requests on stdin and writes {"equal", "reason"} frames on stdout. Parsed
objects never leave this process (their str() can hang); the parent also holds a hard deadline.
"""

from __future__ import annotations

import cmath
import functools
import os
import resource
import signal
import sys
from typing import Any

from workers.verifier import math_forms as F
from workers.verifier.wire import read_message, write_message

UNEVALUATED = ("Sum", "Product", "Integral", "Limit", "Derivative", "factorial", "binomial")
NUMERIC_DIGITS = 40
FLOAT_TOLERANCE = 1e-6


class GuardTimeout(Exception):
    """Raised by SIGALRM when a guard computation overruns."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise GuardTimeout()


def _first_expression(parsed: list) -> Any:
    return next((item for item in parsed if not isinstance(item, str)), None)


def _has_unevaluated(expression: Any) -> bool:
    import sympy

    try:
        return any(type(node).__name__ in UNEVALUATED for node in sympy.preorder_traversal(expression))
    except (TypeError, AttributeError):
        return False


def _numbers_agree(gold: Any, answer: Any) -> bool:
    """Strict numeric check: exact for exact numbers (no tiny-number false positive), relative
    tolerance only when an answer is written as a decimal approximation."""
    import sympy

    gold, answer = gold.doit(), answer.doit()
    if gold.is_Rational and answer.is_Rational:
        return bool(gold == answer)
    gold_value = complex(sympy.N(gold, NUMERIC_DIGITS))
    answer_value = complex(sympy.N(answer, NUMERIC_DIGITS))
    scale = max(abs(gold_value), abs(answer_value), 1e-300)
    if not (cmath.isfinite(gold_value) and cmath.isfinite(answer_value)):
        return False
    if gold.atoms(sympy.Float) or answer.atoms(sympy.Float):
        return abs(gold_value - answer_value) <= FLOAT_TOLERANCE * scale
    if abs(gold_value - answer_value) > 1e-12 * scale:
        return False
    difference = (gold - answer).doit()
    if difference.is_Rational:
        return bool(difference == 0)
    if difference.is_zero is not None:
        return bool(difference.is_zero)
    return bool(sympy.simplify(difference) == 0)


def _equations_agree(gold: Any, answer: Any) -> bool:
    """The same equation rearranged: lhs - rhs of one is a nonzero constant times the other's,
    so both have the same solutions (2x+4y-3=0 and y=-x/2+3/4). An equation without unknowns
    (a tautology or a contradiction) agrees with nothing."""
    import sympy

    gold_zero = sympy.expand(gold.lhs - gold.rhs)
    answer_zero = sympy.expand(answer.lhs - answer.rhs)
    if not gold_zero.free_symbols or gold_zero.free_symbols != answer_zero.free_symbols:
        return False
    ratio = sympy.cancel(gold_zero / answer_zero)
    if ratio.free_symbols:
        ratio = sympy.simplify(ratio)
    return not ratio.free_symbols and bool(ratio.is_finite) and bool(ratio.is_nonzero)


def veto(gold: Any, answer: Any) -> str | None:
    """Reason to overrule a Math-Verify 'equal', guarding its known false positives (two
    equations never reach here: compare_whole decides them itself)."""
    import sympy

    if gold is None or answer is None:
        return "an answer did not parse to an expression"
    if _has_unevaluated(answer) and not _has_unevaluated(gold):
        return "answer left unevaluated"
    if isinstance(gold, sympy.Expr) and isinstance(answer, sympy.Expr) \
            and gold.is_number and answer.is_number:
        return None if _numbers_agree(gold, answer) else "numbers differ"
    return None


def _sample_values(expression: Any, symbols: list) -> list[complex]:
    """Values at fixed positive rational points (positive: no branch-cut surprises)."""
    import sympy

    values = []
    for point in range(2):
        assignment = {symbol: sympy.Rational(7 + 3 * index, 10) + point * sympy.Rational(11, 17)
                      for index, symbol in enumerate(symbols)}
        values.append(complex(sympy.N(expression.subs(assignment), NUMERIC_DIGITS)))
    return values


def quick_verdict(gold: Any, answer: Any) -> bool | None:
    """A cheap, sound decision for plain expressions, or None to ask Math-Verify.

    Different values at sample points prove two expressions differ; expand(g - a) == 0 or an
    exact numeric match proves them equal. Equations, sets and approximate numbers go on.
    """
    import sympy

    if not (isinstance(gold, sympy.Expr) and isinstance(answer, sympy.Expr)):
        return None
    if gold.atoms(sympy.Float) or answer.atoms(sympy.Float):
        return None
    if _has_unevaluated(gold) or _has_unevaluated(answer):
        return None
    if gold.is_number and answer.is_number:
        return _numbers_agree(gold, answer)
    symbols = sorted(gold.free_symbols | answer.free_symbols, key=str)
    if gold.free_symbols != answer.free_symbols:
        return None
    if sympy.expand(gold - answer) == 0:
        return True
    gold_values, answer_values = _sample_values(gold, symbols), _sample_values(answer, symbols)
    for gold_value, answer_value in zip(gold_values, answer_values, strict=True):
        scale = max(abs(gold_value), abs(answer_value), 1e-300)
        if abs(gold_value - answer_value) > FLOAT_TOLERANCE * scale:
            return False
    return None


def _guarded(function: Any, *args: Any, timeout_s: int) -> tuple[Any, str | None]:
    """function(*args) under SIGALRM; (None, reason) when it overruns or fails."""
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(timeout_s)
    try:
        return function(*args), None
    except GuardTimeout:
        return None, "guard timed out"
    except (TypeError, ValueError, AttributeError, ArithmeticError, RecursionError) as exc:
        return None, f"guard failed: {type(exc).__name__}"
    finally:
        signal.alarm(0)


@functools.lru_cache(maxsize=1024)
def _parse_gold(gold: str, timeout_s: int) -> list:
    """References repeat across the samples of a prompt: parse each once per worker."""
    from math_verify import parse

    return parse(f"\\boxed{{{gold}}}", parsing_timeout=timeout_s)


def compare_whole(gold: str, answer: str, timeout_s: int) -> dict[str, Any]:
    """Quick sound checks first (equations decided by _equations_agree), else Math-Verify's
    verdict, overruled by the guards."""
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold, timeout_s)
    answer_parsed = parse(f"\\boxed{{{answer}}}", parsing_timeout=timeout_s)
    gold_expression = _first_expression(gold_parsed)
    answer_expression = _first_expression(answer_parsed)
    if _is_equation(gold_expression) and _is_equation(answer_expression):
        agree, failure = _guarded(_equations_agree, gold_expression, answer_expression,
                                  timeout_s=timeout_s)
        return {"equal": bool(agree), "reason": failure or ("same equation" if agree
                                                             else "different equations")}
    quick, _ = _guarded(quick_verdict, gold_expression, answer_expression, timeout_s=timeout_s)
    if quick is False:
        return {"equal": False, "reason": "differs (sampled)"}
    if quick is None and not verify(gold_parsed, answer_parsed, timeout_seconds=timeout_s):
        return {"equal": False, "reason": "not equivalent"}
    vetoed, failure = _guarded(veto, gold_expression, answer_expression, timeout_s=timeout_s)
    reason = failure or vetoed
    return {"equal": reason is None, "reason": reason or "equivalent"}


def _is_equation(expression: Any) -> bool:
    import sympy

    return isinstance(expression, sympy.Eq)


def compare(gold: str, answer: str, timeout_s: int) -> dict[str, Any]:
    """Lists and sequences item by item (math_forms.structured_verdict), anything else whole."""
    def leaf(gold_item: str, answer_item: str) -> bool:
        quick = F.fast_leaf(gold_item, answer_item)
        return quick if quick is not None else compare_whole(gold_item, answer_item,
                                                             timeout_s)["equal"]

    verdict = F.structured_verdict(gold, answer, leaf)
    if verdict is F.NOT_A_LIST:
        return compare_whole(gold, answer, timeout_s)
    return {"equal": bool(verdict), "reason": "items agree" if verdict else "items differ"}


def main() -> None:
    memory_mb, timeout_s = int(sys.argv[1]), int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    compare("x^2+1", "1+x^2", timeout_s)  # warm up the parser before announcing readiness

    reply_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the reply stream
    write_message(reply_fd, {"ready": True})
    while True:
        try:
            request = read_message(0)
        except EOFError:
            return
        try:
            reply = compare(request["gold"], request["answer"], timeout_s)
        except MemoryError:
            reply = {"equal": False, "reason": "memory", "memory": True}
        except Exception as exc:  # noqa: BLE001 - a comparison failure is a negative verdict
            reply = {"equal": False, "reason": f"error: {type(exc).__name__}"}
        write_message(reply_fd, reply)


if __name__ == "__main__":
    main()
