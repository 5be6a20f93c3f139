"""pass@k, avg@k and the statistics logged each step."""

from __future__ import annotations

import math

import pytest
import torch
from reference_impl import reference_pass_at_k

from riskpo.algo.metrics import (
    advantage_statistics,
    avg_at_k,
    pass_at_k,
    pass_at_k_curve,
    reward_statistics,
    risk_measure_statistics,
    risk_region_statistics,
)


def test_pass_at_k_matches_exact_combinatorics_including_k_equal_n_and_c_zero():
    for n in range(1, 13):
        correct = torch.arange(n + 1)
        for k in range(1, n + 1):
            expected = torch.tensor([reference_pass_at_k(n, c, k) for c in range(n + 1)],
                                    dtype=torch.float64)
            torch.testing.assert_close(pass_at_k(correct, n, k), expected, atol=1e-12, rtol=0)
    assert pass_at_k(torch.tensor([0]), 5, 5).item() == 0.0
    assert pass_at_k(torch.tensor([1]), 5, 5).item() == 1.0


def test_pass_at_k_is_stable_for_large_n():
    correct = torch.tensor([0, 1, 17, 250, 1000])
    for k in (1, 32, 500, 1000):
        expected = torch.tensor([reference_pass_at_k(1000, c, k) for c in correct.tolist()],
                                dtype=torch.float64)
        torch.testing.assert_close(pass_at_k(correct, 1000, k), expected, atol=1e-12, rtol=1e-10)


def test_pass_at_k_with_per_problem_sample_counts_and_errors():
    result = pass_at_k(torch.tensor([1, 2]), torch.tensor([4, 8]), 2)
    torch.testing.assert_close(result, torch.tensor([reference_pass_at_k(4, 1, 2),
                                                     reference_pass_at_k(8, 2, 2)], dtype=torch.float64))
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(torch.tensor([1]), 4, 5)
    with pytest.raises(ValueError, match="num_correct"):
        pass_at_k(torch.tensor([5]), 4, 2)


def test_curve_and_avg_at_k():
    correct = torch.tensor([0, 2, 4])
    curve = pass_at_k_curve(correct, 4, [1, 2, 4])
    assert curve[1] == pytest.approx((0 + 0.5 + 1) / 3)
    assert curve[4] == pytest.approx(2 / 3)
    assert curve[2] == pytest.approx((0 + reference_pass_at_k(4, 2, 2) + 1) / 3)
    assert avg_at_k(correct, 4) == pytest.approx(0.5)


def test_reward_statistics_respect_the_mask():
    rewards = torch.tensor([1.0, 0.0, 1.0, 100.0])
    stats = reward_statistics(rewards, torch.tensor([True, True, True, False]))
    assert stats["reward/mean"] == pytest.approx(2 / 3) and stats["reward/max"] == 1.0
    assert stats["reward/positive_fraction"] == pytest.approx(2 / 3) and stats["reward/count"] == 3
    assert math.isnan(reward_statistics(rewards, torch.zeros(4, dtype=torch.bool))["reward/mean"])


def test_risk_region_and_measure_statistics():
    scores = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    regions = risk_region_statistics(scores, torch.tensor(1.0), torch.tensor(3.0))
    assert regions == pytest.approx({"risk/below_qa_fraction": 0.2, "risk/between_fraction": 0.6,
                                     "risk/above_qb_fraction": 0.2})
    measures = risk_measure_statistics(scores, 0.25, 0.75, 1.5)  # levels of the quantile function
    assert measures["risk/cvar"] == pytest.approx(0.05 * 1 / 0.25)  # [0, .2] -> 0, (.2, .25] -> 1
    assert measures["risk/rvar"] == pytest.approx(2.0)
    assert measures["risk/mvar"] == pytest.approx((1.5 * 0.2 + 2.0) / 2.5)
    assert measures["risk/objective"] == measures["risk/mvar"]  # the release form ascends MVaR
    paper = risk_measure_statistics(scores, 0.25, 0.75, 0.5, "paper")
    assert paper["risk/objective"] == pytest.approx(1.5 * 0.25 * 0.2 + 0.5 * 2.0)


def test_advantage_diagnostics_by_hand():
    """Correct answers pushed down, wrong ones pushed up, |A| tail, and the mean advantage by
    question difficulty (success rate of its samples)."""
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    advantages = torch.tensor([-1.0, 0.0, 0.5, 0.5, -0.5, 2.0, 1.0, -3.0, -1.0, -1.0, 0.0, 4.0])
    questions = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])  # success 1.0, 0.25, 0.0
    stats = advantage_statistics(advantages, rewards, questions)
    assert stats["adv/correct_negative_fraction"] == pytest.approx(2 / 5)
    assert stats["adv/wrong_positive_fraction"] == pytest.approx(3 / 7)
    assert stats["adv/p99_abs"] == pytest.approx(torch.quantile(advantages.abs().double(), 0.99).item())
    assert stats["adv/mean_success_75_100"] == pytest.approx(0.0)  # question 0
    assert stats["adv/mean_success_25_50"] == pytest.approx(-0.125)  # question 1
    assert stats["adv/mean_success_0_25"] == pytest.approx(0.5)  # question 2
    assert math.isnan(stats["adv/mean_success_50_75"])


def test_advantage_statistics_count_all_wrong_questions_with_signal():
    rewards = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    question_ids = torch.tensor([0, 0, 1, 1, 2, 2])
    advantages = torch.tensor([-0.5, 0.0, 0.0, 0.0, 1.0, -1.0])
    stats = advantage_statistics(advantages, rewards, question_ids)
    assert stats["adv/all_wrong_question_fraction"] == pytest.approx(2 / 3)
    assert stats["adv/all_wrong_nonzero_fraction"] == pytest.approx(0.5)
    assert stats["adv/nonzero_fraction"] == pytest.approx(0.5)
