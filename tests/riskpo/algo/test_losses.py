"""PPO clipped surrogate, dual clip, truncated IS, aggregation, KL estimators and entropy."""

from __future__ import annotations

import math

import pytest
import torch

from riskpo.algo.losses import (
    LossConfig,
    aggregate,
    entropy_from_logits,
    kl_penalty,
    micro_batch_objective,
    policy_loss,
)
from riskpo.options import ConfigError

RATIOS = torch.tensor([[1.5, 0.9], [5.0, 0.7]], dtype=torch.float64)
ADVANTAGES = torch.tensor([1.0, -1.0], dtype=torch.float64)
# per-token losses by hand (clip 0.2, dual clip 3):
#   A=+1: ratio 1.5 -> max(-1.5, -1.2) = -1.2 (clipped); ratio 0.9 -> -0.9
#   A=-1: ratio 5.0 -> max(5, 1.2) = 5, dual-capped at 3; ratio 0.7 -> max(0.7, 0.8) = 0.8 (clipped)
TOKEN_LOSSES = torch.tensor([[-1.2, -0.9], [3.0, 0.8]], dtype=torch.float64)


def _inputs():
    old = torch.tensor([[-1.0, -2.0], [-3.0, -0.5]], dtype=torch.float64)
    new = (old + RATIOS.log()).requires_grad_()
    return new, old


def test_clipped_and_dual_clipped_loss_by_hand():
    new, old = _inputs()
    mask = torch.ones(2, 2, dtype=torch.bool)
    loss, metrics = policy_loss(new, old, ADVANTAGES, mask)
    assert loss.item() == pytest.approx(TOKEN_LOSSES.mean().item())
    assert metrics["clip_fraction"] == pytest.approx(0.5)
    assert metrics["dual_clip_fraction"] == pytest.approx(0.25)
    assert metrics["approx_kl"] == pytest.approx(-RATIOS.log().mean().item())
    loss.backward()
    # only the unclipped token (row 0, token 1) carries gradient: d(-A r)/d logp = -A r / 4
    expected = torch.tensor([[0.0, -0.9 / 4], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(new.grad, expected)


def test_dual_clip_off_and_asymmetric_clip():
    new, old = _inputs()
    mask = torch.ones(2, 2, dtype=torch.bool)
    loss, metrics = policy_loss(new, old, ADVANTAGES, mask, dual_clip=None, clip_high=0.6)
    # A=+1 ratio 1.5 now inside [0.8, 1.6]: -1.5; A=-1 ratio 5 uncapped: 5
    assert loss.item() == pytest.approx((-1.5 - 0.9 + 5.0 + 0.8) / 4)
    assert metrics["dual_clip_fraction"] == 0.0 and metrics["clip_fraction"] == pytest.approx(0.25)


@pytest.mark.parametrize(("mode", "expected"), [
    ("token_mean", (-1.2 + 3.0 + 0.8) / 3),
    ("seq_mean_token_sum", (-1.2 + 3.8) / 2),
    ("seq_mean_token_mean", (-1.2 / 1 + 3.8 / 2) / 2),
])
def test_aggregation_modes_by_hand(mode, expected):
    new, old = _inputs()
    mask = torch.tensor([[True, False], [True, True]])
    loss, _ = policy_loss(new, old, ADVANTAGES, mask, aggregation=mode)
    assert loss.item() == pytest.approx(expected)
    assert aggregate(TOKEN_LOSSES, mask, mode).item() == pytest.approx(expected)


def test_aggregate_denominator_override_and_empty_mask():
    mask = torch.tensor([[True, False], [True, True]])
    assert aggregate(TOKEN_LOSSES, mask, "token_mean", denominator=10).item() == pytest.approx(0.26)
    assert aggregate(TOKEN_LOSSES, mask, "seq_mean_token_sum", denominator=4).item() == pytest.approx(0.65)
    assert aggregate(TOKEN_LOSSES, torch.zeros(2, 2, dtype=torch.bool), "token_mean").item() == 0.0
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(TOKEN_LOSSES, mask, "sum")


def test_token_level_advantages_equal_broadcast_sequence_advantages():
    new, old = _inputs()
    mask = torch.ones(2, 2, dtype=torch.bool)
    per_sequence, _ = policy_loss(new, old, ADVANTAGES, mask)
    per_token, _ = policy_loss(new, old, ADVANTAGES[:, None].expand(2, 2), mask)
    assert per_sequence.item() == pytest.approx(per_token.item())


def test_truncated_importance_sampling_by_hand_token_and_sequence_level():
    new, old = _inputs()
    mask = torch.ones(2, 2, dtype=torch.bool)
    weights = torch.tensor([[2.0, 0.5], [1.0, 4.0]], dtype=torch.float64)  # pi_old / pi_rollout
    rollout = old - weights.log()
    loss, metrics = policy_loss(new, old, ADVANTAGES, mask, rollout_logprobs=rollout,
                                correction="token", correction_cap=1.5)
    capped = weights.clamp(max=1.5)
    assert loss.item() == pytest.approx((TOKEN_LOSSES * capped).mean().item())
    assert metrics["is_mean"] == pytest.approx(capped.mean().item())
    assert metrics["is_truncated_fraction"] == pytest.approx(0.5)  # 2.0 and 4.0 were cut
    # sequence level: the product over the response, 2 * 0.5 = 1 and 1 * 4 = 4 -> 1.5
    loss, metrics = policy_loss(new, old, ADVANTAGES, mask, rollout_logprobs=rollout,
                                correction="sequence", correction_cap=1.5)
    per_row = torch.tensor([[1.0], [1.5]], dtype=torch.float64)
    assert loss.item() == pytest.approx((TOKEN_LOSSES * per_row).mean().item())
    assert metrics["is_truncated_fraction"] == pytest.approx(0.5)
    new.grad = None
    loss.backward()  # the weights are detached: gradient only through the PPO ratio
    assert new.grad[0, 1].item() == pytest.approx(-0.9 / 4 * 1.0)
    with pytest.raises(ValueError, match="rollout log-probs"):
        policy_loss(new, old, ADVANTAGES, mask, correction="token")


def test_policy_loss_input_errors():
    new, old = _inputs()
    mask = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(new, old, torch.ones(3), mask)
    with pytest.raises(ValueError, match="must agree"):
        policy_loss(new, old[:, :1], ADVANTAGES, mask)


def test_kl_estimators_against_formulas():
    logprobs = torch.tensor([[-1.0, -0.2, -2.5, -40.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -0.1, -1.0, -1.0]], dtype=torch.float64)
    diff = logprobs - ref
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k1"), diff)
    torch.testing.assert_close(kl_penalty(logprobs, ref, "kl"), diff)
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k2"), 0.5 * diff**2)
    k3 = kl_penalty(logprobs, ref, "low_var_kl")
    manual = [math.exp(-d) + d - 1 for d in diff[0, :3].tolist()]
    torch.testing.assert_close(k3[0, :3], torch.tensor(manual, dtype=torch.float64))
    assert k3[0, 3].item() == 10.0  # log ratio 39 clamped to 20, then the estimate to 10
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k3"), k3)
    assert (k3 >= 0).all()
    with pytest.raises(ValueError, match="KL kind"):
        kl_penalty(logprobs, ref, "k4")


def test_entropy_matches_naive_softmax_and_survives_huge_logits():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 50, generator=generator, dtype=torch.float64) * 3
    probabilities = torch.softmax(logits, dim=-1)
    naive = -(probabilities * probabilities.log()).sum(-1)
    torch.testing.assert_close(entropy_from_logits(logits), naive)
    huge = torch.tensor([[[1e4, 0.0, -1e4], [5e3, 5e3, 0.0]]], dtype=torch.float32)
    entropy = entropy_from_logits(huge)
    assert torch.isfinite(entropy).all()
    torch.testing.assert_close(entropy, torch.tensor([[0.0, math.log(2)]]), atol=1e-5, rtol=0)


def test_loss_options_are_checked_once_naming_the_key():
    LossConfig().check("algorithm.loss")
    for bad, key in ((LossConfig(dual_clip=1.0), "dual_clip"), (LossConfig(aggregation="sum"), "aggregation"),
                     (LossConfig(kl_kind="k4"), "kl_kind"), (LossConfig(importance_cap=0.5), "importance_cap"),
                     (LossConfig(importance_correction="tokens"), "importance_correction")):
        with pytest.raises(ConfigError) as error:
            bad.check("algorithm.loss")
        assert error.value.key == f"algorithm.loss.{key}"


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_sum", "seq_mean_token_mean"])
def test_micro_batch_shares_add_up_to_the_mini_batch_objective(aggregation):
    """Split into micro-batches, each scaled by its share of the global normaliser, the
    objective (PPO term - entropy bonus + KL) equals that of the whole mini-batch at once."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 9, generator=generator, dtype=torch.float64)
    input_ids = torch.randint(0, 9, (4, 6), generator=generator)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[:, :2] = False  # the prompt
    mask[3, 4] = False  # a shorter response
    advantages = torch.tensor([1.0, -0.5, 2.0, -1.0], dtype=torch.float64)
    old = -torch.rand(4, 5, generator=generator, dtype=torch.float64)
    ref = -torch.rand(4, 5, generator=generator, dtype=torch.float64)
    config = LossConfig(aggregation=aggregation, entropy_coef=0.01, kl_coef=0.1)
    units = float(mask.sum()) if aggregation == "token_mean" else 4.0
    whole, sums = micro_batch_objective(logits, input_ids, mask, advantages, old, config,
                                        loss_units=units, temperature=1.0, ref_logprobs=ref)
    parts = [micro_batch_objective(logits[rows], input_ids[rows], mask[rows], advantages[rows],
                                   old[rows], config, loss_units=units, temperature=1.0,
                                   ref_logprobs=ref[rows])
             for rows in (slice(0, 1), slice(1, 4))]
    assert sum(part[0].item() for part in parts) == pytest.approx(whole.item(), rel=1e-6)
    assert sum(part[1]["tokens"] for part in parts) == sums["tokens"] == float(mask.sum())
    logprobs = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    pg, _ = policy_loss(logprobs, old, advantages, mask, aggregation=aggregation)
    entropy = aggregate(entropy_from_logits(logits[:, :-1]), mask, aggregation)
    kl = aggregate(kl_penalty(logprobs, ref, "k3"), mask, aggregation)
    assert whole.item() == pytest.approx((pg - 0.01 * entropy + 0.1 * kl).item(), rel=1e-5)
