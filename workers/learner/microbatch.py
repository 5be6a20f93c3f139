"""Splitting a TrainBatch over ranks and micro-batches, and padding rows into tensors.

Pure torch, shared by every learner backend. Every rank gets the same number of
micro-batches (ZeRO collectives run per forward/backward); a rank with fewer real ones runs
empty ones that contribute nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from riskpo.batch import TrainBatch

RankPlan = list[list[int]]  # [micro-batch][row index into the TrainBatch]
RowLogprobs = Mapping[int, torch.Tensor]  # row index -> log-prob of each response token [len]
RowTokenMask = Mapping[int, torch.Tensor]  # row index -> bool per response token [len]


@dataclass
class MicroBatch:
    """Right-padded prompt+response rows; per-token tensors are aligned with the targets
    input_ids[:, 1:], so position t holds the log-prob of token t+1."""

    input_ids: torch.Tensor  # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long
    response_mask: torch.Tensor  # [B, L-1] bool: target is a response token of a loss row
    response_positions: torch.Tensor  # [B, L-1] bool: target is a response token (any row)
    advantages: torch.Tensor  # [B] float
    rollout_logprobs: torch.Tensor  # [B, L-1] float, 0 outside the response
    old_logprobs: torch.Tensor | None  # [B, L-1]
    ref_logprobs: torch.Tensor | None  # [B, L-1]
    loss_weights: torch.Tensor | None = None  # [B] the estimator's weights (paper_mean)
    selected: torch.Tensor | None = None  # [B, L-1] bool: the loss's mini-batch pre-pass selection
    # a vision-language model's pixel inputs for the rows' images (workers/learner/vision.py)
    vision: dict[str, torch.Tensor] | None = None

    def to(self, device: torch.device) -> MicroBatch:
        moved = {name: None if value is None else _move(value, device)
                 for name, value in vars(self).items()}
        return MicroBatch(**moved)

    @property
    def is_empty(self) -> bool:
        return not bool(self.response_mask.any())


def _move(value: torch.Tensor | dict[str, torch.Tensor], device: torch.device) -> Any:
    if isinstance(value, dict):
        return {name: tensor.to(device, non_blocking=True) for name, tensor in value.items()}
    return value.to(device, non_blocking=True)


def row_lengths(batch: TrainBatch) -> list[int]:
    """Tokens of each row, prompt (image tokens included: the engines' prompt ids hold them
    expanded) plus response: what the micro-batch token budget counts."""
    return [len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids, strict=True)]


def split_rows(indices: Sequence[int], parts: int) -> list[list[int]]:
    """Contiguous, nearly equal slices of `indices` (the first ones one longer)."""
    size, extra = divmod(len(indices), parts)
    slices, start = [], 0
    for part in range(parts):
        stop = start + size + (1 if part < extra else 0)
        slices.append(list(indices[start:stop]))
        start = stop
    return slices


def pack_by_token_budget(indices: Sequence[int], lengths: Sequence[int], budget: int) -> RankPlan:
    """Groups rows (longest first) so each group's padded size rows*max_len stays within
    budget; a row longer than the budget gets a group of its own."""
    ordered = sorted(indices, key=lambda index: -lengths[index])
    groups: RankPlan = []
    for index in ordered:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= budget:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def plan_micro_batches(shards: Sequence[Sequence[int]], lengths: Sequence[int], budget: int) -> list[RankPlan]:
    """[rank][micro-batch][row]: each rank's rows packed by token budget, every rank padded
    with empty micro-batches to the same count (ZeRO runs collectives in every forward)."""
    plans = [pack_by_token_budget(shard, lengths, budget) for shard in shards]
    count = max(1, max(len(plan) for plan in plans))
    return [plan + [[] for _ in range(count - len(plan))] for plan in plans]


def collate(batch: TrainBatch, rows: Sequence[int], pad_token_id: int,
            old_logprobs: RowLogprobs | None = None,
            ref_logprobs: RowLogprobs | None = None,
            selected: RowTokenMask | None = None) -> MicroBatch:
    """Pads the given rows into a MicroBatch (an empty `rows` gives a one-row dummy); old and
    reference log-probs come from the rank's own store (row index -> tensor), the selection
    from the loss's pre-pass over the mini-batch."""
    if not rows:
        return _empty_micro_batch(pad_token_id)
    sequences = [batch.prompt_ids[i] + batch.response_ids[i] for i in rows]
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    response_positions = torch.zeros((len(rows), length - 1), dtype=torch.bool)
    for slot, (index, sequence) in enumerate(zip(rows, sequences, strict=True)):
        input_ids[slot, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[slot, : len(sequence)] = 1
        start = len(batch.prompt_ids[index]) - 1
        response_positions[slot, start : start + len(batch.response_ids[index])] = True
    loss_rows = batch.loss_mask[list(rows)].bool().unsqueeze(-1)
    rollout = {i: torch.tensor(batch.rollout_logprobs[i], dtype=torch.float32) for i in rows}
    return MicroBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_positions & loss_rows,
        response_positions=response_positions,
        advantages=batch.advantages[list(rows)].float(),
        rollout_logprobs=_scatter(batch, rows, rollout, length),
        old_logprobs=None if old_logprobs is None else _scatter(batch, rows, old_logprobs, length),
        ref_logprobs=None if ref_logprobs is None else _scatter(batch, rows, ref_logprobs, length),
        loss_weights=None if batch.loss_weights is None else batch.loss_weights[list(rows)].float(),
        selected=None if selected is None else _scatter(batch, rows, selected, length).bool(),
    )


def response_values(batch: TrainBatch, rows: Sequence[int], values: torch.Tensor) -> dict[int, torch.Tensor]:
    """Reads per-token values [B, L-1] back out at each row's response positions."""
    out = {}
    for slot, index in enumerate(rows):
        start = len(batch.prompt_ids[index]) - 1
        out[index] = values[slot, start : start + len(batch.response_ids[index])].clone()
    return out


def _scatter(batch: TrainBatch, rows: Sequence[int], values: RowLogprobs | RowTokenMask,
             length: int) -> torch.Tensor:
    """Per-row response values into [rows, length - 1] float32 at the response positions."""
    out = torch.zeros((len(rows), length - 1), dtype=torch.float32)
    for slot, index in enumerate(rows):
        start = len(batch.prompt_ids[index]) - 1
        row_values = values[index]
        out[slot, start : start + row_values.numel()] = row_values
    return out


def _empty_micro_batch(pad_token_id: int) -> MicroBatch:
    zeros = torch.zeros((1, 1), dtype=torch.float32)
    return MicroBatch(
        input_ids=torch.full((1, 2), pad_token_id, dtype=torch.long),
        attention_mask=torch.ones((1, 2), dtype=torch.long),
        response_mask=torch.zeros((1, 1), dtype=torch.bool),
        response_positions=torch.zeros((1, 1), dtype=torch.bool),
        advantages=torch.zeros(1),
        rollout_logprobs=zeros,
        old_logprobs=zeros,
        ref_logprobs=zeros,
        loss_weights=torch.zeros(1),
    )
