"""RiskPO advantages against docs/algorithm.md section 6 and the loop reference; invariants; the estimator registry."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_impl import reference_group_baseline, reference_riskpo

from riskpo.algo import risk
from riskpo.algo.registry import (
    ADVANTAGE_ESTIMATORS,
    AdvantageConfig,
    AdvantageState,
    get_advantage_estimator,
    register_advantage,
    riskpo_advantages,
    riskpo_step,
)
from riskpo.options import ConfigError

WORKED_REWARDS = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 0, 1], [0, 0, 0, 0, 0],
                               [0, 1, 0, 0, 0], [1, 1, 0, 1, 1]], dtype=torch.float32)


def _worked(credit: str) -> torch.Tensor:
    """Advantages of docs/algorithm.md section 6 as [question, response]."""
    question_ids = torch.arange(5).repeat_interleave(5)
    advantages = riskpo_advantages(WORKED_REWARDS.flatten(), question_ids,
                                   torch.zeros(25, dtype=torch.long), beta=0.9, credit=credit)
    return advantages.view(5, 5)


def test_worked_example_intermediates():
    config = AdvantageConfig(beta=0.9, pairing="index", quantile_source="bundle")
    step = riskpo_step(WORKED_REWARDS.flatten(), torch.arange(5).repeat_interleave(5),
                       torch.zeros(25, dtype=torch.long), config)
    assert step.papers.paper_scores.tolist() == [3, 3, 2, 2, 3]
    assert step.paper_q_alpha[0].item() == pytest.approx(2.0)
    assert step.paper_q_beta[0].item() == pytest.approx(3.0)
    assert step.papers.paper_scores.std().item() == pytest.approx(0.5477, abs=1e-4)
    unnormalised = risk.mvar_advantage(torch.tensor(2.0), torch.tensor(2.0), torch.tensor(3.0), 0.2, 0.9, 1.5)
    assert unnormalised.item() == pytest.approx(-0.5714, abs=1e-4)
    assert risk.rvar_advantage(torch.tensor(2.0), torch.tensor(2.0), torch.tensor(3.0), 0.2, 0.9).item() == \
        pytest.approx(-1.4286, abs=1e-4)
    assert step.paper_advantages.tolist() == pytest.approx([0, 0, -1.0433, -1.0433, 0], abs=1e-4)


@pytest.mark.parametrize(("credit", "paper_3"), [
    ("uniform", [-1.0433] * 5),
    ("std", [-1.043, -1.905, -1.043, -2.333, -2.333]),
    ("sum_mean", [0.0, 0.696, 0.0, -0.348, -1.391]),
])
def test_worked_example_every_credit_mode(credit, paper_3):
    advantages = _worked(credit)
    assert advantages[:, 2].tolist() == pytest.approx(paper_3, abs=1e-3)
    assert (advantages[:, [0, 1, 4]] == 0).all()  # S = 3 papers: A = 0
    if credit != "sum_mean":  # the all-wrong question Q3 still gets a signal
        assert (advantages[2, 2:4] < 0).all()


# ----------------------------------------------------------------------------- property tests


@st.composite
def riskpo_problems(draw):
    num_questions = draw(st.integers(1, 9))
    bundle_size = draw(st.integers(1, 4))
    surplus = draw(st.booleans())
    counts = [draw(st.integers(2, 5))] * num_questions
    if surplus:
        counts = [draw(st.integers(2, 5)) for _ in range(num_questions)]
    kind = draw(st.sampled_from(["binary", "signed", "continuous"]))
    total = sum(counts)
    if kind == "binary":
        rewards = draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=total, max_size=total))
    elif kind == "signed":
        rewards = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=total, max_size=total))
    else:
        rewards = draw(st.lists(st.floats(-3, 3, width=32), min_size=total, max_size=total))
    question_ids = torch.repeat_interleave(torch.arange(num_questions) * 3 + 7, torch.tensor(counts))
    rows = torch.randperm(total, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    valid = torch.tensor(draw(st.lists(st.booleans(), min_size=total, max_size=total)))
    valid |= draw(st.booleans())  # half the cases: nothing masked
    alpha = draw(st.sampled_from([0.05, 0.2, 0.3]))
    config = AdvantageConfig(
        alpha=alpha, beta=draw(st.sampled_from([0.6, 0.8, 0.95])), w_mix=draw(st.sampled_from([0.0, 1.5])),
        natural_baseline=draw(st.booleans()), mix_cvar=draw(st.booleans()),
        risk_seeking=draw(st.booleans()), std_normalize=draw(st.booleans()),
        credit=draw(st.sampled_from(["uniform", "std", "sum_mean"])),
        pairing=draw(st.sampled_from(["index", "permute"])),
        quantile_source=draw(st.sampled_from(["bundle", "tracked", "mix"])),
        advantage_form=draw(st.sampled_from(["release", "paper"])),
        allow_surplus_responses=surplus,
    )
    config.check("algorithm")
    rewards = torch.tensor(rewards, dtype=torch.float32)[rows]
    question_ids = question_ids[rows]
    state = AdvantageState(seed=draw(st.integers(0, 5)))
    return rewards, question_ids, (question_ids - 7) // 3 // bundle_size, valid, config, state


def _reference_options(config: AdvantageConfig) -> dict:
    keys = ("alpha", "beta", "w_mix", "natural_baseline", "mix_cvar", "risk_seeking",
            "risk_seeking_u", "std_normalize", "credit", "quantile_source", "pairing", "advantage_form")
    return {key: getattr(config, key) for key in keys}


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(riskpo_problems())
def test_estimator_matches_loop_reference(problem):
    rewards, question_ids, bundle_ids, valid, config, state = problem
    result = get_advantage_estimator("riskpo")(rewards, question_ids, bundle_ids, config, state, valid)
    tracker = state.quantile_tracker
    quantiles = None
    if config.quantile_source != "bundle" and tracker.initialized:
        quantiles = (tracker.quantile(config.alpha), tracker.quantile(config.beta))
    expected = reference_riskpo(
        rewards, question_ids, bundle_ids, valid=valid, quantiles=quantiles,
        generator=torch.Generator().manual_seed(state.seed * 1_000_003), **_reference_options(config),
    )
    assert torch.isfinite(result.advantages).all()
    torch.testing.assert_close(result.advantages.double(), expected, atol=1e-4, rtol=1e-4)
    assert (result.advantages[~valid] == 0).all()


@settings(max_examples=30, deadline=None, derandomize=True)
@given(riskpo_problems(), st.floats(-2, 2), st.floats(0.0, 1.0))
def test_public_function_matches_reference_with_explicit_quantiles(problem, q_alpha, width):
    rewards, question_ids, bundle_ids, _, config, _ = problem
    if config.allow_surplus_responses:
        return
    options = dict(alpha=config.alpha, beta=config.beta, w_mix=config.w_mix,
                   natural_baseline=config.natural_baseline, mix_cvar=config.mix_cvar,
                   std_normalize=config.std_normalize, credit=config.credit)
    for quantiles in (None, (q_alpha, q_alpha + width)):
        actual = riskpo_advantages(rewards, question_ids, bundle_ids, quantiles=quantiles, **options)
        expected = reference_riskpo(rewards, question_ids, bundle_ids, quantiles=quantiles,
                                    quantile_source="tracked", **options)
        torch.testing.assert_close(actual.double(), expected, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- invariants


def _random_batch(seed: int, num_questions: int = 12, n: int = 6, bundle_size: int = 5):
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 2, (num_questions * n,), generator=generator).float()
    question_ids = torch.arange(num_questions).repeat_interleave(n)
    return rewards, question_ids, question_ids // bundle_size  # last bundle ragged (2 questions)


@pytest.mark.parametrize("natural_baseline", [True, False])
def test_bundle_size_one_is_per_question_riskpo(natural_baseline):
    rewards, question_ids, _ = _random_batch(0)
    rewards = rewards + 0.1 * torch.arange(rewards.numel()) % 3  # varied continuous scores
    actual = riskpo_advantages(rewards, question_ids, question_ids, natural_baseline=natural_baseline)
    for question in range(12):
        own = rewards[question_ids == question].double()
        q_alpha, q_beta = torch.quantile(own, 0.2), torch.quantile(own, 0.8)
        expected = risk.mvar_advantage(own, q_alpha, q_beta, 0.2, 0.8, 1.5, natural_baseline)
        expected = risk.std_normalize(expected, own.std())
        torch.testing.assert_close(actual[question_ids == question].double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("credit", ["uniform", "std", "sum_mean"])
@pytest.mark.parametrize("shift", [-3.0, 0.5, 10.0])
def test_shift_invariance(credit, shift):
    rewards, question_ids, bundle_ids = _random_batch(1)
    base = riskpo_advantages(rewards, question_ids, bundle_ids, credit=credit)
    shifted = riskpo_advantages(rewards + shift, question_ids, bundle_ids, credit=credit)
    torch.testing.assert_close(shifted, base, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [0.25, 3.0, 100.0])
def test_scale_invariance_with_std_normalize(scale):
    rewards, question_ids, bundle_ids = _random_batch(2)
    base = riskpo_advantages(rewards, question_ids, bundle_ids)
    scaled = riskpo_advantages(rewards * scale, question_ids, bundle_ids)
    torch.testing.assert_close(scaled, base, atol=1e-4, rtol=1e-4)


GROUP_RELATIVE = sorted(name for name, e in ADVANTAGE_ESTIMATORS.items() if e.groups != "none")


@pytest.mark.parametrize("name", GROUP_RELATIVE)
@pytest.mark.parametrize("credit", ["uniform", "std", "sum_mean"])
def test_all_equal_rewards_give_zero_advantage_and_no_nan(name, credit):
    question_ids = torch.arange(10).repeat_interleave(4)
    for value in (0.0, 1.0, -1.0):
        rewards = torch.full((40,), value)
        config = AdvantageConfig(credit=credit)
        result = get_advantage_estimator(name)(rewards, question_ids, question_ids // 5, config)
        assert (result.advantages == 0).all()
        assert all(not math.isinf(v) for v in result.metrics.values())


def test_per_sample_controls_push_every_wrong_answer_down():
    """NSR and W-REINFORCE need no group: all-wrong groups still get -1 (that is the point)."""
    question_ids = torch.arange(4).repeat_interleave(2)
    rewards = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    nsr = get_advantage_estimator("nsr")(rewards, question_ids).advantages
    assert nsr.tolist() == [-1.0, -1.0, 0.0, -1.0, 0.0, 0.0, -1.0, 0.0]
    weighted = get_advantage_estimator("w_reinforce")(rewards, question_ids).advantages
    torch.testing.assert_close(weighted, torch.where(rewards > 0, 0.1, -1.0).to(weighted.dtype))


def test_explicit_quantiles_with_zero_std_never_divide_by_tiny():
    rewards = torch.zeros(10)
    question_ids = torch.arange(2).repeat_interleave(5)
    advantages = riskpo_advantages(rewards, question_ids, torch.zeros(10, dtype=torch.long),
                                   quantiles=(1.0, 2.0), mix_cvar=False)
    # paper score 0 < qa = 1: g = qa - qb = -1, A_rvar = -1/0.6, std 0 -> divisor 1
    torch.testing.assert_close(advantages, torch.full((10,), -1 / 0.6))


def test_explicit_quantiles_out_of_order_are_an_error():
    rewards, question_ids, bundle_ids = _random_batch(3)
    with pytest.raises(ValueError, match="qa <= qb"):
        riskpo_advantages(rewards, question_ids, bundle_ids, quantiles=(2.0, 1.0))


# ----------------------------------------------------------------------------- estimator behaviour


def test_masked_rows_do_not_change_the_others():
    rewards, question_ids, bundle_ids = _random_batch(4)
    valid = torch.ones_like(rewards, dtype=torch.bool)
    valid[[3, 17, 40]] = False
    config = AdvantageConfig(pairing="index", quantile_source="bundle", credit="std")
    masked = riskpo_step(rewards, question_ids, bundle_ids, config, valid=valid).advantages
    subset_config = AdvantageConfig(pairing="index", quantile_source="bundle", credit="std",
                                    allow_surplus_responses=True)
    subset = riskpo_step(rewards[valid], question_ids[valid], bundle_ids[valid], subset_config).advantages
    torch.testing.assert_close(masked[valid], subset)
    assert (masked[~valid] == 0).all()


def test_tracker_update_after_advantage_uses_the_previous_state():
    rewards, question_ids, bundle_ids = _random_batch(5)
    config = AdvantageConfig(pairing="index", tracker_update="after_advantage")
    state = AdvantageState()
    estimator = get_advantage_estimator("riskpo")
    estimator(rewards, question_ids, bundle_ids, config, state)
    tracker = state.quantile_tracker
    previous = (tracker.quantile(0.2), tracker.quantile(0.8))
    snapshot = tracker.values.clone()
    second = estimator(1 - rewards, question_ids, bundle_ids, config, state)
    expected = riskpo_step(1 - rewards, question_ids, bundle_ids, config, quantiles=previous)
    torch.testing.assert_close(second.advantages, expected.advantages.float())
    assert not torch.equal(tracker.values, snapshot)  # updated after use
    assert state.step == 2 and tracker.num_updates == 2


def test_tracker_update_before_advantage_uses_this_steps_update():
    rewards, question_ids, bundle_ids = _random_batch(6)
    config = AdvantageConfig(pairing="index")
    state = AdvantageState()
    estimator = get_advantage_estimator("riskpo")
    estimator(rewards, question_ids, bundle_ids, config, state)
    second = estimator(1 - rewards, question_ids, bundle_ids, config, state)
    tracker = state.quantile_tracker
    expected = riskpo_step(1 - rewards, question_ids, bundle_ids, config,
                           quantiles=(tracker.quantile(0.2), tracker.quantile(0.8)))
    torch.testing.assert_close(second.advantages, expected.advantages.float())
    assert second.metrics["riskpo/tracked_q_alpha"] == tracker.quantile(0.2)


def test_state_dict_round_trip_reproduces_the_next_step():
    rewards, question_ids, bundle_ids = _random_batch(7)
    estimator = get_advantage_estimator("riskpo")
    state = AdvantageState()
    estimator(rewards, question_ids, bundle_ids, AdvantageConfig(), state)
    restored = AdvantageState()
    restored.load_state_dict(state.state_dict())
    first = estimator(1 - rewards, question_ids, bundle_ids, AdvantageConfig(), state)
    second = estimator(1 - rewards, question_ids, bundle_ids, AdvantageConfig(), restored)
    assert torch.equal(first.advantages, second.advantages)


def test_riskpo_metrics_report_regions_risk_and_all_wrong_signal():
    question_ids = torch.arange(5).repeat_interleave(5)
    config = AdvantageConfig(beta=0.9, pairing="index", quantile_source="bundle")
    result = get_advantage_estimator("riskpo")(WORKED_REWARDS.flatten(), question_ids,
                                               torch.zeros(25, dtype=torch.long), config)
    metrics = result.metrics
    assert metrics["risk/below_qa_fraction"] == 0.0
    assert metrics["risk/between_fraction"] == pytest.approx(1.0)
    assert metrics["risk/cvar"] == pytest.approx(2.0) and metrics["riskpo/q_alpha"] == pytest.approx(2.0)
    assert metrics["adv/all_wrong_nonzero_fraction"] == 1.0
    grpo = get_advantage_estimator("grpo")(WORKED_REWARDS.flatten(), question_ids, question_ids)
    assert grpo.metrics["adv/all_wrong_nonzero_fraction"] == 0.0


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
    result = get_advantage_estimator(name)(rewards, question_ids, question_ids, valid=valid)
    expected = reference_group_baseline(rewards, question_ids, valid, name, std_normalize=True)
    torch.testing.assert_close(result.advantages.double(), expected, atol=1e-5, rtol=1e-5)


def test_reinforce_baseline_uses_the_batch_mean_and_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 5.0])
    valid = torch.tensor([True, True, True, True, False])
    question_ids = torch.tensor([0, 0, 1, 1, 1])
    result = get_advantage_estimator("reinforce_baseline")(rewards, question_ids, question_ids, valid=valid)
    expected = (torch.tensor([1.0, 0, 0, 0]) - 0.25) / (torch.tensor([1.0, 0, 0, 0]).std() + 1e-6)
    torch.testing.assert_close(result.advantages[:4], expected)
    assert result.advantages[4] == 0


def test_registry_errors():
    with pytest.raises(ConfigError, match="'ppo' is not a known advantage estimator"):
        get_advantage_estimator("ppo")
    with pytest.raises(ValueError, match="registered twice"):
        register_advantage("grpo")(lambda *args: None)
    with pytest.raises(ConfigError, match="algorithm.credit"):
        AdvantageConfig(credit="median").check("algorithm")
    with pytest.raises(ConfigError, match="divides by alpha"):
        AdvantageConfig(alpha=0.0).check("algorithm")
    AdvantageConfig(alpha=0.0, mix_cvar=False, quantile_source="bundle").check("algorithm")  # RVaR_{0:b}
    with pytest.raises(ConfigError, match="tracker's grid"):
        AdvantageConfig(alpha=0.01).check("algorithm")
    with pytest.raises(ValueError, match="single response"):
        get_advantage_estimator("grpo")(torch.ones(3), torch.tensor([0, 0, 1]), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("name", sorted(ADVANTAGE_ESTIMATORS))
def test_a_non_finite_reward_in_a_valid_row_is_an_error_for_every_estimator(name):
    """One rule for every registered estimator: a NaN or infinite reward in a valid row is a
    ValueError naming the row, never NaN advantages; masked rows may hold anything."""
    estimator = get_advantage_estimator(name)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="row 1 .*finite"):
            estimator(torch.tensor([1.0, bad]), torch.tensor([0, 0]), torch.tensor([0, 0]))
    rewards = torch.tensor([1.0, 0.0, float("nan"), 1.0, 0.0, 1.0])
    valid = torch.tensor([True, True, False, True, True, True])
    question_ids = torch.tensor([0, 0, 0, 1, 1, 1])
    result = estimator(rewards, question_ids, None, AdvantageConfig(bundle_size=1, quantile_source="bundle"),
                       AdvantageState(), valid)
    assert torch.isfinite(result.advantages).all() and result.advantages[2] == 0
