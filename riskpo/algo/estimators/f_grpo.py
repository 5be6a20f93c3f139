"""F-GRPO (Plyusov et al. 2026, "Don't Let Your Policy Learn the Obvious and Forget the Rare",
arXiv 2602.06717): GRPO's advantage scaled per question by the focal coefficient
(1 - p)^gamma, p the share of the question's valid responses that are right, so that questions
the policy already solves move it less and rare right answers on hard ones keep their weight.
Conventions: riskpo/algo/baselines.py (right = full marks); choices: docs/algorithm.md
section 8."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from riskpo.algo.baselines import (
    QuestionGroups,
    grpo_advantages,
    question_groups,
    right_answers,
)
from riskpo.algo.registry import AdvantageResult, AdvantageState, register_estimator
from riskpo.algo.risk import segment_counts
from riskpo.options import require

CORRECT_THRESHOLD = 1.0  # a right answer has full marks (riskpo/algo/baselines.py)


@dataclass
class FGRPOOptions:
    """F-GRPO's options (`algorithm.options.*`)."""

    gamma: float = 1.0  # focal exponent; 0 is GRPO (our choice: docs/algorithm.md section 8)
    std_normalize: bool = True  # GRPO's division by the group's std + 1e-6

    def check(self, key: str) -> None:
        require(self.gamma >= 0.0, f"{key}.gamma", f"{self.gamma} is negative",
                "use gamma >= 0 (0 gives GRPO)")


def success_rate(rewards: torch.Tensor, groups: QuestionGroups, valid: torch.Tensor) -> torch.Tensor:
    """[Q] float64: the share of each question's valid responses that are right (NaN for a
    question without valid responses)."""
    right = right_answers(rewards, valid, CORRECT_THRESHOLD)
    num_right = segment_counts(groups.question, groups.valid_counts.numel(), right)
    return num_right.to(torch.float64) / groups.valid_counts.to(torch.float64)


@register_estimator("f_grpo", FGRPOOptions)
def _f_grpo(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
            options: FGRPOOptions, state: AdvantageState, valid: torch.Tensor) -> AdvantageResult:
    """F-GRPO: GRPO's advantage x (1 - p)^gamma; questions with < 2 valid responses get 0."""
    groups = question_groups(rewards, question_ids, valid)
    advantages = grpo_advantages(rewards, groups, options.std_normalize)
    focal = (1.0 - success_rate(rewards, groups, valid)).pow(options.gamma)
    scaled = advantages * groups.of_rows(focal)
    return AdvantageResult(torch.where(groups.has_baseline(), scaled, 0.0),
                           {"f_grpo/focal_mean": focal[groups.valid_counts >= 2].mean().item()})
