"""PKPO (Walder and Karkhanis 2025, "Pass@K Policy Optimization", arXiv 2505.15201): per-response
weights whose policy gradient is an unbiased estimate of the gradient of pass@k, with k annealed
by step; its options, math and registration (conventions: riskpo/algo/baselines.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from riskpo.algo.baselines import check_threshold, checked_inputs, right_answers
from riskpo.algo.registry import AdvantageResult, AdvantageState, register_estimator
from riskpo.algo.risk import dense_ids, gather, segment_counts
from riskpo.options import one_of, require

PKPO_BASELINES = ("loo_minus_one", "none")


@dataclass
class PKPOOptions:
    """PKPO's options (`algorithm.options.*`): k annealed linearly from k to k_end over
    anneal_steps steps starting at anneal_start (0: a switch); the leave-one-out (k-1) baseline."""

    k: int = 4
    k_end: int | None = None  # null: k throughout
    anneal_start: int = 0
    anneal_steps: int = 0
    baseline: str = "loo_minus_one"  # see PKPO_BASELINES

    def check(self, key: str) -> None:
        require(self.k >= 1, f"{key}.k", "must be >= 1")
        require(self.k_end is None or self.k_end >= 1, f"{key}.k_end", "must be >= 1 or null")
        require(self.anneal_start >= 0 and self.anneal_steps >= 0, f"{key}.anneal_steps",
                "anneal_start and anneal_steps must be >= 0")
        one_of(self.baseline, PKPO_BASELINES, f"{key}.baseline")

    def k_at(self, step: int) -> int:
        """k at a (0-based) training step."""
        return pkpo_k_schedule(step, k_start=self.k, k_end=self.k_end or self.k,
                               anneal_start=self.anneal_start, anneal_steps=self.anneal_steps)


def _binomial_ratio(top: torch.Tensor, bottom: torch.Tensor, chosen: torch.Tensor,
                    log_factorial: torch.Tensor) -> torch.Tensor:
    """C(top, chosen) / C(bottom, chosen) for long tensors with top <= bottom and 0 <= chosen <=
    bottom where it matters; 0 where chosen > top (or top < 0). log_factorial[m] = log m!."""
    possible = (chosen <= top) & (top >= 0) & (chosen >= 0)
    top, bottom, chosen = (torch.where(possible, x, 0) for x in (top, bottom, chosen))
    log_ratio = (gather(log_factorial, top) - gather(log_factorial, top - chosen)
                 - gather(log_factorial, bottom) + gather(log_factorial, bottom - chosen))
    return torch.where(possible, torch.exp(log_ratio), 0.0)


def _pkpo_question_weights(count: torch.Tensor, num_right: torch.Tensor, k: int,
                           baseline: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantage of a right response, of a wrong one) per question [Q] float64, from the valid
    count n and right count c per question [Q] long (closed forms: see pkpo_advantages)."""
    size = count.clamp(max=k)  # k of each question, at most its valid count
    largest = int(count.max()) if count.numel() else 0
    log_factorial = torch.lgamma(torch.arange(largest + 1, dtype=torch.float64, device=count.device) + 1)
    if baseline == "none":
        right_weight = size.to(torch.float64)
        wrong_weight = size * (1.0 - _binomial_ratio(count - 1 - num_right, count - 1, size - 1, log_factorial))
    else:
        right_weight = size * _binomial_ratio(count - num_right, count - 1, size - 1, log_factorial)
        wrong_weight = torch.zeros_like(right_weight)
        others = (count - 1).clamp(min=1).to(torch.float64)  # at k = 1: RLOO, r - mean of the others
        right_weight = torch.where(size == 1, 1.0 - (num_right - 1) / others, right_weight)
        wrong_weight = torch.where(size == 1, -num_right / others, wrong_weight)
    grouped = count >= 2
    return torch.where(grouped, right_weight, 0.0), torch.where(grouped, wrong_weight, 0.0)


def pkpo_advantages(rewards: torch.Tensor, question_index: torch.Tensor,
                    valid: torch.Tensor | None = None, *, k: int, baseline: str = "loo_minus_one",
                    correct_threshold: float = 1.0) -> torch.Tensor:
    """Pass@k policy optimisation for binary rewards (Walder and Karkhanis 2025, "Pass@K Policy
    Optimization", arXiv 2505.15201): per-response weights whose policy gradient is an unbiased
    estimate of the gradient of pass@k, for any k <= n.

    With n valid responses of a question, c of them right, the paper's transformed reward is
    s_i = (1/C(n,k)) * sum over the k-subsets I containing i of max_{j in I} f_j, in closed form
    s_i = k/n (right) and k/n * rho(n-1, c, k-1) (wrong), rho(n, c, k) = 1 - C(n-c,k)/C(n,k).
    baseline:
    - "loo_minus_one" (default): the paper's s^(loo-1), the lowest-variance of its estimators
      (s, s^(loo), s^(loo-1)) and the one public PKPO implementations default to: each
      subset's max minus the max of the same subset without i. In closed form a right response
      gets s_i = k/n * C(n-c, k-1)/C(n-1, k-1) (only the subsets where it is the sole right
      answer count) and a wrong one 0: PKPO only pulls up. At k = 1 the (k-1)-subsets are
      empty; we then use the paper's leave-one-out baseline s^(loo), which at k = 1 is RLOO, so
      annealing k to 1 ends at a baselined pass@1 estimator (our choice: the paper hands k = 1
      back to the standard objective).
    - "none": s_i itself (no baseline; every weight >= 0).
    The paper's estimator is sum_i s_i grad log p(x_i); our losses average over responses, so
    the advantage returned is n * s_i (with "none" and k = 1 it is the reward itself).
    A question with fewer than k valid responses (masked rows) is scored at k = its count;
    fewer than 2 valid responses gives 0. Non-binary rewards are binarised: right = reward >=
    correct_threshold.
    """
    check_threshold(correct_threshold)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"PKPO k must be an integer >= 1, got {k!r}")
    if baseline not in PKPO_BASELINES:
        raise ValueError(f"PKPO baseline must be one of {PKPO_BASELINES}, got {baseline!r}")
    values, question_index, valid, num_questions = checked_inputs(rewards, question_index, valid)
    right = right_answers(values, valid, correct_threshold)
    count = segment_counts(question_index, num_questions, valid)  # [Q]
    num_right = segment_counts(question_index, num_questions, right)  # [Q]
    right_weight, wrong_weight = _pkpo_question_weights(count, num_right, k, baseline)
    advantages = torch.where(right, gather(right_weight, question_index), gather(wrong_weight, question_index))
    return torch.where(valid, advantages, 0.0)


def pkpo_k_schedule(step: int, *, k_start: int, k_end: int, anneal_start: int = 0,
                    anneal_steps: int = 0) -> int:
    """k for training step `step` (0-based): k_start before anneal_start, k_end from
    anneal_start + anneal_steps on, linear in between, rounded to the nearest integer (halves
    up: floor(x + 0.5)).

    The paper (arXiv 2505.15201, section on annealing) trains with a large k first and then
    switches to k = 1, improving pass@1 and pass@k together: that is anneal_steps = 0, a switch
    at anneal_start. A linear ramp (anneal_steps > 0) is our generalisation. A k above a
    question's valid count is clipped by pkpo_advantages, not here.
    """
    if min(k_start, k_end) < 1:
        raise ValueError(f"PKPO k schedule needs k_start, k_end >= 1, got {k_start}, {k_end}")
    if anneal_start < 0 or anneal_steps < 0 or step < 0:
        raise ValueError(f"step, anneal_start, anneal_steps must be >= 0, got {step}, {anneal_start}, {anneal_steps}")
    if step < anneal_start:
        return k_start
    if step >= anneal_start + anneal_steps:
        return k_end
    progress = (step - anneal_start) / anneal_steps
    return int(math.floor(k_start + (k_end - k_start) * progress + 0.5))


@register_estimator("pkpo", PKPOOptions)
def _pkpo(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
          options: PKPOOptions, state: AdvantageState, valid: torch.Tensor) -> AdvantageResult:
    """PKPO: unbiased pass@k rewards, k annealed by step."""
    k = options.k_at(state.step)
    advantages = pkpo_advantages(rewards, dense_ids(question_ids)[0], valid, k=k,
                                 baseline=options.baseline)
    return AdvantageResult(advantages, {"pkpo/k": float(k)})
