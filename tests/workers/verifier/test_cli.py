"""The operator command line: one output row per input row, in order, bad rows reported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def run_cli(tmp_path, kind: str, lines: list[str]) -> list[dict]:
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("\n".join(lines) + "\n")
    completed = subprocess.run(
        [sys.executable, "-m", "workers.verifier", kind, "--input", str(source), "--output",
         str(target), "--timeout", "2", "--workers", "2"],
        capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return [json.loads(line) for line in target.read_text().splitlines()]


def test_code_cli(tmp_path):
    rows = [
        {"id": "stdio", "code": "print(int(input()) * 2)",
         "tests": {"style": "stdio", "cases": [{"stdin": "4", "stdout": "8"}]}},
        {"id": "call", "code": "def f(a): return a[::-1]",
         "tests": {"style": "call", "fn_name": "f", "cases": [{"args": [[1, 2]], "expected": [2, 1]}]}},
        {"id": "assert", "code": "def g(x): return x + 1",
         "tests": {"style": "assert", "entry_point": "g",
                   "test": "def check(candidate):\n    assert candidate(1) == 2\n"}},
        {"id": "spin", "code": "while True: pass",
         "tests": {"style": "stdio", "cases": [{"stdin": "", "stdout": "x"}]}},
    ]
    lines = [json.dumps(rows[0]), "{broken", json.dumps(rows[1]), "[1, 2]",
             json.dumps(rows[2]), json.dumps(rows[3])]
    results = run_cli(tmp_path, "code", lines)
    assert [r["status"] for r in results] == ["ok", "bad_input", "ok", "bad_input", "ok",
                                              "timeout"]
    assert [r["id"] for r in results] == ["stdio", None, "call", None, "assert", "spin"]
    assert results[0]["layers"]["rlimits"] is True


def test_math_cli(tmp_path):
    lines = [json.dumps({"id": 1, "response": "\\boxed{\\frac{1}{2}}", "ground_truth": "0.5"}),
             json.dumps({"id": 2, "response": "\\boxed{3}", "ground_truth": "4"}),
             json.dumps({"id": 3, "response": "no answer", "ground_truth": "4"}),
             json.dumps({"id": 4, "ground_truth": "4"})]
    results = run_cli(tmp_path, "math", lines)
    assert [(r["id"], r["status"], r["reward"]) for r in results] == [
        (1, "ok", 1.0), (2, "wrong_answer", 0.0), (3, "no_answer", 0.0), (4, "bad_input", 0.0)]
