"""The estimator contract: what every registered estimator promises with its default options,
tested over the registry, so that a new estimator (one module in riskpo/algo/estimators/) is
tested here without new test code. Shapes and dtypes, finite advantages and metrics, masked rows
(0, and their rewards do not matter), the state round trip through a checkpoint, the declared
grouping (permuting questions within the groups it declares permutes the advantages), equal
rewards carry no signal, and a non-finite reward in a valid row is refused."""

from __future__ import annotations

import math

import pytest
import torch

from riskpo.algo.registry import AdvantageState, estimators

NAMES = sorted(estimators())
SAMPLES = 4  # per question
BUNDLE = 2  # questions per group in the batches below (a "bundle" estimator's options say its own)


def _batch(seed: int, num_questions: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rewards [N] float32 0/1 with success rates 0, 1/4, ..., 1 among the questions, question
    ids [N] in the trainer's layout, valid [N] with a few masked rows)."""
    generator = torch.Generator().manual_seed(seed)
    rates = torch.arange(num_questions) % (SAMPLES + 1)
    rewards = torch.zeros(num_questions, SAMPLES)
    for question, right in enumerate(rates.tolist()):
        rewards[question, torch.randperm(SAMPLES, generator=generator)[:right]] = 1.0
    question_ids = torch.arange(num_questions).repeat_interleave(SAMPLES)
    valid = torch.ones(num_questions * SAMPLES, dtype=torch.bool)
    valid[torch.randperm(valid.numel(), generator=generator)[:3]] = False
    return rewards.flatten(), question_ids, valid


def _call(name: str, rewards: torch.Tensor, question_ids: torch.Tensor, valid: torch.Tensor,
          state: AdvantageState | None = None):
    estimator = estimators()[name]
    return estimator(rewards, question_ids, None, estimator.options(), state or AdvantageState(seed=1),
                     valid)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_and_finite_values(name):
    rewards, question_ids, valid = _batch(0)
    for dtype in (torch.float32, torch.float64):
        result = _call(name, rewards.to(dtype), question_ids, valid)
        assert result.advantages.shape == rewards.shape and result.advantages.dtype == dtype
        assert torch.isfinite(result.advantages).all()
        assert result.advantages.abs().sum() > 0  # the batch has signal for every estimator
        if result.loss_weights is not None:
            assert result.loss_weights.shape == rewards.shape and result.loss_weights.dtype.is_floating_point
            assert torch.isfinite(result.loss_weights).all()
    assert result.metrics and all(isinstance(value, float) for value in result.metrics.values())
    undefined = [key for key, value in result.metrics.items() if not math.isfinite(value)]
    assert not undefined, f"{name}: metrics not finite on a batch where all are defined: {undefined}"


@pytest.mark.parametrize("name", NAMES)
def test_masked_rows_get_zero_and_their_rewards_do_not_matter(name):
    rewards, question_ids, valid = _batch(1)
    first = _call(name, rewards, question_ids, valid)
    assert (first.advantages[~valid] == 0).all()
    for filler in (float("nan"), float("inf"), 7.0):
        second = _call(name, torch.where(valid, rewards, filler), question_ids, valid)
        assert torch.equal(first.advantages, second.advantages)


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_gives_the_same_next_step(name):
    rewards, question_ids, valid = _batch(2)
    state = AdvantageState(seed=5)
    _call(name, rewards, question_ids, valid, state)
    restored = AdvantageState(seed=5)
    restored.load_state_dict(state.state_dict())
    following = 1.0 - rewards
    first = _call(name, following, question_ids, valid, state)
    second = _call(name, following, question_ids, valid, restored)
    assert torch.equal(first.advantages, second.advantages)
    assert first.metrics.keys() == second.metrics.keys()
    assert all(first.metrics[k] == second.metrics[k] or math.isnan(first.metrics[k]) for k in first.metrics)
    assert state.state_dict().keys() == restored.state_dict().keys() and state.step == restored.step


def _permutation_within_groups(name: str, num_questions: int, generator: torch.Generator) -> torch.Tensor:
    """A row order [N] that permutes the questions within the estimator's declared groups (and
    the responses within each question where the grouping allows): question blocks within each
    bundle; questions and their responses anywhere for "question", "batch" and "none"."""
    estimator = estimators()[name]
    size = estimator.prompts_per_group(estimator.options())
    if estimator.groups == "bundle":
        order = torch.cat([start + torch.randperm(min(size, num_questions - start), generator=generator)
                           for start in range(0, num_questions, size)])
        return (order[:, None] * SAMPLES + torch.arange(SAMPLES)).flatten()
    questions = torch.randperm(num_questions, generator=generator)
    within = torch.stack([torch.randperm(SAMPLES, generator=generator) for _ in range(num_questions)])
    return (questions[:, None] * SAMPLES + within[questions]).flatten()


@pytest.mark.parametrize("name", NAMES)
def test_permuting_questions_within_the_declared_groups_permutes_the_advantages(name):
    """Rows move with their question ids. A bundle pairs the responses of its questions in an
    order of the estimator's own, so its questions here have interchangeable responses (equal
    rewards within a question, different across questions)."""
    rewards, question_ids, _ = _batch(3, num_questions=10)
    if estimators()[name].groups == "bundle":
        rewards = (torch.arange(10) % 3 / 2).repeat_interleave(SAMPLES)  # 0, 0.5, 1 by question
    valid = torch.ones_like(rewards, dtype=torch.bool)
    original = _call(name, rewards, question_ids, valid).advantages
    generator = torch.Generator().manual_seed(4)
    for _ in range(3):
        order = _permutation_within_groups(name, 10, generator)
        permuted = _call(name, rewards[order], question_ids[order], valid[order]).advantages
        torch.testing.assert_close(permuted, original[order], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in NAMES if estimators()[n].groups != "none"])
def test_equal_rewards_carry_no_signal(name):
    """An estimator that compares responses (in its groups or the batch) gives 0 to a batch
    whose valid rewards are all equal, and no metric is infinite."""
    question_ids = torch.arange(10).repeat_interleave(SAMPLES)
    for value in (0.0, 1.0, -1.0):
        result = _call(name, torch.full((40,), value), question_ids, torch.ones(40, dtype=torch.bool))
        assert (result.advantages == 0).all()
        assert not any(math.isinf(v) for v in result.metrics.values())


@pytest.mark.parametrize("name", NAMES)
def test_a_non_finite_reward_in_a_valid_row_is_an_error(name):
    """One rule for every estimator: a NaN or infinite reward in a valid row is a ValueError
    naming the row, never NaN advantages."""
    rewards, question_ids, valid = _batch(5)
    valid[1] = True
    for bad in (float("nan"), float("inf")):
        rewards[1] = bad
        with pytest.raises(ValueError, match="row 1 .*finite"):
            _call(name, rewards, question_ids, valid)
