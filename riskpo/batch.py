"""Typed batches that travel between the phases of a training step."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TrainBatch:
    """One row per sampled response: what the learner group trains on.

    Token lists are unpadded; the learner pads and packs them into micro-batches.
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    rollout_logprobs: list[list[float]]  # sampling policy's log-prob of each response token
    advantages: torch.Tensor  # [N] float, one advantage per response (broadcast to its tokens)
    loss_mask: torch.Tensor  # [N] bool; False rows (infrastructure failures) carry no loss
    # Filled by LearnerGroup.compute_logprobs: the learner's log-probs of each response token
    # before the update (old policy) and under the frozen reference model (when KL is on).
    old_logprobs: list[list[float]] | None = None
    ref_logprobs: list[list[float]] | None = None

    def __len__(self) -> int:
        return len(self.response_ids)

    def __post_init__(self) -> None:
        n = len(self.response_ids)
        sizes = {len(self.prompt_ids), len(self.rollout_logprobs), self.advantages.numel(), self.loss_mask.numel()}
        if sizes != {n}:
            raise ValueError(f"TrainBatch fields disagree on the number of rows: {sizes | {n}}")
        for i, (r, lp) in enumerate(zip(self.response_ids, self.rollout_logprobs, strict=True)):
            if len(r) != len(lp):
                raise ValueError(f"row {i}: {len(r)} response tokens but {len(lp)} rollout log-probs")
        for name in ("old_logprobs", "ref_logprobs"):
            values = getattr(self, name)
            if values is None:
                continue
            if len(values) != n or any(len(v) != len(r) for v, r in zip(values, self.response_ids, strict=True)):
                raise ValueError(f"TrainBatch.{name} must hold one log-prob per response token of each row")
