"""Typed batches that travel between the phases of a training step: the verifiers' verdicts
as columns, and the batch the learner trains on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from riskpo.messages import is_masked


@dataclass
class TrainBatch:
    """One row per sampled response: what the learner group trains on.

    Token lists are unpadded; the learner pads and packs them into micro-batches. The
    learner's own log-probs (old policy, reference) are computed and kept on its ranks.

    images: for a vision-language model, each row's encoded images (its prompt's, in order;
    the n samples of a prompt share one list, which pickles once). prompt_ids already hold the
    expanded image tokens (the engine's processor put them there); the learner's processor
    recomputes the pixel inputs from these bytes, which are a small fraction of the pixel
    tensors (docs/cluster.md, "Multimodal").
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    rollout_logprobs: list[list[float]]  # sampling policy's log-prob of each response token
    advantages: torch.Tensor  # [N] float, one advantage per response (broadcast to its tokens)
    loss_mask: torch.Tensor  # [N] bool; False rows (infrastructure failures) carry no loss
    # [N] the estimator's per-response loss weights (aggregation paper_mean); None otherwise
    loss_weights: torch.Tensor | None = None
    images: list[list[bytes]] | None = None  # [N] encoded images of each row's prompt

    def __len__(self) -> int:
        return len(self.response_ids)

    def __post_init__(self) -> None:
        n = len(self.response_ids)
        sizes = {len(self.prompt_ids), len(self.rollout_logprobs), self.advantages.numel(), self.loss_mask.numel()}
        if self.loss_weights is not None:
            sizes.add(self.loss_weights.numel())
        if self.images is not None:
            sizes.add(len(self.images))
        if sizes != {n}:
            raise ValueError(f"TrainBatch fields disagree on the number of rows: {sizes | {n}}")
        for i, (r, lp) in enumerate(zip(self.response_ids, self.rollout_logprobs, strict=True)):
            if len(r) != len(lp):
                raise ValueError(f"row {i}: {len(r)} response tokens but {len(lp)} rollout log-probs")


@dataclass
class Verdicts:
    """The verifier results of one step's completions as columns, made once where they arrive:
    [prompts, samples] tensors, every prompt with the same number of samples."""

    rewards: torch.Tensor  # [P, n] float32, 0 where masked
    valid: torch.Tensor  # [P, n] bool; False: no verdict (infrastructure failure or bad input)
    statuses: list[list[str]]  # [P][n] the verifier's status of each sample
    # [P][n] the fields of each sample's result its task's metrics read besides reward and
    # status (a task's verdict_details, e.g. Countdown's "expression"), where the result has them
    details: list[list[dict[str, Any]]] | None = None

    @classmethod
    def from_results(cls, results: Sequence[Sequence[dict[str, Any]]],
                     detail_fields: Sequence[str] = ()) -> Verdicts:
        """From result rows shaped [prompt][sample] (each {"reward", "status", ...}), keeping
        detail_fields of each as its details."""
        valid = [[not is_masked(r) for r in per_prompt] for per_prompt in results]
        rewards = [[float(r["reward"]) if ok else 0.0 for r, ok in zip(per_prompt, oks, strict=True)]
                   for per_prompt, oks in zip(results, valid, strict=True)]
        statuses = [[str(r["status"]) for r in per_prompt] for per_prompt in results]
        details = [[{name: r[name] for name in detail_fields if name in r} for r in per_prompt]
                   for per_prompt in results]
        width = len(results[0]) if results else 0
        if any(len(per_prompt) != width for per_prompt in results):
            raise ValueError("Verdicts need the same number of samples for every prompt")
        return cls(torch.tensor(rewards, dtype=torch.float32).reshape(len(results), width),
                   torch.tensor(valid, dtype=torch.bool).reshape(len(results), width), statuses,
                   details)

    def __len__(self) -> int:
        return self.rewards.shape[0]

    def select(self, prompts: Sequence[int]) -> Verdicts:
        """The verdicts of the given prompts, in that order."""
        index = torch.as_tensor(list(prompts), dtype=torch.long)
        details = None if self.details is None else [self.details[i] for i in prompts]
        return Verdicts(self.rewards[index], self.valid[index], [self.statuses[i] for i in prompts],
                        details)

    @classmethod
    def empty(cls, samples: int) -> Verdicts:
        return cls(torch.zeros(0, samples), torch.zeros(0, samples, dtype=torch.bool), [], [])

    @staticmethod
    def concat(parts: Sequence[Verdicts]) -> Verdicts:
        """The verdicts of several groups of prompts, one after another."""
        details = None
        if all(p.details is not None for p in parts):
            details = [d for p in parts for d in p.details]
        return Verdicts(torch.cat([p.rewards for p in parts]), torch.cat([p.valid for p in parts]),
                        [s for p in parts for s in p.statuses], details)

    def has_signal(self) -> torch.Tensor:
        """[P] bool: the prompt's valid rewards are not all equal (DAPO's dynamic sampling)."""
        low = torch.where(self.valid, self.rewards, torch.inf).amin(dim=1)
        high = torch.where(self.valid, self.rewards, -torch.inf).amax(dim=1)
        return high > low
