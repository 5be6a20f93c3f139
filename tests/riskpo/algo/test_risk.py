"""Risk measures, per-segment statistics, advantage weights and the quantile tracker."""

from __future__ import annotations

import io
import math

import pytest
import torch

from riskpo.algo import risk
from riskpo.algo.risk import QuantileTracker


def test_segment_quantiles_match_torch_quantile_per_segment():
    generator = torch.Generator().manual_seed(0)
    segments = torch.randint(0, 7, (200,), generator=generator)
    segments[segments == 3] = 4  # segment 3 is empty
    values = torch.randn(200, generator=generator, dtype=torch.float64).round(decimals=1)
    levels = torch.tensor([0.0, 0.05, 0.2, 0.5, 0.8, 0.95, 1.0], dtype=torch.float64)
    result = risk.segment_quantiles(values, segments, 8, levels)
    for segment in range(8):
        members = values[segments == segment]
        if members.numel() == 0:
            assert torch.isnan(result[segment]).all()
        else:
            torch.testing.assert_close(result[segment], torch.quantile(members, levels))


def test_segment_std_is_unbiased_and_nan_below_two():
    values = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)
    std = risk.segment_std(values, torch.tensor([0, 0, 0, 1]), 3)
    torch.testing.assert_close(std[0], torch.std(values[:3]))
    assert torch.isnan(std[1]) and torch.isnan(std[2])


def test_risk_measures_by_hand():
    scores = torch.arange(1.0, 11.0, dtype=torch.float64)  # q_0.2 = 2.8, q_0.8 = 8.2
    assert risk.quantile(scores, 0.2).item() == pytest.approx(2.8)
    assert risk.cvar(scores, 0.2).item() == pytest.approx(1.5)
    assert risk.rvar(scores, 0.2, 0.8).item() == pytest.approx(5.5)
    assert risk.mvar(scores, 0.2, 0.8, 1.5).item() == pytest.approx((1.5 * 1.5 + 5.5) / 2.5)
    assert risk.rvar(scores, 0.0, 1.0).item() == pytest.approx(scores.mean().item())


def test_risk_measures_are_level_integrals_of_the_quantile_function():
    """With ties the conditional mean E[S | qa <= S <= qb] (0.625 here) is not the objective
    whose gradient RiskPO follows; the level integral is (0.833)."""
    tied = torch.tensor([0.0, 0, 0, 1, 1, 1, 1, 1, 2, 2], dtype=torch.float64)
    assert risk.rvar(tied, 0.2, 0.8).item() == pytest.approx(0.5 / 0.6)
    assert risk.cvar(tied, 0.35).item() == pytest.approx((0.3 * 0 + 0.05 * 1) / 0.35)
    two = torch.tensor([0.0, 10.0])  # levels (0.2, 0.5] hold 0, (0.5, 0.8] hold 10
    assert risk.rvar(two, 0.2, 0.8).item() == pytest.approx(5.0)
    generator = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 6, (37,), generator=generator).double()
    fine = torch.linspace(0.2, 0.8, 600001, dtype=torch.float64)[1:]  # Riemann sum of q_u
    steps = scores.sort().values[(fine * 37).ceil().long() - 1]
    assert risk.rvar(scores, 0.2, 0.8).item() == pytest.approx(steps.mean().item(), abs=1e-4)
    assert risk.paper_objective(scores, 0.2, 0.8, 0.5).item() == pytest.approx(
        1.5 * 0.2 * risk.cvar(scores, 0.2).item() + 0.6 * risk.rvar(scores, 0.2, 0.8).item())


def test_bad_levels_are_errors():
    with pytest.raises(ValueError, match="levels"):
        risk.rvar(torch.ones(3), 0.8, 0.2)
    with pytest.raises(ValueError, match="levels"):
        risk.segment_quantiles(torch.ones(3), torch.zeros(3, dtype=torch.long), 1, torch.tensor([1.5]))


def test_advantage_weights_match_spec_formulas():
    scores = torch.linspace(-1.0, 4.0, 26, dtype=torch.float64)
    q_alpha, q_beta = torch.tensor(0.5, dtype=torch.float64), torch.tensor(2.5, dtype=torch.float64)
    positive = lambda x: x.clamp(min=0)  # noqa: E731
    g = positive(scores - q_alpha) - positive(scores - q_beta) + (q_alpha - q_beta)
    torch.testing.assert_close(risk.g_weight(scores, q_alpha, q_beta), g)
    assert (g <= 0).all()
    g_off = risk.g_weight(scores, q_alpha, q_beta, natural_baseline=False)
    torch.testing.assert_close(g_off, g - (q_alpha - q_beta))
    assert (g_off >= 0).all()
    a_rvar = risk.rvar_advantage(scores, q_alpha, q_beta, 0.2, 0.8)
    torch.testing.assert_close(a_rvar, g / 0.6)
    a_cvar = risk.cvar_advantage(scores, q_alpha, 0.2)
    torch.testing.assert_close(a_cvar, -positive(q_alpha - scores) / 0.2)
    a_mvar = risk.mvar_advantage(scores, q_alpha, q_beta, 0.2, 0.8, 1.5)
    torch.testing.assert_close(a_mvar, (1.5 * a_cvar + a_rvar) / 2.5)
    seeking = risk.risk_seeking_advantage(scores, q_alpha, q_beta, 0.2, 0.8, 1.5)
    torch.testing.assert_close(seeking, (1.5 * positive(scores - q_beta) / 0.2 + a_rvar) / 2.5)


def test_risk_advantage_dispatches_on_options():
    scores, qa, qb = torch.tensor([0.0, 1.0, 3.0]), torch.tensor(1.0), torch.tensor(2.0)
    common = dict(alpha=0.2, beta=0.8, w_mix=1.5)
    torch.testing.assert_close(risk.risk_advantage(scores, qa, qb, **common),
                               risk.mvar_advantage(scores, qa, qb, 0.2, 0.8, 1.5))
    torch.testing.assert_close(risk.risk_advantage(scores, qa, qb, mix_cvar=False, **common),
                               risk.rvar_advantage(scores, qa, qb, 0.2, 0.8))
    torch.testing.assert_close(risk.risk_advantage(scores, qa, qb, risk_seeking=True, **common),
                               risk.risk_seeking_advantage(scores, qa, qb, 0.2, 0.8, 1.5))


def test_std_divisor_never_divides_by_tiny_or_nan():
    std = torch.tensor([0.0, 1e-9, math.nan, 0.5], dtype=torch.float64)
    torch.testing.assert_close(risk.std_divisor(std), torch.tensor([1.0, 1.0, 1.0, 0.5 + 1e-6],
                                                                   dtype=torch.float64))


def test_tracker_warm_start_is_the_empirical_quantiles():
    scores = torch.arange(21.0)
    tracker = QuantileTracker()
    tracker.update(scores)
    torch.testing.assert_close(tracker.values, torch.quantile(scores.double(), tracker.levels))
    assert tracker.quantile(0.2) == pytest.approx(4.0)
    assert tracker.quantile(0.225) == pytest.approx(4.5)  # linear between grid levels


def test_tracker_converges_to_true_quantiles_from_a_bad_start():
    generator = torch.Generator().manual_seed(1)
    tracker = QuantileTracker(lr=0.1)
    tracker.update(torch.rand(100, generator=generator) + 0.5)  # warm start 0.5 too high
    for _ in range(300):
        tracker.update(torch.rand(2000, generator=generator))  # Uniform(0, 1): q_u = u
    torch.testing.assert_close(tracker.values, tracker.levels, atol=0.03, rtol=0)


def test_tracker_sa_step_by_hand():
    tracker = QuantileTracker(lr=0.1)
    tracker.update(torch.arange(19.0) + 1)
    before = tracker.values.clone()
    scores = torch.tensor([0.0, 100.0])
    tracker.update(scores)
    expected = before + 0.1 * (tracker.levels - (scores[None, :].double() < before[:, None]).double().mean(1))
    torch.testing.assert_close(tracker.values, expected)


def test_tracker_state_dict_round_trip_bit_for_bit():
    generator = torch.Generator().manual_seed(2)
    tracker = QuantileTracker(lr=0.07)
    for _ in range(5):
        tracker.update(torch.randn(64, generator=generator))
    buffer = io.BytesIO()
    torch.save(tracker.state_dict(), buffer)
    buffer.seek(0)
    restored = QuantileTracker()
    restored.load_state_dict(torch.load(buffer))
    assert torch.equal(restored.values, tracker.values) and restored.lr == tracker.lr
    assert restored.num_updates == tracker.num_updates and restored.initialized
    batch = torch.randn(64, generator=generator)
    tracker.update(batch)
    restored.update(batch)
    assert torch.equal(restored.values, tracker.values)


def test_tracker_errors():
    tracker = QuantileTracker()
    with pytest.raises(RuntimeError, match="before the first update"):
        tracker.quantile(0.2)
    tracker.update(torch.arange(5.0))
    with pytest.raises(ValueError, match="outside the tracker grid"):
        tracker.quantile(0.01)
    with pytest.raises(ValueError, match="lr"):
        QuantileTracker(lr=0.0)
