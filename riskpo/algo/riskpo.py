"""RiskPO's advantage on one step's rewards (docs/algorithm.md sections 3-5): papers formed in
bundles, their scores weighted against tracked, per-bundle or mixed quantiles by the release's
or the paper's form, normalised, and given back to the responses. Registered as the "riskpo"
estimator by riskpo/algo/registry.py, which owns the options and the state across steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from riskpo.algo import risk
from riskpo.algo.bundles import (
    Papers,
    assign_credit,
    bundle_quantiles,
    bundle_score_std,
    form_papers,
)
from riskpo.algo.metrics import risk_measure_statistics, risk_region_statistics
from riskpo.algo.risk import QuantileTracker, gather, segment_counts


class RiskPOOptions(Protocol):
    """The options RiskPO reads (riskpo.algo.registry.AdvantageConfig declares them)."""

    alpha: float
    beta: float
    w_mix: float
    natural_baseline: bool
    mix_cvar: bool
    risk_seeking: bool
    risk_seeking_u: float
    std_normalize: bool
    credit: str
    pairing: str
    allow_surplus_responses: bool
    advantage_form: str
    quantile_source: str
    tracker_update: str


@dataclass(frozen=True)
class RiskPOStep:
    """Intermediate values of one RiskPO computation (for metrics and tests)."""

    advantages: torch.Tensor  # [N] float64
    papers: Papers
    paper_q_alpha: torch.Tensor  # [M] quantiles each paper was scored against
    paper_q_beta: torch.Tensor  # [M]
    paper_advantages: torch.Tensor  # [M] after std normalisation
    loss_weights: torch.Tensor  # [N] 1 / (M * responses in its paper); 0 when unpaired


def riskpo_step(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
                options: RiskPOOptions, *, valid: torch.Tensor | None = None,
                quantiles: tuple[float, float] | None = None,
                generator: torch.Generator | None = None, source: str | None = None) -> RiskPOStep:
    """RiskPO advantages against per-bundle quantiles, or against `quantiles` = (qa, qb) when
    given (as tracked values arrive; source "mix" averages them with each bundle's own).

    std_normalize divides by the spread of the scores the quantiles describe: the bundle's
    paper scores against the bundle's own quantiles; the step's pooled paper scores against
    tracked (or mixed) quantiles, so that within a step the same score gets the same weight
    whatever its bundle-mates scored.
    """
    papers = form_papers(rewards, question_ids, bundle_ids, valid, pairing=options.pairing,
                         generator=generator, allow_surplus=options.allow_surplus_responses)
    if quantiles is not None and float(quantiles[0]) > float(quantiles[1]):
        raise ValueError(f"quantiles must satisfy qa <= qb, got {quantiles}")
    return riskpo_from_papers(rewards, papers, options, valid,
                              source or ("bundle" if quantiles is None else "tracked"), quantiles)


def riskpo_from_papers(rewards: torch.Tensor, papers: Papers, options: RiskPOOptions,
                       valid: torch.Tensor | None, source: str,
                       quantiles: tuple[float, float] | None) -> RiskPOStep:
    """riskpo_step on papers already formed (source: bundle, tracked or mix)."""
    q_alpha, q_beta = _paper_quantiles(papers, options, source, quantiles)
    paper_advantages = risk.risk_advantage(
        papers.paper_scores, q_alpha, q_beta, alpha=options.alpha, beta=options.beta,
        w_mix=options.w_mix, natural_baseline=options.natural_baseline, mix_cvar=options.mix_cvar,
        risk_seeking=options.risk_seeking, risk_seeking_u=options.risk_seeking_u,
        form=options.advantage_form,
    )
    if options.std_normalize:
        paper_advantages = risk.std_normalize(paper_advantages, _score_spread(papers, source))
    advantages = assign_credit(paper_advantages, papers, rewards, valid, options.credit)
    return RiskPOStep(advantages, papers, q_alpha, q_beta, paper_advantages, _loss_weights(papers))


def _paper_quantiles(papers: Papers, options: RiskPOOptions, source: str,
                     given: tuple[float, float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """qa, qb per paper [M]: its bundle's ("bundle"), the given pair ("tracked"), or their mean."""
    scores = papers.paper_scores
    if source != "bundle":
        given_alpha, given_beta = (torch.as_tensor(q, dtype=torch.float64).expand_as(scores)
                                   for q in given)
        if source == "tracked":
            return given_alpha, given_beta
    bundle_q_alpha, bundle_q_beta = bundle_quantiles(papers, options.alpha, options.beta)
    q_alpha = gather(bundle_q_alpha, papers.paper_bundle)
    q_beta = gather(bundle_q_beta, papers.paper_bundle)
    if source == "mix":
        return (q_alpha + given_alpha) / 2, (q_beta + given_beta) / 2
    return q_alpha, q_beta


def _score_spread(papers: Papers, source: str) -> torch.Tensor:
    """[M] the std each paper's advantage is divided by (see riskpo_step)."""
    scores = papers.paper_scores
    if source == "bundle":
        return gather(bundle_score_std(papers), papers.paper_bundle)
    pooled = scores.std() if scores.numel() > 1 else scores.new_tensor(float("nan"))
    return pooled.expand_as(scores)


def _loss_weights(papers: Papers) -> torch.Tensor:
    """Per response, 1 / (papers x responses in its paper): the weights of the paper's loss,
    the mean over papers of the mean over each paper's responses."""
    num_papers = papers.paper_scores.numel()
    if num_papers == 0:
        return torch.zeros(papers.response_paper.numel(), dtype=torch.float64)
    paper_index = papers.response_paper.clamp(min=0)
    sizes = segment_counts(paper_index, num_papers, papers.paired).to(torch.float64)
    weights = 1.0 / (num_papers * gather(sizes.clamp(min=1), paper_index))
    return torch.where(papers.paired, weights, 0.0)


def tracked_quantiles(tracker: QuantileTracker, options: RiskPOOptions) -> tuple[float, float, bool]:
    """(qa, qb, crossed): the tracker's levels can cross under noise; qb = qa then."""
    q_alpha, q_beta = tracker.quantile(options.alpha), tracker.quantile(options.beta)
    return q_alpha, max(q_alpha, q_beta), q_alpha > q_beta


def riskpo_estimate(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
                    options: RiskPOOptions, tracker: QuantileTracker, valid: torch.Tensor,
                    generator: torch.Generator | None) -> tuple[RiskPOStep, dict[str, float]]:
    """One step of the estimator: papers, the tracker updated before or after the advantage
    (its first update sets it, and that step uses per-bundle quantiles), the advantages and
    their riskpo/* and risk/* metrics."""
    papers = form_papers(rewards, question_ids, bundle_ids, valid, pairing=options.pairing,
                         generator=generator, allow_surplus=options.allow_surplus_responses)
    updated = False
    if options.tracker_update == "before_advantage" or not tracker.initialized:
        tracker.update(papers.paper_scores)
        updated = True
    crossed, tracked = False, None
    source = options.quantile_source if tracker.initialized else "bundle"
    if source != "bundle":
        q_alpha, q_beta, crossed = tracked_quantiles(tracker, options)
        tracked = (q_alpha, q_beta)
    step = riskpo_from_papers(rewards, papers, options, valid, source, tracked)
    if not updated:
        tracker.update(papers.paper_scores)
    metrics = _riskpo_metrics(step, tracker, options, valid)
    metrics["riskpo/tracker_crossed"] = float(crossed)
    metrics["riskpo/tracker_step_size"] = tracker.step_size()
    return step, metrics


def _riskpo_metrics(step: RiskPOStep, tracker: QuantileTracker, options: RiskPOOptions,
                    valid: torch.Tensor) -> dict[str, float]:
    scores = step.papers.paper_scores
    num_valid = int(valid.sum())
    unpaired = num_valid - int(step.papers.paired.sum())
    nan = float("nan")
    metrics = {
        "riskpo/num_papers": float(scores.numel()),
        "riskpo/unpaired_fraction": unpaired / num_valid if num_valid else 0.0,
        "riskpo/q_alpha": step.paper_q_alpha.mean().item() if scores.numel() else nan,
        "riskpo/q_beta": step.paper_q_beta.mean().item() if scores.numel() else nan,
        "riskpo/tracked_q_alpha": _tracked_or_nan(tracker, options.alpha),
        "riskpo/tracked_q_beta": _tracked_or_nan(tracker, options.beta),
    }
    metrics.update(risk_measure_statistics(scores, options.alpha, options.beta, options.w_mix,
                                           options.advantage_form))
    metrics.update(risk_region_statistics(scores, step.paper_q_alpha, step.paper_q_beta))
    return metrics


def _tracked_or_nan(tracker: QuantileTracker, level: float) -> float:
    """The tracked quantile at `level`, NaN before the first update or off the tracker's grid
    (per-bundle quantiles may use levels 0 and 1)."""
    low, high = float(tracker.levels[0]), float(tracker.levels[-1])
    if not tracker.initialized or not low - 1e-9 <= level <= high + 1e-9:
        return float("nan")
    return tracker.quantile(level)

