"""What the estimators RiskPO is compared with share (riskpo/algo/estimators/): the statistics of
each question's group of valid rewards (count, mean, unbiased std, the share of right answers),
the reward minus its group's mean, what a "right" answer is, and the input checks of their
public functions. Pure vectorised tensor code: no Python loop over questions.

Conventions every estimator module here follows:
- A masked row (valid False) gets advantage 0 and enters no statistic; its reward may be
  anything, NaN included.
- A non-finite reward in a valid row raises ValueError naming the row.
- "Right" means reward >= correct_threshold (default 1.0). The papers score a response +1 when
  the verifier accepts it and -1 (NSR) or 0 (PKPO) otherwise, so right = "the verifier passed",
  i.e. full marks. This project's rewards are 0/1, where any threshold in (0, 1] gives the same
  split; with partial credit only full marks count as right unless the threshold is lowered.
- Group-relative methods give advantage 0 to every response of a question with fewer than 2
  valid responses: one response has nothing to be relative to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from riskpo.algo.risk import dense_ids, gather, segment_counts

GROUP_EPSILON = 1e-6  # GRPO and its kin divide by (group std + this)


# ----------------------------------------------------------------------------- input checks


def checked_inputs(rewards: torch.Tensor, question_index: torch.Tensor,
                   valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(rewards float64 with masked rows set to 0 [N], question_index long [N], valid bool [N], Q)
    for a public function taking dense question numbers 0..Q-1; ValueError/TypeError otherwise."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if question_index.shape != rewards.shape:
        raise ValueError(f"question_index has shape {tuple(question_index.shape)}, rewards {tuple(rewards.shape)}")
    if question_index.dtype.is_floating_point or question_index.dtype == torch.bool:
        raise TypeError(f"question_index must be an integer tensor, got {question_index.dtype}")
    if valid is None:
        valid = torch.ones_like(rewards, dtype=torch.bool)
    if valid.dtype != torch.bool or valid.shape != rewards.shape:
        raise ValueError(f"valid must be a bool tensor shaped like rewards {tuple(rewards.shape)}, "
                         f"got {valid.dtype} {tuple(valid.shape)}")
    if question_index.numel() and int(question_index.min()) < 0:
        raise ValueError("question_index must be >= 0 (dense question numbers 0..Q-1)")
    values = rewards.to(torch.float64)
    non_finite = valid & ~torch.isfinite(values)
    if non_finite.any():
        row = int(non_finite.nonzero()[0, 0])
        raise ValueError(f"reward of row {row} is {rewards[row].item()}, not finite, in a valid row; "
                         "mask the row (valid False) or fix its reward")
    num_questions = int(question_index.max()) + 1 if question_index.numel() else 0
    return torch.where(valid, values, 0.0), question_index.long(), valid, num_questions


def right_answers(rewards: torch.Tensor, valid: torch.Tensor, correct_threshold: float) -> torch.Tensor:
    """Valid rows whose reward reaches the threshold, [N] bool (see the module docstring)."""
    return valid & (rewards >= correct_threshold)


def check_threshold(correct_threshold: float) -> None:
    if not math.isfinite(correct_threshold):
        raise ValueError(f"correct_threshold must be finite, got {correct_threshold}")


# ----------------------------------------------------------------------------- question groups


@dataclass(frozen=True)
class QuestionGroups:
    """Each question's group of valid rewards (Q questions, N rows)."""

    question: torch.Tensor  # [N] question index of each row, 0..Q-1
    valid_counts: torch.Tensor  # [Q] long
    mean: torch.Tensor  # [Q] mean of valid rewards (NaN if none)
    std: torch.Tensor  # [Q] unbiased std of valid rewards (NaN if < 2)

    def of_rows(self, values: torch.Tensor) -> torch.Tensor:
        """A per-question tensor [Q] given to each row [N]."""
        return gather(values, self.question)

    def has_baseline(self) -> torch.Tensor:
        """[N] bool: the row's question has >= 2 valid responses (else its advantage is 0)."""
        return self.of_rows(self.valid_counts) >= 2


def question_groups(rewards: torch.Tensor, question_ids: torch.Tensor,
                    valid: torch.Tensor) -> QuestionGroups:
    """Per-question count, mean and unbiased std of the valid rewards. Rows laid out as the
    trainer lays them out (question 0's n responses, then question 1's, ...) are reduced as a
    [Q, n] table; any other order by two scatters (counts with sums, then squared deviations)."""
    values = torch.where(valid, rewards.to(torch.float64), 0.0)
    table = _question_table(question_ids)
    if table is not None:
        question = table
        shape = (-1, int(question_ids.numel() // max(int(question[-1]) + 1, 1)))
        weights, grid = valid.to(torch.float64).view(shape), values.view(shape)
        valid_counts = weights.sum(1)
        mean = grid.sum(1) / valid_counts
        squares = ((grid - mean[:, None]) * weights).square().sum(1)
    else:
        question, num_questions = dense_ids(question_ids)
        counts = segment_counts(question, num_questions)
        if (counts < 2).any():
            culprit = question_ids[(counts[question] < 2).nonzero()[0, 0]].item()
            raise ValueError(f"question id {culprit} has a single response; group baselines need n >= 2")
        sums = torch.zeros(num_questions, 2, dtype=torch.float64).index_add_(
            0, question, torch.stack((valid.to(torch.float64), values), dim=1))
        valid_counts, mean = sums[:, 0], sums[:, 1] / sums[:, 0]
        deviations = torch.where(valid, values - gather(mean, question), 0.0)
        squares = torch.zeros(num_questions, dtype=torch.float64).index_add_(0, question, deviations.square())
    std = torch.where(valid_counts >= 2, (squares / (valid_counts - 1)).sqrt(), torch.nan)
    return QuestionGroups(question, valid_counts.long(), mean, std)


def _question_table(question_ids: torch.Tensor) -> torch.Tensor | None:
    """question_ids itself when it is 0, 0, ..., 1, 1, ... with n >= 2 rows per question (the
    trainer's layout), else None."""
    total = question_ids.numel()
    if total < 2 or question_ids.dtype.is_floating_point:
        return None
    num_questions = int(question_ids[-1]) + 1
    if num_questions < 1 or total % num_questions or total // num_questions < 2:
        return None
    expected = torch.arange(num_questions).repeat_interleave(total // num_questions)
    return question_ids if torch.equal(question_ids, expected) else None


def centered(rewards: torch.Tensor, groups: QuestionGroups) -> torch.Tensor:
    """[N] float64: r - its group's mean, 0 where the group has < 2 valid responses."""
    difference = rewards.to(torch.float64) - groups.of_rows(groups.mean)
    return torch.where(groups.has_baseline(), difference, 0.0)


def divided_by_group_std(advantages: torch.Tensor, groups: QuestionGroups) -> torch.Tensor:
    """advantages / (group std + GROUP_EPSILON); rows without a baseline are left as they are
    (0: see centered)."""
    std = torch.where(groups.has_baseline(), groups.of_rows(groups.std), 1.0)
    return advantages / (std + GROUP_EPSILON)


def grpo_advantages(rewards: torch.Tensor, groups: QuestionGroups, std_normalize: bool) -> torch.Tensor:
    """[N] float64: GRPO's advantage, r - its group's mean, divided by (group std +
    GROUP_EPSILON) when std_normalize; 0 where the group has < 2 valid responses."""
    advantages = centered(rewards, groups)
    return divided_by_group_std(advantages, groups) if std_normalize else advantages
