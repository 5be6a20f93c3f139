"""RS-GRPO (Jiang et al. 2025, "Risk-Sensitive RL for Alleviating Exploration Dilemmas in Large
Language Models", arXiv 2509.24261): GRPO with a risk-seeking exponential utility within the
group; its option, math and registration (conventions: riskpo/algo/baselines.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from riskpo.algo.baselines import checked_inputs
from riskpo.algo.registry import AdvantageResult, AdvantageState, register_estimator
from riskpo.algo.risk import dense_ids, gather, segment_counts, segment_mean
from riskpo.options import require


@dataclass
class RSGRPOOptions:
    """RS-GRPO's option (`algorithm.options.*`): A = (exp(beta r) / mean_group exp(beta r) - 1)
    / beta."""

    beta: float = 2.0  # the authors' recommended value

    def check(self, key: str) -> None:
        require(self.beta > 0.0, f"{key}.beta", "must be > 0 (risk-seeking utility)")


def rs_grpo_advantages(rewards: torch.Tensor, question_index: torch.Tensor,
                       valid: torch.Tensor | None = None, *, beta: float = 2.0) -> torch.Tensor:
    """Risk-seeking GRPO (Jiang et al. 2025, "Risk-Sensitive RL for Alleviating Exploration
    Dilemmas in Large Language Models", arXiv 2509.24261): the exponential-utility objective
    (1/beta) log E[exp(beta r)] has the advantage A = (exp(beta r) / mean_group exp(beta r) - 1)
    / beta, the mean over the question's valid responses (the response itself included).
    beta = 2 is the authors' recommended value; beta -> 0 recovers r - mean.

    Numerically stable: exp(beta (r - group max)) in both numerator and mean, so nothing
    overflows and the mean is >= 1/n. A question with fewer than 2 valid responses gets 0 (what
    the formula gives for one response).
    """
    if not 0.0 < beta < math.inf:
        raise ValueError(f"RS-GRPO beta must be finite and > 0 (risk-seeking), got {beta}")
    values, question_index, valid, num_questions = checked_inputs(rewards, question_index, valid)
    lowest = torch.finfo(torch.float64).min
    group_max = torch.full((num_questions,), lowest, dtype=torch.float64, device=values.device)
    group_max = group_max.scatter_reduce(0, question_index, torch.where(valid, values, lowest), "amax")
    weights = torch.exp(beta * (values - gather(group_max, question_index)))  # in (0, 1]
    weights = torch.where(valid, weights, 0.0)
    mean_weight = gather(segment_mean(weights, question_index, num_questions, valid), question_index)
    count = gather(segment_counts(question_index, num_questions, valid), question_index)
    advantages = (weights / mean_weight - 1.0) / beta
    return torch.where(valid & (count >= 2), advantages, 0.0)


@register_estimator("rs_grpo", RSGRPOOptions)
def _rs_grpo(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
             options: RSGRPOOptions, state: AdvantageState, valid: torch.Tensor) -> AdvantageResult:
    """RS-GRPO (risk-seeking exponential utility within a group)."""
    return AdvantageResult(rs_grpo_advantages(rewards, dense_ids(question_ids)[0], valid,
                                              beta=options.beta))
