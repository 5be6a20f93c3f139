"""RiskPO (riskpo/algo/estimators/riskpo.py): the worked example of docs/algorithm.md section 6,
the loop reference, invariants, the tracker's place in a step, and the ICLR paper beside the
release (section 3a): one test per row of the table, the tracked-quantile normalisation and the
presets."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_impl import reference_riskpo

from launch.config import compose_config, validate
from riskpo.algo import risk
from riskpo.algo.aggregation import get_aggregation
from riskpo.algo.estimators.riskpo import RiskPOOptions, riskpo_step
from riskpo.algo.ppo import importance_ratio, ppo_token_losses
from riskpo.algo.registry import AdvantageState, get_advantage_estimator
from riskpo.algo.risk import QuantileTracker
from riskpo.options import ConfigError

WORKED_REWARDS = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 1, 0, 1], [0, 0, 0, 0, 0],
                               [0, 1, 0, 0, 0], [1, 1, 0, 1, 1]], dtype=torch.float32)
# The release's options as conf/algorithm/riskpo_release.yaml states them (responses paired in
# index order, each bundle's own quantiles, the release's advantage normalised by the score std).
RELEASE = validate(compose_config(["algorithm=riskpo_release"])).algorithm.options
QA, QB = torch.tensor(1.0, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)


def release_advantages(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
                       quantiles: tuple[float, float] | None = None, **changes) -> torch.Tensor:
    """RiskPO advantages [N] (rewards' dtype) with the release's options changed by `changes`:
    against each bundle's own quantiles, or against `quantiles` = (qa, qb) as tracked values
    arrive (std_normalize then divides by the spread of all the papers given)."""
    options = dataclasses.replace(RELEASE, **changes)
    options.check("test")
    return riskpo_step(rewards, question_ids, bundle_ids, options, quantiles=quantiles).advantages.to(rewards.dtype)


def _worked(credit: str) -> torch.Tensor:
    """Advantages of docs/algorithm.md section 6 as [question, response]."""
    question_ids = torch.arange(5).repeat_interleave(5)
    advantages = release_advantages(WORKED_REWARDS.flatten(), question_ids,
                                    torch.zeros(25, dtype=torch.long), beta=0.9, credit=credit)
    return advantages.view(5, 5)


def test_worked_example_intermediates():
    options = dataclasses.replace(RELEASE, beta=0.9)
    step = riskpo_step(WORKED_REWARDS.flatten(), torch.arange(5).repeat_interleave(5),
                       torch.zeros(25, dtype=torch.long), options)
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
    config = RiskPOOptions(
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


def _reference_options(config: RiskPOOptions) -> dict:
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
def test_step_matches_reference_with_explicit_quantiles(problem, q_alpha, width):
    rewards, question_ids, bundle_ids, _, config, _ = problem
    if config.allow_surplus_responses:
        return
    options = dict(alpha=config.alpha, beta=config.beta, w_mix=config.w_mix,
                   natural_baseline=config.natural_baseline, mix_cvar=config.mix_cvar,
                   std_normalize=config.std_normalize, credit=config.credit)
    for quantiles in (None, (q_alpha, q_alpha + width)):
        actual = release_advantages(rewards, question_ids, bundle_ids, quantiles=quantiles, **options)
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
    actual = release_advantages(rewards, question_ids, question_ids, natural_baseline=natural_baseline)
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
    base = release_advantages(rewards, question_ids, bundle_ids, credit=credit)
    shifted = release_advantages(rewards + shift, question_ids, bundle_ids, credit=credit)
    torch.testing.assert_close(shifted, base, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [0.25, 3.0, 100.0])
def test_scale_invariance_with_std_normalize(scale):
    rewards, question_ids, bundle_ids = _random_batch(2)
    base = release_advantages(rewards, question_ids, bundle_ids)
    scaled = release_advantages(rewards * scale, question_ids, bundle_ids)
    torch.testing.assert_close(scaled, base, atol=1e-4, rtol=1e-4)


def test_explicit_quantiles_with_zero_std_never_divide_by_tiny():
    rewards = torch.zeros(10)
    question_ids = torch.arange(2).repeat_interleave(5)
    advantages = release_advantages(rewards, question_ids, torch.zeros(10, dtype=torch.long),
                                   quantiles=(1.0, 2.0), mix_cvar=False)
    # paper score 0 < qa = 1: g = qa - qb = -1, A_rvar = -1/0.6, std 0 -> divisor 1
    torch.testing.assert_close(advantages, torch.full((10,), -1 / 0.6))


def test_explicit_quantiles_out_of_order_are_an_error():
    rewards, question_ids, bundle_ids = _random_batch(3)
    with pytest.raises(ValueError, match="qa <= qb"):
        release_advantages(rewards, question_ids, bundle_ids, quantiles=(2.0, 1.0))


# ----------------------------------------------------------------------------- estimator behaviour


def test_masked_rows_do_not_change_the_others():
    rewards, question_ids, bundle_ids = _random_batch(4)
    valid = torch.ones_like(rewards, dtype=torch.bool)
    valid[[3, 17, 40]] = False
    config = RiskPOOptions(pairing="index", quantile_source="bundle", credit="std")
    masked = riskpo_step(rewards, question_ids, bundle_ids, config, valid=valid).advantages
    subset_config = RiskPOOptions(pairing="index", quantile_source="bundle", credit="std",
                                    allow_surplus_responses=True)
    subset = riskpo_step(rewards[valid], question_ids[valid], bundle_ids[valid], subset_config).advantages
    torch.testing.assert_close(masked[valid], subset)
    assert (masked[~valid] == 0).all()


def test_tracker_update_after_advantage_uses_the_previous_state():
    rewards, question_ids, bundle_ids = _random_batch(5)
    config = RiskPOOptions(pairing="index", tracker_update="after_advantage")
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
    config = RiskPOOptions(pairing="index")
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
    estimator(rewards, question_ids, bundle_ids, RiskPOOptions(), state)
    restored = AdvantageState()
    restored.load_state_dict(state.state_dict())
    first = estimator(1 - rewards, question_ids, bundle_ids, RiskPOOptions(), state)
    second = estimator(1 - rewards, question_ids, bundle_ids, RiskPOOptions(), restored)
    assert torch.equal(first.advantages, second.advantages)


def test_riskpo_metrics_report_regions_risk_and_all_wrong_signal():
    question_ids = torch.arange(5).repeat_interleave(5)
    config = dataclasses.replace(RELEASE, beta=0.9)
    result = get_advantage_estimator("riskpo")(WORKED_REWARDS.flatten(), question_ids,
                                               torch.zeros(25, dtype=torch.long), config)
    metrics = result.metrics
    assert metrics["risk/below_qa_fraction"] == 0.0
    assert metrics["risk/between_fraction"] == pytest.approx(1.0)
    assert metrics["risk/cvar"] == pytest.approx(2.0) and metrics["riskpo/q_alpha"] == pytest.approx(2.0)
    assert metrics["adv/all_wrong_nonzero_fraction"] == 1.0
    grpo = get_advantage_estimator("grpo")(WORKED_REWARDS.flatten(), question_ids, question_ids)
    assert grpo.metrics["adv/all_wrong_nonzero_fraction"] == 0.0




def test_advantage_row_paper_form_and_release_form_by_hand():
    scores = torch.tensor([0.0, 0.5, 2.0, 4.0], dtype=torch.float64)
    paper = risk.paper_advantage(scores, QA, QB, w_mix=0.5)
    # -(1 + w)(qa - S)+ + clip(S, qa, qb) - qb
    assert paper.tolist() == pytest.approx([-1.5 - 2.0, -0.75 - 2.0, -1.0, 0.0])
    release = risk.risk_advantage(scores, QA, QB, alpha=0.2, beta=0.8, w_mix=1.5)
    a_cvar = -(QA - scores).clamp(min=0) / 0.2
    a_rvar = (scores.clamp(1.0, 3.0) - 3.0) / 0.6
    torch.testing.assert_close(release, (1.5 * a_cvar + a_rvar) / 2.5)


@pytest.mark.parametrize(("form", "w", "ratio"), [("paper", 0.5, 1.5), ("release", 1.5, 4.5)])
def test_slope_below_qa_against_inside_the_band(form, w, ratio):
    low = torch.tensor([0.0, 0.5], dtype=torch.float64)
    band = torch.tensor([1.5, 2.0], dtype=torch.float64)
    weights = [risk.risk_advantage(s, QA, QB, alpha=0.2, beta=0.8, w_mix=w, form=form) for s in (low, band)]
    slopes = [(a[1] - a[0]).item() / 0.5 for a in (weights[0], weights[1])]
    assert slopes[0] / slopes[1] == pytest.approx(ratio)


def test_importance_ratio_row_sequence_level_is_length_normalised():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]], dtype=torch.float64)
    old = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    token = importance_ratio(logprobs, old, mask, "token")
    torch.testing.assert_close(token, torch.exp(logprobs - old))
    sequence = importance_ratio(logprobs, old, mask, "sequence")
    # (pi(y)/pi_old(y))^(1/|y|): row 0 log ratio (0.5 + 0 - 1) / 3, row 1 (0.5 + 0.5) / 2
    assert sequence[0].tolist() == pytest.approx([torch.exp(torch.tensor(-0.5 / 3)).item()] * 3)
    assert sequence[1, :2].tolist() == pytest.approx([torch.exp(torch.tensor(0.5)).item()] * 2)
    advantages = torch.tensor([1.0, 1.0], dtype=torch.float64)
    new = logprobs.clone().requires_grad_(True)
    token_loss, _ = ppo_token_losses(new, old, advantages, mask, clip_low=0.5, clip_high=0.5,
                                     ratio_level="sequence")
    get_aggregation("seq_mean_token_mean").reduce(token_loss, mask).backward()
    # d/d logp_t of -s_i = -s_i / |y_i| for every token t of response i (GSPO's gradient), / 2 rows
    assert new.grad[0].tolist() == pytest.approx([-sequence[0, 0].item() / 3 / 2] * 3)


def test_loss_row_paper_mean_is_the_mean_over_papers_of_the_mean_over_responses():
    # 2 bundles x 2 questions x 3 responses; one response masked: its paper has 1 response
    rewards = torch.tensor([1.0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 1])
    question_ids = torch.arange(4).repeat_interleave(3)
    valid = torch.ones(12, dtype=torch.bool)
    valid[4] = False
    step = riskpo_step(rewards, question_ids, question_ids // 2, RiskPOOptions(pairing="index"),
                       valid=valid)
    papers = step.papers
    assert papers.papers_per_bundle.tolist() == [2, 3]  # q1 has 2 valid responses
    weights = step.loss_weights
    assert weights.sum().item() == pytest.approx(1.0)
    assert (weights[~papers.paired] == 0).all()
    assert weights[papers.paired].tolist() == pytest.approx([1 / (5 * 2)] * 10)
    per_response = torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.float64)
    mask = torch.ones(4, 1, dtype=torch.bool)
    paper_weights = torch.tensor([0.25, 0.25, 0.5, 0.0], dtype=torch.float64)
    assert get_aggregation("paper_mean").reduce(per_response, mask, paper_weights).item() == pytest.approx(
        0.25 * 1 + 0.25 * 2 + 0.5 * 3)


def test_pairing_row_permutes_each_question_independently_and_reproducibly():
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 1, 0, 1])
    question_ids = torch.arange(2).repeat_interleave(5)
    estimator = get_advantage_estimator("riskpo")
    config = RiskPOOptions(pairing="permute", quantile_source="bundle", bundle_size=2)
    first = estimator(rewards, question_ids, None, config, AdvantageState(seed=3)).advantages
    again = estimator(rewards, question_ids, None, config, AdvantageState(seed=3)).advantages
    other = [estimator(rewards, question_ids, None, config, AdvantageState(seed=s)).advantages
             for s in range(8)]
    torch.testing.assert_close(first, again)
    assert any(not torch.equal(first, o) for o in other)  # the pairing is drawn, not index order


def test_quantile_row_decreasing_step_size_and_exact_resume():
    tracker = QuantileTracker(lr=0.1, schedule="decreasing")
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 6, (16,), generator=generator).double() for _ in range(6)]
    sizes = []
    for scores in batches[:3]:
        sizes.append(tracker.step_size())
        tracker.update(scores)
    assert sizes == pytest.approx([0.1, 0.1, 0.1 * 2 ** -0.6])  # warm start, then t = 1, 2
    resumed = QuantileTracker()
    resumed.load_state_dict(tracker.state_dict())
    for scores in batches[3:]:
        tracker.update(scores)
        resumed.update(scores)
    assert resumed.schedule == "decreasing" and torch.equal(resumed.values, tracker.values)
    assert tracker.step_size() == pytest.approx(0.1 * 6 ** -0.6)  # warm start + 5 steps taken


def test_tracked_quantiles_give_the_same_score_the_same_advantage_in_a_step():
    """The audit's input: a bundle of 8 papers all scoring 0 beside one where a single paper
    scores 1. With each bundle's own std (the old defect) the zeros got -4.333 in the first
    bundle and -12.256 in the second; against tracked quantiles the step's pooled spread
    divides every paper alike."""
    rewards = torch.zeros(16)
    rewards[8] = 1.0
    question_ids = torch.arange(2).repeat_interleave(8)
    tracked = release_advantages(rewards, question_ids, question_ids, quantiles=(1.0, 3.0))
    zeros = tracked[rewards == 0]
    assert torch.allclose(zeros, zeros[0].expand_as(zeros))
    unnormalised = -4.333333  # (1.5 * -5 + -2 / 0.6) / 2.5
    assert zeros[0].item() == pytest.approx(unnormalised / rewards.std().item(), rel=1e-5)
    own_bundle = release_advantages(rewards, question_ids, question_ids)  # per-bundle: unchanged
    assert own_bundle[:8].abs().max() == 0  # a bundle of equal scores has no spread to rank


def test_presets_are_the_two_columns():
    run = validate(compose_config(["algorithm=riskpo_paper"])).algorithm
    paper = run.options
    assert paper == RiskPOOptions() == validate(compose_config(["algorithm=riskpo"])).algorithm.options
    assert (paper.advantage_form, paper.w_mix, paper.alpha, paper.beta, paper.bundle_size) == (
        "paper", 0.5, 0.2, 0.8, 5)
    assert (paper.quantile_source, paper.tracker_schedule, paper.pairing) == ("tracked", "decreasing", "permute")
    assert not paper.std_normalize
    assert (run.loss.ratio, run.loss.aggregation) == ("sequence", "paper_mean")
    release = validate(compose_config(["algorithm=riskpo_release"])).algorithm
    assert (release.options.advantage_form, release.options.w_mix, release.options.quantile_source,
            release.options.pairing) == ("release", 1.5, "bundle", "index")
    assert (release.loss.ratio, release.loss.aggregation, release.options.std_normalize) == (
        "token", "token_mean", True)
    mixed = validate(compose_config(["algorithm=riskpo_release", "algorithm.options.advantage_form=paper"]))
    assert mixed.algorithm.options.advantage_form == "paper" and mixed.algorithm.options.pairing == "index"


def test_the_options_are_checked_naming_the_key():
    with pytest.raises(ConfigError, match="algorithm.options.credit"):
        RiskPOOptions(credit="median").check("algorithm.options")
    with pytest.raises(ConfigError, match="divides by alpha"):
        RiskPOOptions(alpha=0.0, advantage_form="release").check("algorithm.options")
    RiskPOOptions(alpha=0.0, mix_cvar=False, quantile_source="bundle").check("algorithm.options")  # RVaR_{0:b}
    with pytest.raises(ConfigError, match="tracker's grid"):
        RiskPOOptions(alpha=0.01).check("algorithm.options")
    with pytest.raises(ConfigError) as error:
        RiskPOOptions(drop_last_bundle=True, ragged_last_bundle=True).check("algorithm.options")
    assert error.value.key == "algorithm.options.drop_last_bundle"
