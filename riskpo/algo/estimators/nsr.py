"""NSR and W-REINFORCE (Zhu et al. 2025, "The Surprising Effectiveness of Negative Reinforcement
in LLM Reasoning", arXiv 2506.01347): the controls that push wrong answers down with no group
statistic, each response scored on its own (conventions: riskpo/algo/baselines.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from riskpo.algo.baselines import check_threshold, checked_inputs, right_answers
from riskpo.algo.registry import AdvantageResult, AdvantageState, NoOptions, register_estimator
from riskpo.algo.risk import dense_ids
from riskpo.options import require


@dataclass
class WReinforceOptions:
    """W-REINFORCE's option (`algorithm.options.*`): +positive_weight for a right answer, -1
    for a wrong one."""

    positive_weight: float = 0.1  # lambda, the paper's recommended value

    def check(self, key: str) -> None:
        require(self.positive_weight >= 0.0, f"{key}.positive_weight", "must be >= 0")


def nsr_advantages(rewards: torch.Tensor, question_index: torch.Tensor,
                   valid: torch.Tensor | None = None, *, correct_threshold: float = 1.0) -> torch.Tensor:
    """Negative-sample reinforcement (Zhu et al. 2025, "The Surprising Effectiveness of Negative
    Reinforcement in LLM Reasoning", arXiv 2506.01347): A = -1 for a wrong response, 0 for a right
    one, so right answers are untouched and wrong ones pushed down. The paper's L_NSR with
    rewards -1 / +1 and no baseline; per response, no group statistic.
    """
    check_threshold(correct_threshold)
    values, _, valid, _ = checked_inputs(rewards, question_index, valid)
    wrong = valid & ~right_answers(values, valid, correct_threshold)
    return torch.where(wrong, values.new_tensor(-1.0), values.new_tensor(0.0))  # float64


def w_reinforce_advantages(rewards: torch.Tensor, question_index: torch.Tensor,
                           valid: torch.Tensor | None = None, *, positive_weight: float = 0.1,
                           correct_threshold: float = 1.0) -> torch.Tensor:
    """Weighted REINFORCE (Zhu et al. 2025, arXiv 2506.01347): A = +positive_weight for a right
    response, -1 for a wrong one; the paper's lambda * L_PSR + L_NSR with lambda = 0.1 (its
    recommended value, the default here). positive_weight = 0 is NSR; 1 is plain REINFORCE on
    -1 / +1 rewards.
    """
    check_threshold(correct_threshold)
    if not 0.0 <= positive_weight < math.inf:
        raise ValueError(f"positive_weight must be finite and >= 0, got {positive_weight}")
    values, _, valid, _ = checked_inputs(rewards, question_index, valid)
    right = right_answers(values, valid, correct_threshold)
    advantages = torch.where(right, values.new_tensor(float(positive_weight)), values.new_tensor(-1.0))
    return torch.where(valid, advantages, 0.0)


@register_estimator("nsr", NoOptions, groups="none")
def _nsr(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
         options: NoOptions, state: AdvantageState, valid: torch.Tensor) -> AdvantageResult:
    """NSR: wrong answers pushed down (-1), right ones untouched."""
    return AdvantageResult(nsr_advantages(rewards, dense_ids(question_ids)[0], valid))


@register_estimator("w_reinforce", WReinforceOptions, groups="none")
def _w_reinforce(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
                 options: WReinforceOptions, state: AdvantageState,
                 valid: torch.Tensor) -> AdvantageResult:
    """W-REINFORCE: +lambda for right answers, -1 for wrong ones."""
    return AdvantageResult(w_reinforce_advantages(
        rewards, dense_ids(question_ids)[0], valid, positive_weight=options.positive_weight))
