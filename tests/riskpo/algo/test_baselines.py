"""The estimators RiskPO is compared with (riskpo/algo/estimators/ beside riskpo.py): GRPO,
Dr.GRPO, RLOO and REINFORCE against loops (reference_impl.py); NSR, W-REINFORCE, PKPO and RS-GRPO
against the slow references in reference_objectives.py, the papers' formulas and their edge
cases; QAE and F-GRPO against loops and by hand."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_impl import reference_f_grpo, reference_group_baseline, reference_qae
from reference_objectives import (
    loop_pkpo_closed_form,
    reference_nsr,
    reference_pkpo,
    reference_rs_grpo,
    reference_w_reinforce,
)

from riskpo.algo.estimators.f_grpo import FGRPOOptions
from riskpo.algo.estimators.nsr import nsr_advantages, w_reinforce_advantages
from riskpo.algo.estimators.pkpo import pkpo_advantages, pkpo_k_schedule
from riskpo.algo.estimators.qae import QAEOptions
from riskpo.algo.estimators.rs_grpo import rs_grpo_advantages
from riskpo.algo.metrics import pass_at_k
from riskpo.algo.registry import get_advantage_estimator
from riskpo.options import ConfigError

FUNCTIONS = {
    "nsr": nsr_advantages,
    "w_reinforce": w_reinforce_advantages,
    "pkpo": lambda *args, **kw: pkpo_advantages(*args, k=2, **kw),
    "rs_grpo": rs_grpo_advantages,
}


@st.composite
def grouped_rewards(draw, max_group: int = 7):
    """(rewards [N] float32, question_index [N] shuffled, valid [N]) with ragged groups."""
    sizes = draw(st.lists(st.integers(1, max_group), min_size=1, max_size=6))
    total = sum(sizes)
    kind = draw(st.sampled_from(["binary", "signed", "continuous"]))
    if kind == "binary":
        values = draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=total, max_size=total))
    elif kind == "signed":
        values = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=total, max_size=total))
    else:
        element = st.one_of(st.floats(-2, 2, width=32), st.sampled_from([0.0, 0.5, 1.0]))
        values = draw(st.lists(element, min_size=total, max_size=total))
    question_index = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    order = torch.randperm(total, generator=torch.Generator().manual_seed(draw(st.integers(0, 999))))
    valid = torch.tensor(draw(st.lists(st.booleans(), min_size=total, max_size=total)))
    valid |= draw(st.booleans())  # half the cases: nothing masked
    rewards = torch.tensor(values, dtype=torch.float32)[order]
    rewards[~valid[order]] = float("nan")  # masked rows may hold anything
    return rewards, question_index[order], valid[order]


# ----------------------------------------------------------------------------- against the references


@settings(max_examples=150, deadline=None, derandomize=True)
@given(grouped_rewards(), st.sampled_from([1.0, 0.5, 0.0]), st.sampled_from([0.0, 0.1, 0.37, 1.0]))
def test_nsr_and_w_reinforce_match_reference(problem, threshold, weight):
    rewards, question_index, valid = problem
    torch.testing.assert_close(nsr_advantages(rewards, question_index, valid, correct_threshold=threshold),
                               reference_nsr(rewards, question_index, valid, threshold), rtol=0, atol=0)
    actual = w_reinforce_advantages(rewards, question_index, valid, positive_weight=weight,
                                    correct_threshold=threshold)
    expected = reference_w_reinforce(rewards, question_index, valid, weight, threshold)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(grouped_rewards(), st.integers(1, 8), st.sampled_from(["loo_minus_one", "none"]),
       st.sampled_from([1.0, 0.5]))
def test_pkpo_matches_subset_enumeration(problem, k, baseline, threshold):
    rewards, question_index, valid = problem
    actual = pkpo_advantages(rewards, question_index, valid, k=k, baseline=baseline,
                             correct_threshold=threshold)
    expected = reference_pkpo(rewards, question_index, valid, k, baseline, threshold)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    closed_form = loop_pkpo_closed_form(rewards, question_index, valid, k, baseline, threshold)
    torch.testing.assert_close(closed_form, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(grouped_rewards(), st.sampled_from([0.1, 0.5, 2.0, 5.0]))
def test_rs_grpo_matches_reference(problem, beta):
    rewards, question_index, valid = problem
    actual = rs_grpo_advantages(rewards, question_index, valid, beta=beta)
    expected = reference_rs_grpo(rewards, question_index, valid, beta)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- the papers' values


def test_w_reinforce_end_points_are_nsr_and_plain_reinforce():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    question_index = torch.tensor([0, 0, 1, 1])
    assert torch.equal(w_reinforce_advantages(rewards, question_index, positive_weight=0.0),
                       nsr_advantages(rewards, question_index))
    assert w_reinforce_advantages(rewards, question_index).tolist() == [0.1, -1.0, 0.1, -1.0]
    assert w_reinforce_advantages(rewards, question_index, positive_weight=1.0).tolist() == [1, -1, 1, -1]


def test_right_means_reaching_the_threshold():
    rewards = torch.tensor([1.0, 0.999, 0.5, -1.0, 2.0])
    question_index = torch.zeros(5, dtype=torch.long)
    assert nsr_advantages(rewards, question_index).tolist() == [0, -1, -1, -1, 0]
    assert nsr_advantages(rewards, question_index, correct_threshold=0.5).tolist() == [0, 0, 0, -1, 0]


@pytest.mark.parametrize(("baseline", "right", "wrong"), [
    ("none", 3.0, 3.0 * (1 - 1 / 6)),  # k = 3 * (1 - C(2,2)/C(4,2))
    ("loo_minus_one", 3.0 * 3 / 6, 0.0),  # k * C(3,2)/C(4,2): subsets where it is the only right one
])
def test_pkpo_hand_values(baseline, right, wrong):
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])  # n = 5, c = 2
    advantages = pkpo_advantages(rewards, torch.zeros(5, dtype=torch.long), k=3, baseline=baseline)
    torch.testing.assert_close(advantages, torch.tensor([right, wrong, right, wrong, wrong], dtype=torch.float64))


@pytest.mark.parametrize("k", [1, 2, 3, 5, 6])
def test_pkpo_mean_weight_is_k_times_unbiased_pass_at_k(k):
    # each k-subset gives its max to its k members: sum_i s_i = k rho(n, c, k), so mean(n s_i) = k rho
    for num_right in range(7):
        rewards = torch.tensor([1.0] * num_right + [0.0] * (6 - num_right))
        advantages = pkpo_advantages(rewards, torch.zeros(6, dtype=torch.long), k=k, baseline="none")
        expected = k * pass_at_k(torch.tensor([num_right]), 6, k)[0]
        assert advantages.mean().item() == pytest.approx(expected.item(), abs=1e-12)


@pytest.mark.parametrize("baseline", ["none", "loo_minus_one"])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_pkpo_gradient_is_unbiased_for_a_bernoulli_policy(baseline, k):
    """E[(1/n) sum_i A_i d/dp log P(x_i)] over all 2^n outcomes = d/dp pass@k = k (1-p)^(k-1)."""
    n, p = 4, 0.3
    expected_gradient = 0.0
    for outcome in itertools.product([0.0, 1.0], repeat=n):
        probability = math.prod(p if f else 1 - p for f in outcome)
        advantages = pkpo_advantages(torch.tensor(outcome), torch.zeros(n, dtype=torch.long), k=k,
                                     baseline=baseline)
        scores = [1 / p if f else -1 / (1 - p) for f in outcome]
        expected_gradient += probability * sum(a * s for a, s in zip(advantages.tolist(), scores, strict=True)) / n
    assert expected_gradient == pytest.approx(k * (1 - p) ** (k - 1), rel=1e-10)


def test_rs_grpo_hand_value_and_limits():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    question_index = torch.zeros(4, dtype=torch.long)
    mean_utility = (math.exp(2) + 3) / 4
    expected = [(math.exp(2) / mean_utility - 1) / 2] + [(1 / mean_utility - 1) / 2] * 3
    torch.testing.assert_close(rs_grpo_advantages(rewards, question_index),
                               torch.tensor(expected, dtype=torch.float64))
    small_beta = rs_grpo_advantages(rewards, question_index, beta=1e-6)  # -> r - mean
    torch.testing.assert_close(small_beta, torch.tensor([0.75, -0.25, -0.25, -0.25], dtype=torch.float64),
                               rtol=0, atol=1e-5)


def test_rs_grpo_is_stable_for_large_rewards_and_beta():
    rewards = torch.tensor([1000.0, 0.0, 0.0, 0.0, 0.0])
    advantages = rs_grpo_advantages(rewards, torch.zeros(5, dtype=torch.long), beta=50.0)
    assert torch.isfinite(advantages).all()
    assert advantages[0].item() == pytest.approx(4 / 50)  # exp(beta r) dominates: n / 1 - 1, / beta
    assert advantages[1:].tolist() == pytest.approx([-1 / 50] * 4)


# ----------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_all_right_and_all_wrong(name):
    question_index = torch.zeros(6, dtype=torch.long)
    right = FUNCTIONS[name](torch.ones(6), question_index)
    wrong = FUNCTIONS[name](torch.zeros(6), question_index)
    expected_right = {"nsr": 0.0, "w_reinforce": 0.1, "pkpo": 0.0, "rs_grpo": 0.0}[name]
    expected_wrong = {"nsr": -1.0, "w_reinforce": -1.0, "pkpo": 0.0, "rs_grpo": 0.0}[name]
    assert right.tolist() == [expected_right] * 6
    assert wrong.tolist() == [expected_wrong] * 6
    assert right.dtype == wrong.dtype == torch.float64


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_single_valid_response(name):
    rewards = torch.tensor([1.0, float("nan"), 0.0, 0.0, 1.0])
    question_index = torch.tensor([0, 0, 1, 1, 1])
    valid = torch.tensor([True, False, True, True, True])
    advantages = FUNCTIONS[name](rewards, question_index, valid)
    lone = {"nsr": 0.0, "w_reinforce": 0.1, "pkpo": 0.0, "rs_grpo": 0.0}[name]  # group methods: 0
    assert advantages[0].item() == pytest.approx(lone)
    assert advantages[1].item() == 0.0  # masked


def test_pkpo_with_k_equal_to_n():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    question_index = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    advantages = pkpo_advantages(rewards, question_index, k=4)
    # k = n: the only subset is the whole group; a right response matters only when it is alone
    assert advantages.tolist() == [4.0, 0, 0, 0, 0, 0, 0, 0]
    assert pkpo_advantages(rewards, question_index, k=4, baseline="none").tolist() == [4.0] * 4 + [4.0] * 4
    assert torch.equal(pkpo_advantages(rewards, question_index, k=9), advantages)  # k clipped to n


def test_pkpo_k_one_is_rloo():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    advantages = pkpo_advantages(rewards, torch.zeros(5, dtype=torch.long), k=1)
    others = torch.tensor([(rewards.sum() - r) / 4 for r in rewards])
    torch.testing.assert_close(advantages, (rewards - others).double())


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_masked_rows_get_zero_and_do_not_move_the_rest(name):
    generator = torch.Generator().manual_seed(3)
    rewards = torch.randint(0, 2, (40,), generator=generator).float()
    question_index = torch.randint(0, 6, (40,), generator=generator)
    valid = torch.rand(40, generator=generator) > 0.3
    first = FUNCTIONS[name](rewards, question_index, valid)
    changed = torch.where(valid, rewards, torch.tensor(float("inf")))
    second = FUNCTIONS[name](changed, question_index, valid)
    assert torch.equal(first, second)
    assert (first[~valid] == 0).all()
    alone = FUNCTIONS[name](rewards[valid], question_index[valid])
    torch.testing.assert_close(first[valid], alone)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_reward_in_a_valid_row_names_the_row(name, bad):
    rewards = torch.tensor([1.0, 0.0, bad, 1.0])
    with pytest.raises(ValueError, match="row 2"):
        FUNCTIONS[name](rewards, torch.tensor([0, 0, 1, 1]))


def test_argument_errors():
    rewards, question_index = torch.ones(4), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        pkpo_advantages(rewards, question_index, k=0)
    with pytest.raises(ValueError, match="baseline"):
        pkpo_advantages(rewards, question_index, k=2, baseline="loo")
    with pytest.raises(ValueError, match="beta"):
        rs_grpo_advantages(rewards, question_index, beta=0.0)
    with pytest.raises(ValueError, match="positive_weight"):
        w_reinforce_advantages(rewards, question_index, positive_weight=-0.1)
    with pytest.raises(ValueError, match="question_index has shape"):
        nsr_advantages(rewards, question_index[:3])
    with pytest.raises(TypeError, match="integer"):
        nsr_advantages(rewards, question_index.float())
    with pytest.raises(ValueError, match="valid"):
        nsr_advantages(rewards, question_index, torch.ones(4))


def test_pkpo_k_schedule():
    switch = {"k_start": 8, "k_end": 1, "anneal_start": 100}
    assert [pkpo_k_schedule(s, **switch) for s in (0, 99, 100, 500)] == [8, 8, 1, 1]
    ramp = {"k_start": 1, "k_end": 5, "anneal_start": 10, "anneal_steps": 8}
    assert [pkpo_k_schedule(s, **ramp) for s in (0, 10, 11, 12, 14, 17, 18, 99)] == [1, 1, 2, 2, 3, 5, 5, 5]
    assert pkpo_k_schedule(7, k_start=4, k_end=4) == 4
    with pytest.raises(ValueError, match=">= 1"):
        pkpo_k_schedule(0, k_start=0, k_end=1)


# ----------------------------------------------------------------------------- group baselines


@pytest.mark.parametrize("shuffled", [False, True], ids=["trainer_layout", "any_order"])
@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce_baseline"])
def test_group_baselines_against_loops(name, shuffled):
    generator = torch.Generator().manual_seed(8)
    rewards = torch.randn(30, generator=generator)
    question_ids = torch.arange(6).repeat_interleave(5)
    valid = torch.rand(30, generator=generator) > 0.3
    valid[:4] = torch.tensor([True, False, False, False])  # question 0 keeps one valid response
    if shuffled:  # rows in any order take the scatter path
        order = torch.randperm(30, generator=generator)
        rewards, question_ids, valid = rewards[order], question_ids[order] * 3 + 1, valid[order]
    estimator = get_advantage_estimator(name)
    options = estimator.options()
    result = estimator(rewards, question_ids, question_ids, options, valid=valid)
    expected = reference_group_baseline(rewards, question_ids, valid, name,
                                        std_normalize=getattr(options, "std_normalize", False))
    torch.testing.assert_close(result.advantages.double(), expected, atol=1e-5, rtol=1e-5)


def test_reinforce_baseline_uses_the_batch_mean_and_std_when_asked():
    estimator = get_advantage_estimator("reinforce_baseline")
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 5.0])
    valid = torch.tensor([True, True, True, True, False])
    question_ids = torch.tensor([0, 0, 1, 1, 1])
    plain = estimator(rewards, question_ids, valid=valid).advantages  # its default: no std division
    torch.testing.assert_close(plain[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    options = estimator.options(std_normalize=True)
    result = estimator(rewards, question_ids, question_ids, options, valid=valid)
    expected = (torch.tensor([1.0, 0, 0, 0]) - 0.25) / (torch.tensor([1.0, 0, 0, 0]).std() + 1e-6)
    torch.testing.assert_close(result.advantages[:4], expected)
    assert result.advantages[4] == 0


def test_a_question_with_a_single_response_is_refused_by_the_group_baselines():
    with pytest.raises(ValueError, match="single response"):
        get_advantage_estimator("grpo")(torch.ones(3), torch.tensor([0, 0, 1]), torch.zeros(3, dtype=torch.long))


# ----------------------------------------------------------------------------- QAE and F-GRPO


def _estimate(name, rewards, question_index, valid, options):
    return get_advantage_estimator(name)(rewards, question_index, None, options, valid=valid).advantages


@settings(max_examples=100, deadline=None, derandomize=True)
@given(grouped_rewards(), st.sampled_from([0.0, 0.25, 0.4, 0.5, 0.9, 1.0]), st.booleans())
def test_qae_matches_the_loop(problem, quantile, std_normalize):
    rewards, question_index, valid = problem
    if (torch.bincount(question_index) < 2).any():
        return  # the group estimators refuse a question with a single response
    actual = _estimate("qae", rewards, question_index, valid, QAEOptions(quantile, std_normalize))
    expected = reference_qae(rewards, question_index, valid, quantile, std_normalize)
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(grouped_rewards(), st.sampled_from([0.0, 0.5, 1.0, 2.0]), st.booleans())
def test_f_grpo_matches_the_loop(problem, gamma, std_normalize):
    rewards, question_index, valid = problem
    if (torch.bincount(question_index) < 2).any():
        return
    actual = _estimate("f_grpo", rewards, question_index, valid, FGRPOOptions(gamma, std_normalize))
    expected = reference_f_grpo(rewards, question_index, valid, gamma, std_normalize)
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-5)


def test_qae_two_regimes_by_hand():
    """K = 0.4, n = 5, 0/1 rewards: the baseline is 0 while p <= 1 - K (only successes move)
    and 1 above (only failures move); linear interpolation between the sorted rewards."""
    rows = torch.tensor([[1.0, 0, 0, 0, 0],   # p = 0.2: sorted 0 0 0 0 1, position 1.6 -> 0
                         [1.0, 1, 0, 0, 0],   # p = 0.4: position 1.6 between 0 and 0 -> 0
                         [1.0, 1, 1, 1, 0],   # p = 0.8: sorted 0 1 1 1 1 -> 1
                         [1.0, 1, 1, 0, 0]])  # p = 0.6: sorted 0 0 1 1 1, position 1.6 -> 0.6
    question_ids = torch.arange(4).repeat_interleave(5)
    advantages = _estimate("qae", rows.flatten(), question_ids, None, QAEOptions(std_normalize=False))
    expected = torch.tensor([[1.0, 0, 0, 0, 0], [1.0, 1, 0, 0, 0], [0.0, 0, 0, 0, -1],
                             [0.4, 0.4, 0.4, -0.6, -0.6]])
    torch.testing.assert_close(advantages.view(4, 5), expected)
    normalised = _estimate("qae", rows.flatten(), question_ids, None, QAEOptions())
    torch.testing.assert_close(normalised.view(4, 5)[0, 0], torch.tensor(1 / (0.2 ** 0.5 + 1e-6)))
    assert (advantages.view(4, 5)[:3] == 0).float().mean() == pytest.approx(11 / 15)  # mostly silent


def test_f_grpo_scales_grpo_by_the_focal_coefficient_by_hand():
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 0, 0.5, 0.5, 1, 0])  # p = 1/4, 3/4, 1/4 (0.5 is not right)
    question_ids = torch.arange(3).repeat_interleave(4)
    grpo = get_advantage_estimator("grpo")(rewards, question_ids).advantages
    for gamma in (0.0, 1.0, 2.0):
        focal = _estimate("f_grpo", rewards, question_ids, None, FGRPOOptions(gamma=gamma))
        coefficient = torch.tensor([0.75, 0.25, 0.75]).pow(gamma).repeat_interleave(4)
        torch.testing.assert_close(focal, grpo * coefficient)
    easy, hard = focal[4:8].abs().max(), focal[:4].abs().max()
    assert easy < hard  # the solved-most-of-the-time question moves the policy less


def test_qae_and_f_grpo_options_are_checked():
    with pytest.raises(ConfigError, match="algorithm.options.quantile"):
        QAEOptions(quantile=1.5).check("algorithm.options")
    with pytest.raises(ConfigError, match="algorithm.options.gamma"):
        FGRPOOptions(gamma=-1.0).check("algorithm.options")
