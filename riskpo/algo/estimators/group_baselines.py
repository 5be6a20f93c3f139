"""The group baselines RiskPO is compared with (docs/algorithm.md section 8): GRPO (DeepSeekMath),
Dr.GRPO (Liu et al. 2025), RLOO (Ahmadian et al. 2024), and REINFORCE with a batch baseline.
Each question's valid responses form its group; a question with fewer than 2 valid responses
gets advantage 0 (riskpo/algo/baselines.py holds the group statistics they share)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from riskpo.algo import risk
from riskpo.algo.baselines import centered, grpo_advantages, question_groups
from riskpo.algo.registry import AdvantageResult, AdvantageState, NoOptions, register_estimator


@dataclass
class GRPOOptions:
    """GRPO's option (`algorithm.options.*`)."""

    std_normalize: bool = True  # divide by the group's std + 1e-6 (false: Dr.GRPO's advantage)

    def check(self, key: str) -> None:
        """A bool: nothing to check."""


@dataclass
class ReinforceBaselineOptions:
    """REINFORCE with a batch baseline's option (`algorithm.options.*`)."""

    std_normalize: bool = False  # divide by the batch's std

    def check(self, key: str) -> None:
        """A bool: nothing to check."""


@register_estimator("grpo", GRPOOptions)
def _grpo(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
          options: GRPOOptions, state: AdvantageState, valid: torch.Tensor) -> AdvantageResult:
    """GRPO: (r - group mean) / (group std + epsilon); questions with < 2 valid responses get 0."""
    groups = question_groups(rewards, question_ids, valid)
    return AdvantageResult(grpo_advantages(rewards, groups, options.std_normalize))


@register_estimator("dr_grpo", NoOptions, loss={"aggregation": "seq_mean_token_sum"})
def _dr_grpo(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
             options: NoOptions, state: AdvantageState, valid: torch.Tensor) -> AdvantageResult:
    """Dr.GRPO: r - group mean, no std division (pair it with seq_mean_token_sum)."""
    return AdvantageResult(centered(rewards, question_groups(rewards, question_ids, valid)))


@register_estimator("rloo", NoOptions)
def _rloo(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
          options: NoOptions, state: AdvantageState, valid: torch.Tensor) -> AdvantageResult:
    """RLOO: r_i - mean of the other valid responses of the question = n/(n-1) (r_i - mean)."""
    groups = question_groups(rewards, question_ids, valid)
    count = groups.of_rows(groups.valid_counts).to(torch.float64)
    return AdvantageResult(centered(rewards, groups) * count / (count - 1).clamp(min=1))


@register_estimator("reinforce_baseline", ReinforceBaselineOptions, groups="batch")
def _reinforce_baseline(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
                        options: ReinforceBaselineOptions, state: AdvantageState,
                        valid: torch.Tensor) -> AdvantageResult:
    """REINFORCE with a batch baseline: r - mean over valid rows, / batch std if std_normalize."""
    values = rewards[valid].to(torch.float64)
    if values.numel() == 0:
        return AdvantageResult(torch.zeros_like(rewards, dtype=torch.float64))
    advantages = rewards.to(torch.float64) - values.mean()
    if options.std_normalize and values.numel() > 1:
        advantages = risk.std_normalize(advantages, values.std())
    return AdvantageResult(advantages)
