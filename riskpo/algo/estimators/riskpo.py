"""RiskPO (arXiv 2510.00911; docs/algorithm.md sections 3-5) as one estimator: its options
(`algorithm.options.*`, whose defaults are the ICLR paper's column of section 3a), one step's
computation (papers formed in bundles, their scores weighted against tracked, per-bundle or
mixed quantiles by the release's or the paper's form, normalised, given back to the responses),
its riskpo/* and risk/* metrics, and its registration. Its building blocks: risk.py (risk
measures, the quantile tracker) and bundles.py (papers and credit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from riskpo.algo import risk
from riskpo.algo.bundles import (
    CREDITS,
    PAIRINGS,
    Papers,
    assign_credit,
    bundle_quantiles,
    bundle_score_std,
    form_papers,
)
from riskpo.algo.metrics import risk_measure_statistics, risk_region_statistics
from riskpo.algo.registry import (
    LOSS_WEIGHTS,
    AdvantageResult,
    AdvantageState,
    register_estimator,
)
from riskpo.algo.risk import (
    ADVANTAGE_FORMS,
    TRACKER_LEVELS,
    TRACKER_SCHEDULES,
    QuantileTracker,
    gather,
    segment_counts,
)
from riskpo.options import one_of, require

QUANTILE_SOURCES = ("tracked", "bundle", "mix")
TRACKER_UPDATES = ("before_advantage", "after_advantage")


@dataclass
class RiskPOOptions:
    """RiskPO's options (`algorithm.options.*`). The defaults are RiskPO as the ICLR 2026 paper
    states it (docs/algorithm.md section 3a, `algorithm=riskpo_paper`); `riskpo_release` states
    what the authors' released code changes.

    pairing "permute": a seeded random order per question, "index": the release's order;
    bundle_size with drop_last_bundle / ragged_last_bundle when the prompts of a step do not
    split into bundles; tracker_update: when the tracker takes step t's scores
    ("before_advantage" = step t's advantage uses the tracker after its step-t update, the
    paper; "after_advantage" = it uses the state after step t-1).
    """

    # --- the advantage of a paper with score S against quantiles qa, qb (sections 2-3)
    alpha: float = 0.2  # lower quantile level a
    beta: float = 0.8  # upper quantile level b
    w_mix: float = 0.5  # w: the paper's best (0 and 1 worse); the release uses 1.5
    natural_baseline: bool = True
    mix_cvar: bool = True  # release form only: false gives pure RVaR
    risk_seeking: bool = False  # ablation: rewards the upper tail
    risk_seeking_u: float = 1.5
    std_normalize: bool = False  # the published advantage is not normalised (section 3a)
    advantage_form: str = "paper"  # see risk.ADVANTAGE_FORMS: the ICLR paper's or the release's
    # --- bundles, papers and credit (section 4)
    credit: str = "uniform"  # see bundles.CREDITS
    pairing: str = "permute"  # see bundles.PAIRINGS
    bundle_size: int = 5
    drop_last_bundle: bool = False  # prompts % bundle_size != 0: drop the short last bundle ...
    ragged_last_bundle: bool = False  # ... or keep it smaller
    allow_surplus_responses: bool = False  # unequal n per question within a bundle
    # --- quantiles (section 5)
    quantile_source: str = "tracked"  # see QUANTILE_SOURCES
    tracker_lr: float = 0.1
    tracker_schedule: str = "decreasing"  # lr_t = tracker_lr t^-0.6 (the paper's is not published)
    tracker_update: str = "before_advantage"  # see TRACKER_UPDATES

    def check(self, key: str) -> None:
        """Checks every option, naming `key`.<option> ("algorithm.options")."""
        require(0.0 <= self.alpha < self.beta <= 1.0, f"{key}.alpha",
                f"alpha={self.alpha}, beta={self.beta}: need 0 <= alpha < beta <= 1",
                f"e.g. {key}.alpha=0.2 {key}.beta=0.8")
        one_of(self.advantage_form, ADVANTAGE_FORMS, f"{key}.advantage_form")
        one_of(self.tracker_schedule, TRACKER_SCHEDULES, f"{key}.tracker_schedule")
        if self.mix_cvar and not self.risk_seeking and self.advantage_form == "release":
            require(self.alpha > 0.0, f"{key}.alpha", "CVaR_alpha divides by alpha, which is 0",
                    f"use alpha > 0 or {key}.mix_cvar=false")
        require(self.w_mix >= 0.0, f"{key}.w_mix", f"{self.w_mix} is negative", "use w_mix >= 0")
        if self.risk_seeking and self.advantage_form == "release":
            require(self.beta < 1.0, f"{key}.beta", "risk_seeking divides by 1 - beta, which is 0",
                    "use beta < 1")
            require(self.risk_seeking_u >= 0.0, f"{key}.risk_seeking_u", "must be >= 0")
        one_of(self.credit, CREDITS, f"{key}.credit")
        one_of(self.pairing, PAIRINGS, f"{key}.pairing")
        one_of(self.quantile_source, QUANTILE_SOURCES, f"{key}.quantile_source")
        one_of(self.tracker_update, TRACKER_UPDATES, f"{key}.tracker_update")
        require(0.0 < self.tracker_lr <= 1.0, f"{key}.tracker_lr", f"{self.tracker_lr} outside (0, 1]")
        if self.quantile_source != "bundle":
            low, high = TRACKER_LEVELS[0], TRACKER_LEVELS[-1]
            for level_key, level in (("alpha", self.alpha), ("beta", self.beta)):
                require(low - 1e-9 <= level <= high + 1e-9, f"{key}.{level_key}",
                        f"{level} lies outside the quantile tracker's grid [{low}, {high}]",
                        f"use a level in [{low}, {high}] or {key}.quantile_source=bundle")
        require(self.bundle_size >= 1, f"{key}.bundle_size", "must be >= 1")
        require(not (self.drop_last_bundle and self.ragged_last_bundle), f"{key}.drop_last_bundle",
                "drop_last_bundle and ragged_last_bundle are both true", "choose one")


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


# The paper's loss (docs/algorithm.md section 3a): length-normalised sequence ratios clipped to
# GSPO's range (the paper gives none), averaged over papers.
PAPER_LOSS = {"ratio": "sequence", "clip_low": 3e-4, "clip_high": 4e-4, "aggregation": "paper_mean"}


@register_estimator("riskpo", RiskPOOptions, groups="bundle", capabilities=(LOSS_WEIGHTS,),
                    loss=PAPER_LOSS)
def _riskpo_estimator(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
                      options: RiskPOOptions, state: AdvantageState,
                      valid: torch.Tensor) -> AdvantageResult:
    """RiskPO: bundles, papers, risk weights against tracked / per-bundle / mixed quantiles."""
    generator = None
    if options.pairing == "permute":
        generator = torch.Generator().manual_seed(state.seed * 1_000_003 + state.step)
    tracker = state.tracker(options.tracker_lr, options.tracker_schedule)
    step, metrics = riskpo_estimate(rewards, question_ids, bundle_ids, options, tracker, valid,
                                    generator)
    return AdvantageResult(step.advantages, metrics, step.loss_weights)
