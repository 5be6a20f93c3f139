"""Evaluation and training statistics: unbiased pass@k, avg@k, entropy, reward, advantage and
risk-region statistics (SPEC 5, 10). Pure torch; every function returns tensors or plain floats.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from riskpo.risk import cvar, mvar, rvar, segment_sum


def _as_long(values: torch.Tensor | int | Iterable[int], like: torch.Tensor | None = None) -> torch.Tensor:
    tensor = torch.as_tensor(values, dtype=torch.long)
    return tensor.expand_as(like) if like is not None and tensor.dim() == 0 else tensor


def pass_at_k(num_correct: torch.Tensor, num_samples: torch.Tensor | int, k: int) -> torch.Tensor:
    """Unbiased pass@k per problem, 1 - C(n-c, k) / C(n, k), in the stable product form.

    num_correct: [P] counts c; num_samples: n (int or [P]); 1 <= k <= n. Uses
    C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i), computed as one masked product.
    """
    correct = _as_long(num_correct)
    samples = _as_long(num_samples, like=correct)
    if correct.shape != samples.shape:
        raise ValueError(f"num_correct {tuple(correct.shape)} and num_samples {tuple(samples.shape)} differ")
    if k < 1 or (samples < k).any():
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, min n={samples.min().item()}")
    if ((correct < 0) | (correct > samples)).any():
        raise ValueError("num_correct must lie in [0, num_samples]")
    width = int(correct.max().item()) if correct.numel() else 0
    offsets = torch.arange(width, dtype=torch.float64)
    denominators = (samples - correct + 1).to(torch.float64)[..., None] + offsets  # i = n-c+1 .. n
    factors = torch.where(offsets < correct[..., None], 1.0 - k / denominators, 1.0)
    return 1.0 - factors.prod(dim=-1)


def pass_at_k_curve(num_correct: torch.Tensor, num_samples: torch.Tensor | int,
                    ks: Iterable[int]) -> dict[int, float]:
    """Mean unbiased pass@k over problems for each k in ks."""
    return {k: pass_at_k(num_correct, num_samples, k).mean().item() for k in ks}


def avg_at_k(num_correct: torch.Tensor, num_samples: torch.Tensor | int) -> float:
    """Avg@k: the mean accuracy of the k samples per problem (the usual pass@1 estimate)."""
    correct = _as_long(num_correct)
    samples = _as_long(num_samples, like=correct)
    return (correct.to(torch.float64) / samples).mean().item()


def mean_token_entropy(entropy: torch.Tensor, mask: torch.Tensor) -> float:
    """Token-mean of per-token entropies [B, T] over the response mask."""
    mask = mask.to(entropy.dtype)
    return ((entropy * mask).sum() / mask.sum().clamp(min=1)).item()


def reward_statistics(rewards: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, float]:
    """Mean, std, min, max and fraction positive of the valid rewards."""
    values = rewards if valid is None else rewards[valid]
    if values.numel() == 0:
        return {"reward/mean": math.nan, "reward/std": math.nan, "reward/min": math.nan,
                "reward/max": math.nan, "reward/positive_fraction": math.nan, "reward/count": 0.0}
    values = values.to(torch.float64)
    return {
        "reward/mean": values.mean().item(),
        "reward/std": values.std().item() if values.numel() > 1 else 0.0,
        "reward/min": values.min().item(),
        "reward/max": values.max().item(),
        "reward/positive_fraction": (values > 0).to(torch.float64).mean().item(),
        "reward/count": float(values.numel()),
    }


def risk_region_statistics(paper_scores: torch.Tensor, q_alpha: torch.Tensor,
                           q_beta: torch.Tensor) -> dict[str, float]:
    """Fraction of papers below qa (S < qa), between (qa <= S <= qb) and above qb (S > qb).

    q_alpha, q_beta: scalars or one value per paper (e.g. each paper's bundle quantiles).
    """
    if paper_scores.numel() == 0:
        return {"risk/below_qa_fraction": math.nan, "risk/between_fraction": math.nan,
                "risk/above_qb_fraction": math.nan}
    below = (paper_scores < q_alpha).to(torch.float64).mean().item()
    above = (paper_scores > q_beta).to(torch.float64).mean().item()
    return {"risk/below_qa_fraction": below, "risk/between_fraction": 1.0 - below - above,
            "risk/above_qb_fraction": above}


def risk_measure_statistics(paper_scores: torch.Tensor, alpha: float, beta: float,
                            w_mix: float) -> dict[str, float]:
    """Empirical mean, CVaR_a, RVaR_{a:b} and MVaR of pooled paper scores (NaN when empty)."""
    if paper_scores.numel() == 0:
        return {"risk/score_mean": math.nan, "risk/cvar": math.nan, "risk/rvar": math.nan,
                "risk/mvar": math.nan}
    scores = paper_scores.to(torch.float64)
    return {
        "risk/score_mean": scores.mean().item(),
        "risk/cvar": cvar(scores, alpha).item(),
        "risk/rvar": rvar(scores, alpha, beta).item(),
        "risk/mvar": mvar(scores, alpha, beta, w_mix).item(),
    }


def advantage_statistics(advantages: torch.Tensor, rewards: torch.Tensor,
                         question_ids: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, float]:
    """Advantage mean/std/abs-mean, nonzero fraction and how all-wrong questions are treated.

    A question is all-wrong when none of its valid responses has reward > 0. The metric
    `adv/all_wrong_nonzero_fraction` is the fraction of all-wrong questions with at least one
    nonzero advantage (GRPO gives them none; RiskPO bundles can).
    """
    valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid
    values = advantages[valid].to(torch.float64)
    _, question = torch.unique(question_ids[valid], return_inverse=True)
    num_questions = int(question.max().item()) + 1 if question.numel() else 0
    correct = segment_sum((rewards[valid] > 0).to(torch.float64), question, num_questions)
    nonzero = segment_sum((values != 0).to(torch.float64), question, num_questions)
    all_wrong = correct == 0
    wrong_count = int(all_wrong.sum())
    stats = {
        "adv/mean": values.mean().item() if values.numel() else math.nan,
        "adv/std": values.std().item() if values.numel() > 1 else 0.0,
        "adv/abs_mean": values.abs().mean().item() if values.numel() else math.nan,
        "adv/nonzero_fraction": (values != 0).to(torch.float64).mean().item() if values.numel() else math.nan,
        "adv/all_wrong_question_fraction": wrong_count / num_questions if num_questions else math.nan,
        "adv/all_wrong_nonzero_fraction": (
            (nonzero[all_wrong] > 0).to(torch.float64).mean().item() if wrong_count else math.nan
        ),
    }
    return stats
