"""What the generated tasks share: a problem with its reference response (which the tiny
model's supervised warm start trains on; RL only ever sees the row), and a seeded stream of
distinct rows."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from riskpo.data.rows import Row


@dataclass(frozen=True)
class SyntheticProblem:
    row: Row
    reference_response: str  # a correct response, in the format the model should write
    # whether a response solves the problem, where several do (Countdown); None: only the reference
    accepts: Callable[[str], bool] | None = None

    def solved_by(self, response: str) -> bool:
        return self.accepts(response) if self.accepts else response == self.reference_response


def generate_rows(
    make: Callable[[random.Random], SyntheticProblem],
    size: int,
    seed: int,
    exclude_prompts: Iterable[str] = (),
    max_attempts_factor: int = 50,
) -> list[Row]:
    """`size` distinct rows from a seeded stream, none of whose prompts is in exclude_prompts."""
    rng = random.Random(seed)
    seen = set(exclude_prompts)
    rows: list[Row] = []
    for _ in range(size * max_attempts_factor):
        if len(rows) == size:
            return rows
        row = make(rng).row
        if row.prompt_key not in seen:
            seen.add(row.prompt_key)
            rows.append(row)
    if len(rows) == size:
        return rows
    raise ValueError(
        f"could only generate {len(rows)} distinct problems of the {size} asked for: "
        "the task's space is too small (raise digits/terms/coef_range or lower size)"
    )
