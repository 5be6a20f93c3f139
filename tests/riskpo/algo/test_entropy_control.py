"""Clip-Cov and KL-Cov (riskpo/algo/entropy_control.py) against the token-loop references in
reference_objectives.py, with the paper's defaults and the edge cases."""

from __future__ import annotations

import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_objectives import reference_clip_cov, reference_kl_cov, reference_token_covariance

from riskpo.algo.entropy_control import (
    ClipCovOptions,
    KLCovOptions,
    clip_cov_mask,
    kl_cov_mask,
    kl_cov_penalty,
    ppo_clipped_tokens,
    token_covariance,
)


def _grid(draw, shape, step, low, high):
    """Values on a dyadic grid, so that float sums are exact whatever their order."""
    count = int(torch.Size(shape).numel())
    steps = draw(st.lists(st.integers(int(low / step), int(high / step)), min_size=count, max_size=count))
    return torch.tensor(steps, dtype=torch.float64).view(shape) * step


@st.composite
def token_batches(draw):
    """(logprobs, old_logprobs, advantages [B] or [B, T], response_mask) on dyadic grids."""
    batch, length = draw(st.integers(1, 5)), draw(st.integers(1, 8))
    logprobs = _grid(draw, (batch, length), 0.25, -4.0, 0.0)
    old_logprobs = logprobs + _grid(draw, (batch, length), 0.125, -0.5, 0.5)
    per_token = draw(st.booleans())
    advantages = _grid(draw, (batch, length) if per_token else (batch,), 0.5, -3.0, 3.0)
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=batch * length, max_size=batch * length)))
    mask = mask.view(batch, length) | draw(st.booleans())
    logprobs = torch.where(mask, logprobs, -float("inf"))  # padding may hold anything
    return logprobs.float(), old_logprobs.float(), advantages.float(), mask


def _as_set(selected: torch.Tensor) -> set[tuple[int, int]]:
    return {tuple(index) for index in selected.nonzero().tolist()}


# ----------------------------------------------------------------------------- against the references


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.integers(1, 6), st.integers(1, 9), st.booleans(), st.integers(0, 10_000))
def test_covariance_matches_reference_on_continuous_values(batch, length, per_token, seed):
    generator = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(batch, length, generator=generator, dtype=torch.float64) * 5
    advantages = torch.randn((batch, length) if per_token else (batch,), generator=generator, dtype=torch.float64)
    mask = torch.rand(batch, length, generator=generator) > 0.3
    actual = token_covariance(logprobs, advantages, mask)
    expected = reference_token_covariance(logprobs, advantages, mask)
    assert set(_as_set(actual != 0)) <= set(expected)
    for (b, t), value in expected.items():
        assert actual[b, t].item() == pytest.approx(value, rel=1e-9, abs=1e-12)
    assert (actual[~mask] == 0).all()


@settings(max_examples=200, deadline=None, derandomize=True)
@given(token_batches(), st.sampled_from([2e-3, 0.1, 0.3, 1.0]), st.sampled_from([0.5, 1.0, 2.5]))
def test_kl_cov_matches_reference(batch, fraction, coef):
    logprobs, old_logprobs, advantages, mask = batch
    selected = kl_cov_mask(logprobs, advantages, mask, top_fraction=fraction)
    penalty = kl_cov_penalty(logprobs, old_logprobs, selected, coef=coef)
    expected_selected, expected_penalty = reference_kl_cov(logprobs, old_logprobs, advantages, mask,
                                                           fraction, coef)
    assert _as_set(selected) == expected_selected
    for (b, t), value in expected_penalty.items():
        assert penalty[b, t].item() == pytest.approx(value, rel=1e-6)
    assert (penalty[~selected] == 0).all()


@settings(max_examples=200, deadline=None, derandomize=True)
@given(token_batches(), st.sampled_from([2e-4, 0.1, 0.3, 1.0]),
       st.sampled_from([(1.0, 5.0), (-0.5, 0.5), (0.0, 2.0)]), st.booleans(), st.integers(0, 99))
def test_clip_cov_matches_reference(batch, fraction, bounds, skip_ppo_clipped, seed):
    logprobs, old_logprobs, advantages, mask = batch
    options = dict(clip_fraction=fraction, cov_low=bounds[0], cov_high=bounds[1],
                   skip_ppo_clipped=skip_ppo_clipped)
    actual = clip_cov_mask(logprobs, old_logprobs, advantages, mask,
                           generator=torch.Generator().manual_seed(seed), **options)
    expected = reference_clip_cov(logprobs, old_logprobs, advantages, mask,
                                  torch.Generator().manual_seed(seed), **options)
    assert _as_set(actual) == expected


# ----------------------------------------------------------------------------- the paper's defaults


def test_defaults_are_the_papers():
    clip = inspect.signature(clip_cov_mask).parameters
    assert (clip["clip_fraction"].default, clip["cov_low"].default, clip["cov_high"].default) == (2e-4, 1.0, 5.0)
    kl = inspect.signature(kl_cov_mask).parameters
    assert (kl["top_fraction"].default, inspect.signature(kl_cov_penalty).parameters["coef"].default) == (2e-3, 1.0)
    assert (ClipCovOptions().fraction, ClipCovOptions().low, ClipCovOptions().high) == (2e-4, 1.0, 5.0)
    assert (KLCovOptions().fraction, KLCovOptions().coef) == (2e-3, 1.0)


def _large_batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(40, 250, generator=generator) * 6  # 10,000 tokens
    old_logprobs = logprobs + 0.01 * torch.randn(40, 250, generator=generator)
    advantages = torch.randn(40, generator=generator) * 2
    return logprobs, old_logprobs, advantages, torch.ones(40, 250, dtype=torch.bool)


def test_default_selection_sizes_on_ten_thousand_tokens():
    logprobs, old_logprobs, advantages, mask = _large_batch()
    assert int(kl_cov_mask(logprobs, advantages, mask).sum()) == 20  # 2e-3 * 10,000
    covariance = token_covariance(logprobs, advantages, mask)
    assert int(((covariance >= 1) & (covariance <= 5)).sum()) > 2  # enough candidates
    chosen = clip_cov_mask(logprobs, old_logprobs, advantages, mask, generator=torch.Generator().manual_seed(1))
    assert int(chosen.sum()) == 2  # 2e-4 * 10,000
    assert ((covariance[chosen] >= 1) & (covariance[chosen] <= 5)).all()
    top = kl_cov_mask(logprobs, advantages, mask)
    assert covariance[top].min() >= covariance[~top].max()


def test_clip_cov_draw_follows_the_seed():
    logprobs, old_logprobs, advantages, mask = _large_batch()
    draws = [clip_cov_mask(logprobs, old_logprobs, advantages, mask, clip_fraction=0.01,
                           generator=torch.Generator().manual_seed(seed)) for seed in (5, 5, 6)]
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])


# ----------------------------------------------------------------------------- behaviour and edges


def test_kl_cov_penalty_gradient_reaches_only_selected_tokens():
    logprobs, old_logprobs, advantages, mask = _large_batch(2)
    logprobs = logprobs.clone().requires_grad_(True)
    selected = kl_cov_mask(logprobs, advantages, mask)
    penalty = kl_cov_penalty(logprobs, old_logprobs, selected, coef=0.5)
    penalty.sum().backward()
    expected = torch.where(selected, 0.5 * torch.sign(logprobs.detach() - old_logprobs), 0.0)
    torch.testing.assert_close(logprobs.grad, expected)
    assert penalty.dtype == logprobs.dtype


def test_kl_cov_ties_go_to_the_earliest_tokens():
    logprobs = torch.full((3, 4), -1.0)
    mask = torch.tensor([[False, True, True, True], [True, True, False, False], [True] * 4])
    selected = kl_cov_mask(logprobs, torch.zeros(3), mask, top_fraction=0.5)  # every score 0
    assert _as_set(selected) == {(0, 1), (0, 2), (0, 3), (1, 0)}


def test_ppo_clipped_tokens_are_skipped_only_on_request():
    logprobs = torch.tensor([[0.0, -3.0, -3.0]])
    old_logprobs = torch.tensor([[-1.0, -3.0, -3.0]])  # token 0: ratio e > 1.2, advantage > 0
    advantages = torch.tensor([[4.0, -2.0, -2.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert ppo_clipped_tokens(logprobs, old_logprobs, advantages, 0.2, 0.2).tolist() == [[True, False, False]]
    assert token_covariance(logprobs, advantages, mask).tolist() == [[8.0, 2.0, 2.0]]  # means 0 and -2
    options = dict(clip_fraction=1.0, cov_low=1.0, cov_high=10.0)
    skipped = clip_cov_mask(logprobs, old_logprobs, advantages, mask, generator=torch.Generator(), **options)
    kept = clip_cov_mask(logprobs, old_logprobs, advantages, mask, generator=torch.Generator(),
                         skip_ppo_clipped=False, **options)
    assert skipped.tolist() == [[False, True, True]]
    assert kept.tolist() == [[True, True, True]]


def test_advantages_per_response_equal_broadcast_per_token():
    logprobs, old_logprobs, advantages, mask = _large_batch(3)
    mask[:, 200:] = False
    per_token = advantages[:, None].expand(-1, 250)
    assert torch.equal(token_covariance(logprobs, advantages, mask), token_covariance(logprobs, per_token, mask))
    assert torch.equal(kl_cov_mask(logprobs, advantages, mask), kl_cov_mask(logprobs, per_token, mask))


def test_empty_mask_and_zero_fraction_select_nothing():
    logprobs, old_logprobs, advantages, mask = _large_batch(4)
    empty = torch.zeros_like(mask)
    generator = torch.Generator()
    assert not clip_cov_mask(logprobs, old_logprobs, advantages, empty, generator=generator).any()
    assert not kl_cov_mask(logprobs, advantages, empty).any()
    assert not kl_cov_mask(logprobs, advantages, mask, top_fraction=0.0).any()
    assert not clip_cov_mask(logprobs, old_logprobs, advantages, mask, generator=generator,
                             clip_fraction=0.0).any()


def test_non_finite_inside_the_mask_raises_and_outside_is_ignored():
    logprobs, old_logprobs, advantages, mask = _large_batch(5)
    mask[3, 7] = False
    logprobs[3, 7] = float("nan")
    kl_cov_mask(logprobs, advantages, mask)  # masked NaN: fine
    logprobs[2, 9] = -float("inf")
    with pytest.raises(ValueError, match=r"logprobs\[2, 9\]"):
        kl_cov_mask(logprobs, advantages, mask)
    with pytest.raises(ValueError, match="one \\[B, T\\] shape"):
        kl_cov_penalty(logprobs, old_logprobs[:, :5], mask, coef=1.0)
    with pytest.raises(ValueError, match="cov_low <= cov_high"):
        clip_cov_mask(logprobs, old_logprobs, advantages, mask, generator=torch.Generator(),
                      cov_low=5.0, cov_high=1.0)
    with pytest.raises(ValueError, match="top_fraction"):
        kl_cov_mask(logprobs, advantages, mask, top_fraction=1.5)
