"""QAE, Quantile Advantage Estimation (Wu et al. 2025, arXiv 2509.22611): GRPO with the group's
K-quantile of the rewards as the baseline instead of its mean. With 0/1 rewards a hard question
(success rate p <= 1 - K) has baseline 0, so only its rare successes are reinforced; an easy one
(p > 1 - K) has baseline 1, so only its failures are pushed down; at the authors' K = 0.4 about
80% of responses get zero advantage. As the authors' code (a one-line change to verl's GRPO
advantage): the quantile linearly interpolated (torch.quantile), the difference divided by the
group's unbiased std + 1e-6. Conventions: riskpo/algo/baselines.py; choices: docs/algorithm.md
section 8."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from riskpo.algo.baselines import divided_by_group_std, question_groups
from riskpo.algo.registry import AdvantageResult, AdvantageState, register_estimator
from riskpo.algo.risk import segment_quantiles
from riskpo.options import require


@dataclass
class QAEOptions:
    """QAE's options (`algorithm.options.*`)."""

    quantile: float = 0.4  # K, the level of the baseline quantile (the authors' scripts: 0.4)
    std_normalize: bool = True  # divide by the group's std + 1e-6, as GRPO and DAPO do

    def check(self, key: str) -> None:
        require(0.0 <= self.quantile <= 1.0, f"{key}.quantile",
                f"{self.quantile} is not a quantile level", "use a level in [0, 1], e.g. 0.4")


def group_quantile_baseline(rewards: torch.Tensor, question: torch.Tensor, valid: torch.Tensor,
                            num_questions: int, level: float) -> torch.Tensor:
    """[Q] float64: each question's `level` quantile of its valid rewards (linear
    interpolation, torch.quantile's); NaN for a question without valid rewards."""
    levels = torch.tensor([level], dtype=torch.float64)
    values = rewards.to(torch.float64)[valid]
    return segment_quantiles(values, question[valid], num_questions, levels)[:, 0]


@register_estimator("qae", QAEOptions)
def _qae(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
         options: QAEOptions, state: AdvantageState, valid: torch.Tensor) -> AdvantageResult:
    """QAE: (r - the group's K-quantile) / (group std + epsilon); questions with < 2 valid
    responses get 0."""
    groups = question_groups(rewards, question_ids, valid)
    baseline = group_quantile_baseline(rewards, groups.question, valid,
                                       groups.valid_counts.numel(), options.quantile)
    difference = rewards.to(torch.float64) - groups.of_rows(baseline)
    advantages = torch.where(groups.has_baseline(), difference, 0.0)
    if options.std_normalize:
        advantages = divided_by_group_std(advantages, groups)
    return AdvantageResult(advantages)
