"""The prompt sampler: a seeded reshuffle of the training rows every epoch, P prompts per
step (consecutive prompts form the estimator's groups, e.g. RiskPO's bundles), and a state that
resumes exactly.

An epoch's order depends only on (seed, epoch), so the state is (epoch, position) plus a
fingerprint of the rows that catches resuming on different data.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from riskpo.data.rows import Row


@dataclass
class PromptBatch:
    """The prompts of one step, in the order the estimator groups them."""

    rows: list[Row]
    row_indices: list[int]  # position of each prompt in the dataset
    epoch: int  # epoch of the first prompt

    def __len__(self) -> int:
        return len(self.rows)


class PromptSampler:
    def __init__(
        self,
        rows: Sequence[Row],
        prompts_per_step: int,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if not rows:
            raise ValueError("PromptSampler: the dataset has no rows")
        if prompts_per_step < 1:
            raise ValueError(f"prompts_per_step ({prompts_per_step}) must be >= 1")
        self.rows = list(rows)
        self.prompts_per_step = prompts_per_step
        self.shuffle, self.seed = shuffle, seed
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def take(self, count: int) -> list[int]:
        """The next `count` row indices, crossing into a freshly shuffled epoch when needed."""
        indices: list[int] = []
        while len(indices) < count:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._epoch_order(self.epoch)
            end = min(len(self._order), self.position + count - len(indices))
            indices.extend(self._order[self.position : end])
            self.position = end
        return indices

    def next_batch(self) -> PromptBatch:
        """The next step's prompts_per_step prompts."""
        epoch = self.epoch if self.position < len(self._order) else self.epoch + 1
        indices = self.take(self.prompts_per_step)
        return PromptBatch(
            rows=[self.rows[i] for i in indices],
            row_indices=indices,
            epoch=epoch,
        )

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for row in self.rows:
            digest.update(row.prompt_key.encode())
            digest.update(b"\0")
        return digest.hexdigest()[:16]

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_rows": len(self.rows),
            "fingerprint": self.fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues exactly where `state` was taken; refuses other data or another seed."""
        mine = self.state_dict()
        for key in ("seed", "shuffle", "num_rows", "fingerprint"):
            if state[key] != mine[key]:
                raise ValueError(
                    f"sampler state from a different run: {key} was {state[key]!r}, now "
                    f"{mine[key]!r} (same data and seed are needed to resume)"
                )
        if not 0 <= state["position"] <= len(self.rows):
            raise ValueError(f"sampler state: position {state['position']} outside the dataset")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order(self.epoch)
