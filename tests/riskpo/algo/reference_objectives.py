"""Slow per-sample references for riskpo/algo/baselines.py and riskpo/algo/entropy_control.py, written from
the papers independently of riskpo/: Python loops over questions, responses, subsets and tokens
with plain floats. PKPO's reference enumerates the k-subsets with itertools.combinations; a
second PKPO loop evaluates the closed form per response (bench/objectives.py times it).
"""

from __future__ import annotations

import itertools
import math

import torch


def _groups(question_index, valid):
    """{question: [valid row numbers]} in row order."""
    groups: dict[int, list[int]] = {}
    for row in range(len(question_index)):
        if valid is None or bool(valid[row]):
            groups.setdefault(int(question_index[row]), []).append(row)
    return groups


def _check_finite(rewards, valid):
    for row in range(len(rewards)):
        if (valid is None or bool(valid[row])) and not math.isfinite(float(rewards[row])):
            raise ValueError(f"row {row}")


def _result(values):
    return torch.tensor(values, dtype=torch.float64)


def reference_nsr(rewards, question_index, valid=None, correct_threshold=1.0):
    _check_finite(rewards, valid)
    advantages = [0.0] * len(rewards)
    for row in range(len(rewards)):
        if (valid is None or bool(valid[row])) and not float(rewards[row]) >= correct_threshold:
            advantages[row] = -1.0
    return _result(advantages)


def reference_w_reinforce(rewards, question_index, valid=None, positive_weight=0.1,
                          correct_threshold=1.0):
    _check_finite(rewards, valid)
    advantages = [0.0] * len(rewards)
    for row in range(len(rewards)):
        if valid is not None and not bool(valid[row]):
            continue
        advantages[row] = positive_weight if float(rewards[row]) >= correct_threshold else -1.0
    return _result(advantages)


def _subset_max(correct, members):
    return max((correct[m] for m in members), default=0.0)


def _pkpo_group_by_subsets(correct, k, baseline):
    """n * s_i for one group's 0/1 list by enumerating subsets (Walder and Karkhanis: s, s^(loo-1))."""
    n = len(correct)
    k = min(k, n)
    weights = []
    for i in range(n):
        total = 0.0
        for subset in itertools.combinations(range(n), k):
            if i not in subset:
                continue
            total += _subset_max(correct, subset)
            if baseline == "loo_minus_one" and k >= 2:
                total -= _subset_max(correct, [m for m in subset if m != i])
        weight = total / math.comb(n, k)
        if baseline == "loo_minus_one" and k == 1:  # the paper's leave-one-out baseline s^(loo)
            others = [m for m in range(n) if m != i]
            estimates = [_subset_max(correct, s) for s in itertools.combinations(others, k)]
            weight -= k / n * sum(estimates) / len(estimates)
        weights.append(n * weight)
    return weights


def reference_pkpo(rewards, question_index, valid=None, k=2, baseline="loo_minus_one",
                   correct_threshold=1.0):
    """PKPO advantages [N] by enumerating every k-subset of every question's valid responses."""
    _check_finite(rewards, valid)
    advantages = [0.0] * len(rewards)
    for rows in _groups(question_index, valid).values():
        if len(rows) < 2:
            continue
        correct = [1.0 if float(rewards[r]) >= correct_threshold else 0.0 for r in rows]
        for row, weight in zip(rows, _pkpo_group_by_subsets(correct, k, baseline), strict=True):
            advantages[row] = weight
    return _result(advantages)


def loop_pkpo_closed_form(rewards, question_index, valid=None, k=2, baseline="loo_minus_one",
                          correct_threshold=1.0):
    """PKPO per response with math.comb (the closed forms the vectorised code uses)."""
    _check_finite(rewards, valid)
    advantages = [0.0] * len(rewards)
    for rows in _groups(question_index, valid).values():
        n = len(rows)
        if n < 2:
            continue
        size = min(k, n)
        num_right = sum(1 for r in rows if float(rewards[r]) >= correct_threshold)
        for row in rows:
            right = float(rewards[row]) >= correct_threshold
            if baseline == "none":
                value = 1.0 if right else 1.0 - math.comb(n - 1 - num_right, size - 1) / math.comb(n - 1, size - 1)
                advantages[row] = size * value
            elif size == 1:
                advantages[row] = float(right) - (num_right - float(right)) / (n - 1)
            elif right:
                advantages[row] = size * math.comb(n - num_right, size - 1) / math.comb(n - 1, size - 1)
    return _result(advantages)


def reference_rs_grpo(rewards, question_index, valid=None, beta=2.0):
    """(exp(beta r_i) / mean_j exp(beta r_j) - 1) / beta per question, plain floats."""
    _check_finite(rewards, valid)
    advantages = [0.0] * len(rewards)
    for rows in _groups(question_index, valid).values():
        if len(rows) < 2:
            continue
        utilities = [math.exp(beta * float(rewards[r])) for r in rows]
        mean_utility = sum(utilities) / len(utilities)
        for row, utility in zip(rows, utilities, strict=True):
            advantages[row] = (utility / mean_utility - 1.0) / beta
    return _result(advantages)


# ----------------------------------------------------------------------------- entropy control


def _masked_tokens(response_mask):
    """[(row, token)] of masked tokens in row-major order."""
    batch, length = response_mask.shape
    return [(b, t) for b in range(batch) for t in range(length) if bool(response_mask[b, t])]


def _advantage_at(advantages, b, t):
    return float(advantages[b]) if advantages.dim() == 1 else float(advantages[b, t])


def reference_token_covariance(logprobs, advantages, response_mask):
    """{(row, token): (A - mean A) (logprob - mean logprob)} over the masked tokens."""
    tokens = _masked_tokens(response_mask)
    if not tokens:
        return {}
    mean_advantage = sum(_advantage_at(advantages, b, t) for b, t in tokens) / len(tokens)
    mean_logprob = sum(float(logprobs[b, t]) for b, t in tokens) / len(tokens)
    return {(b, t): (_advantage_at(advantages, b, t) - mean_advantage) * (float(logprobs[b, t]) - mean_logprob)
            for b, t in tokens}


def _how_many(fraction, num_tokens):
    if fraction == 0 or num_tokens == 0:
        return 0
    return max(1, int(fraction * num_tokens))


def _ppo_clip_taken(logprob, old_logprob, advantage, clip_low, clip_high):
    ratio = math.exp(min(max(logprob - old_logprob, -20.0), 20.0))
    clipped = min(max(ratio, 1.0 - clip_low), 1.0 + clip_high)
    return -advantage * clipped > -advantage * ratio


def reference_clip_cov(logprobs, old_logprobs, advantages, response_mask, generator,
                       clip_fraction=2e-4, cov_low=1.0, cov_high=5.0, skip_ppo_clipped=True,
                       clip_low=0.2, clip_high=0.2):
    """Set of (row, token) to detach: a random draw among the in-band candidates."""
    covariance = reference_token_covariance(logprobs, advantages, response_mask)
    candidates = []
    for (b, t), score in covariance.items():
        if not cov_low <= score <= cov_high:
            continue
        if skip_ppo_clipped and _ppo_clip_taken(float(logprobs[b, t]), float(old_logprobs[b, t]),
                                                _advantage_at(advantages, b, t), clip_low, clip_high):
            continue
        candidates.append((b, t))
    wanted = _how_many(clip_fraction, len(covariance))
    if not candidates or not wanted:
        return set()
    order = torch.randperm(len(candidates), generator=generator).tolist()
    return {candidates[i] for i in order[:wanted]}


def reference_kl_cov(logprobs, old_logprobs, advantages, response_mask, top_fraction=2e-3, coef=1.0):
    """(selected set of (row, token), {(row, token): penalty}) with ties to the earliest token."""
    covariance = reference_token_covariance(logprobs, advantages, response_mask)
    ranked = sorted(covariance, key=lambda bt: (-covariance[bt], bt))
    selected = set(ranked[:_how_many(top_fraction, len(covariance))])
    penalties = {bt: coef * abs(float(logprobs[bt]) - float(old_logprobs[bt])) for bt in selected}
    return selected, penalties
