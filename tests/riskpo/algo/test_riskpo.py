"""RiskPO as the ICLR paper states it beside the release (docs/algorithm.md section 3a): one
test per row of the table, the tracked-quantile normalisation, and the presets."""

from __future__ import annotations

import pytest
import torch

from launch.config import compose_config, validate
from riskpo.algo import risk
from riskpo.algo.losses import (
    LossConfig,
    aggregate,
    importance_ratio,
    micro_batch_objective,
    policy_loss,
)
from riskpo.algo.registry import (
    AdvantageConfig,
    AdvantageState,
    get_advantage_estimator,
    riskpo_advantages,
)
from riskpo.algo.risk import QuantileTracker
from riskpo.algo.riskpo import riskpo_step

QA, QB = torch.tensor(1.0, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)


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
    loss, _ = policy_loss(new, old, advantages, mask, clip_low=0.5, clip_high=0.5, ratio_level="sequence",
                          aggregation="seq_mean_token_mean")
    loss.backward()
    # d/d logp_t of -s_i = -s_i / |y_i| for every token t of response i (GSPO's gradient), / 2 rows
    assert new.grad[0].tolist() == pytest.approx([-sequence[0, 0].item() / 3 / 2] * 3)


def test_loss_row_paper_mean_is_the_mean_over_papers_of_the_mean_over_responses():
    # 2 bundles x 2 questions x 3 responses; one response masked: its paper has 1 response
    rewards = torch.tensor([1.0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 1])
    question_ids = torch.arange(4).repeat_interleave(3)
    valid = torch.ones(12, dtype=torch.bool)
    valid[4] = False
    step = riskpo_step(rewards, question_ids, question_ids // 2, AdvantageConfig(pairing="index"),
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
    assert aggregate(per_response, mask, "paper_mean", weights=paper_weights).item() == pytest.approx(
        0.25 * 1 + 0.25 * 2 + 0.5 * 3)


def test_pairing_row_permutes_each_question_independently_and_reproducibly():
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 1, 0, 1])
    question_ids = torch.arange(2).repeat_interleave(5)
    estimator = get_advantage_estimator("riskpo")
    config = AdvantageConfig(pairing="permute", quantile_source="bundle", bundle_size=2)
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
    tracked = riskpo_advantages(rewards, question_ids, question_ids, quantiles=(1.0, 3.0))
    zeros = tracked[rewards == 0]
    assert torch.allclose(zeros, zeros[0].expand_as(zeros))
    unnormalised = -4.333333  # (1.5 * -5 + -2 / 0.6) / 2.5
    assert zeros[0].item() == pytest.approx(unnormalised / rewards.std().item(), rel=1e-5)
    own_bundle = riskpo_advantages(rewards, question_ids, question_ids)  # per-bundle: unchanged
    assert own_bundle[:8].abs().max() == 0  # a bundle of equal scores has no spread to rank


def test_presets_are_the_two_columns():
    paper = validate(compose_config(["algorithm=riskpo_paper"])).algorithm
    assert (paper.advantage_form, paper.w_mix, paper.alpha, paper.beta, paper.bundle_size) == (
        "paper", 0.5, 0.2, 0.8, 5)
    assert (paper.quantile_source, paper.tracker_schedule, paper.pairing) == ("tracked", "decreasing", "permute")
    assert (paper.loss.ratio, paper.loss.aggregation) == ("sequence", "paper_mean")
    release = validate(compose_config(["algorithm=riskpo_release"])).algorithm
    assert (release.advantage_form, release.w_mix, release.quantile_source, release.pairing) == (
        "release", 1.5, "bundle", "index")
    assert (release.loss.ratio, release.loss.aggregation, release.std_normalize) == ("token", "token_mean", True)
    mixed = validate(compose_config(["algorithm=riskpo_release", "algorithm.advantage_form=paper"]))
    assert mixed.algorithm.advantage_form == "paper" and mixed.algorithm.pairing == "index"


def test_clip_cov_detaches_and_kl_cov_penalises_the_selected_tokens():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    input_ids = torch.randint(0, 7, (3, 9), generator=generator)
    mask = torch.ones(3, 8, dtype=torch.bool)
    advantages = torch.tensor([3.0, -2.0, 1.0], dtype=torch.float64)
    old = torch.log_softmax(logits.detach()[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    plain, _ = micro_batch_objective(logits, input_ids, mask, advantages, old, LossConfig(),
                                     loss_units=24.0, temperature=1.0)
    every_token = LossConfig(entropy_control="clip_cov")
    every_token.clip_cov.fraction, every_token.clip_cov.low, every_token.clip_cov.high = 1.0, -1e9, 1e9
    detached, sums = micro_batch_objective(logits, input_ids, mask, advantages, old, every_token,
                                           loss_units=24.0, temperature=1.0,
                                           generator=torch.Generator().manual_seed(1))
    assert sums["cov_detached_fraction"] == 24  # every token chosen: no policy gradient left
    assert detached.item() == pytest.approx(plain.item())
    gradient = torch.autograd.grad(detached, logits)[0]
    assert gradient.abs().max() == 0
    penalised = LossConfig(entropy_control="kl_cov")
    with_penalty, _ = micro_batch_objective(logits, input_ids, mask, advantages, old - 0.5, penalised,
                                            loss_units=24.0, temperature=1.0)
    without, _ = micro_batch_objective(logits, input_ids, mask, advantages, old - 0.5, LossConfig(),
                                       loss_units=24.0, temperature=1.0)
    assert with_penalty.item() > without.item()  # |logp - old| > 0 on the chosen tokens
