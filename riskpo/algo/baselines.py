"""Advantage functions of the objectives that compete with RiskPO on the same claims (entropy
kept, pass@k gains at large k): NSR and W-REINFORCE, PKPO, RS-GRPO (issue 15, section 3).

Pure vectorised tensor code (no Ray, no I/O, no Python loop over questions). Every function
takes the same three tensors and returns float64 advantages, one per response:

    rewards [N] float, question_index [N] long (dense 0..Q-1, rows of a question need not be
    contiguous), valid [N] bool or None (= all valid)  ->  advantages [N] float64

Rules shared by every function here:
- A masked row (valid False) gets advantage 0 and enters no statistic; its reward may be
  anything, NaN included.
- A non-finite reward in a valid row raises ValueError naming the row.
- "Right" means reward >= correct_threshold (default 1.0). The papers score a response +1 when
  the verifier accepts it and -1 (NSR) or 0 (PKPO) otherwise, so right = "the verifier passed",
  i.e. full marks. This project's rewards are 0/1, where any threshold in (0, 1] gives the same
  split; with partial credit only full marks count as right unless the threshold is lowered.
- Group-relative methods (PKPO, RS-GRPO) give advantage 0 to every response of a question with
  fewer than 2 valid responses: one response has nothing to be relative to. NSR and
  W-REINFORCE score each response alone and need no group.
"""

from __future__ import annotations

import math

import torch

from riskpo.algo.risk import gather, segment_counts, segment_mean

PKPO_BASELINES = ("loo_minus_one", "none")


# ----------------------------------------------------------------------------- shared checks


def _validated(rewards: torch.Tensor, question_index: torch.Tensor,
               valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(rewards float64 with masked rows set to 0 [N], question_index long [N], valid bool [N], Q)."""
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


def _check_threshold(correct_threshold: float) -> None:
    if not math.isfinite(correct_threshold):
        raise ValueError(f"correct_threshold must be finite, got {correct_threshold}")


# ----------------------------------------------------------------------------- NSR, W-REINFORCE


def nsr_advantages(rewards: torch.Tensor, question_index: torch.Tensor,
                   valid: torch.Tensor | None = None, *, correct_threshold: float = 1.0) -> torch.Tensor:
    """Negative-sample reinforcement (Zhu et al. 2025, "The Surprising Effectiveness of Negative
    Reinforcement in LLM Reasoning", arXiv 2506.01347): A = -1 for a wrong response, 0 for a right
    one, so right answers are untouched and wrong ones pushed down. The paper's L_NSR with
    rewards -1 / +1 and no baseline; per response, no group statistic.
    """
    _check_threshold(correct_threshold)
    values, _, valid, _ = _validated(rewards, question_index, valid)
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
    _check_threshold(correct_threshold)
    if not 0.0 <= positive_weight < math.inf:
        raise ValueError(f"positive_weight must be finite and >= 0, got {positive_weight}")
    values, _, valid, _ = _validated(rewards, question_index, valid)
    right = right_answers(values, valid, correct_threshold)
    advantages = torch.where(right, values.new_tensor(float(positive_weight)), values.new_tensor(-1.0))
    return torch.where(valid, advantages, 0.0)


# ----------------------------------------------------------------------------- PKPO


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
    _check_threshold(correct_threshold)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"PKPO k must be an integer >= 1, got {k!r}")
    if baseline not in PKPO_BASELINES:
        raise ValueError(f"PKPO baseline must be one of {PKPO_BASELINES}, got {baseline!r}")
    values, question_index, valid, num_questions = _validated(rewards, question_index, valid)
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


# ----------------------------------------------------------------------------- RS-GRPO


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
    values, question_index, valid, num_questions = _validated(rewards, question_index, valid)
    lowest = torch.finfo(torch.float64).min
    group_max = torch.full((num_questions,), lowest, dtype=torch.float64, device=values.device)
    group_max = group_max.scatter_reduce(0, question_index, torch.where(valid, values, lowest), "amax")
    weights = torch.exp(beta * (values - gather(group_max, question_index)))  # in (0, 1]
    weights = torch.where(valid, weights, 0.0)
    mean_weight = gather(segment_mean(weights, question_index, num_questions, valid), question_index)
    count = gather(segment_counts(question_index, num_questions, valid), question_index)
    advantages = (weights / mean_weight - 1.0) / beta
    return torch.where(valid & (count >= 2), advantages, 0.0)
