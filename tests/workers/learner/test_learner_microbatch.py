"""Micro-batch planning and padding: every row lands in exactly one micro-batch, every rank gets
the same number of micro-batches, and per-token tensors line up with the response tokens."""

from __future__ import annotations

import pytest
import torch

from riskpo.algo.losses import token_logprobs
from riskpo.batch import TrainBatch
from riskpo.options import ConfigError
from workers.learner.config import LearnerConfig
from workers.learner.microbatch import (
    collate,
    pack_by_token_budget,
    plan_micro_batches,
    response_values,
    row_lengths,
    split_rows,
)


def small_batch() -> TrainBatch:
    prompts = [[1, 5, 6], [1, 7], [1, 8, 9, 10]]
    responses = [[11, 12], [13, 14, 15], [16]]
    rollout = [[-0.1, -0.2], [-0.3, -0.4, -0.5], [-0.6]]
    return TrainBatch(prompts, responses, rollout, torch.tensor([1.0, -1.0, 0.5]), torch.tensor([True, True, False]))


def test_split_rows_is_contiguous_and_balanced() -> None:
    assert split_rows(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
    assert split_rows([7], 3) == [[7], [], []]


def test_packing_respects_the_token_budget() -> None:
    lengths = [10, 3, 7, 2, 9, 4]
    groups = pack_by_token_budget(range(6), lengths, budget=20)
    assert sorted(i for g in groups for i in g) == list(range(6))
    for group in groups:
        assert len(group) == 1 or len(group) * max(lengths[i] for i in group) <= 20
    assert pack_by_token_budget([0], [50], budget=20) == [[0]]  # too long: alone


def test_every_rank_gets_the_same_number_of_micro_batches() -> None:
    lengths = [30, 30, 30, 30, 5]
    plans = plan_micro_batches(split_rows(range(5), 2), lengths, budget=30)
    assert len(plans[0]) == len(plans[1]) == 3
    assert plans[1][-1] == []  # padded with an empty micro-batch
    assert sorted(i for plan in plans for micro in plan for i in micro) == list(range(5))


def test_collate_aligns_response_tokens_with_their_targets() -> None:
    batch = small_batch()
    old = {0: torch.tensor([-1.0, -2.0]), 1: torch.tensor([-3.0, -4.0, -5.0]), 2: torch.tensor([-6.0])}
    micro = collate(batch, [0, 1, 2], pad_token_id=0, old_logprobs=old)
    assert micro.input_ids[1].tolist() == [1, 7, 13, 14, 15]
    targets = micro.input_ids[:, 1:]
    assert targets[0][micro.response_mask[0]].tolist() == [11, 12]
    assert targets[1][micro.response_mask[1]].tolist() == [13, 14, 15]
    assert not micro.response_mask[2].any()  # loss_mask False: no loss tokens
    assert micro.rollout_logprobs[1][micro.response_mask[1]].tolist() == pytest.approx([-0.3, -0.4, -0.5])
    assert micro.ref_logprobs is None
    read_back = response_values(batch, [0, 1, 2], micro.rollout_logprobs)
    for row, want in enumerate(batch.rollout_logprobs):
        assert read_back[row].tolist() == pytest.approx(want)
    for row, values in response_values(batch, [0, 1, 2], micro.old_logprobs).items():
        assert torch.equal(values, old[row])
    assert collate(batch, [], pad_token_id=0).is_empty


def test_token_logprobs_pick_the_next_token() -> None:
    logits = torch.randn(2, 4, 6)
    input_ids = torch.tensor([[1, 2, 3, 4], [5, 0, 1, 2]])
    values = token_logprobs(logits, input_ids, temperature=2.0)
    expected = torch.log_softmax(logits[0, 1] / 2.0, dim=-1)[3]
    assert values.shape == (2, 3) and values[0, 1].item() == pytest.approx(expected.item())
    assert row_lengths(small_batch()) == [5, 5, 5]


def test_config_names_the_bad_key() -> None:
    with pytest.raises(ConfigError, match="learner.zero_stage"):
        LearnerConfig(zero_stage=4).check("learner")
    with pytest.raises(ConfigError, match="learner.offload_params"):
        LearnerConfig(zero_stage=2, offload_params=True).check("learner")
    with pytest.raises(ConfigError, match="learner.dtype"):
        LearnerConfig(dtype="float16").check("learner")
