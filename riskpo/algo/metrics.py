"""Evaluation and training statistics: unbiased pass@k, avg@k, entropy, reward, advantage and
risk-region statistics (docs/algorithm.md sections 5, 10). Pure torch; every function returns tensors or plain floats.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from riskpo.algo.risk import cvar, mvar, paper_objective, rvar, segment_sum


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
                            w_mix: float, form: str = "release") -> dict[str, float]:
    """Empirical mean, CVaR_a, RVaR_{a:b} and MVaR of pooled paper scores as level integrals of
    their quantile function (what the gradient follows), and risk/objective: the value the
    configured advantage form ascends (release: MVaR; paper: (1 + w) a CVaR_a + (b - a)
    RVaR_{a:b}). NaN when empty."""
    keys = ("risk/score_mean", "risk/cvar", "risk/rvar", "risk/mvar", "risk/objective")
    if paper_scores.numel() == 0:
        return dict.fromkeys(keys, math.nan)
    scores = paper_scores.to(torch.float64)
    low = cvar(scores, alpha).item() if alpha > 0 else math.nan
    mixed = mvar(scores, alpha, beta, w_mix).item() if alpha > 0 else math.nan
    objective = paper_objective(scores, alpha, beta, w_mix).item() if form == "paper" else mixed
    return dict(zip(keys, (scores.mean().item(), low, rvar(scores, alpha, beta).item(), mixed,
                           objective), strict=True))


DIFFICULTY_BINS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))


def advantage_statistics(advantages: torch.Tensor, rewards: torch.Tensor,
                         question_ids: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, float]:
    """What an estimator does to the gradient this step. A response is correct when its reward
    is > 0; a question's success rate is the share of its valid responses that are correct.

    adv/mean, std, abs_mean, p99_abs (99th percentile of |A|), nonzero_fraction;
    adv/correct_negative_fraction: correct responses pushed down (A < 0);
    adv/wrong_positive_fraction: wrong responses pushed up (A > 0);
    adv/mean_success_<lo>_<hi>: mean advantage of responses whose question's success rate lies
    in [lo, hi) percent (the last bin includes 100);
    adv/all_wrong_question_fraction and adv/all_wrong_nonzero_fraction: questions with no
    correct response, and the share of them with any nonzero advantage (GRPO gives none).
    """
    valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid
    values = advantages[valid].to(torch.float64)
    correct = rewards[valid] > 0
    _, question = torch.unique(question_ids[valid], return_inverse=True)
    num_questions = int(question.max().item()) + 1 if question.numel() else 0
    counts = segment_sum(torch.ones_like(values), question, num_questions)
    right = segment_sum(correct.to(torch.float64), question, num_questions)
    nonzero = segment_sum((values != 0).to(torch.float64), question, num_questions)
    all_wrong = right == 0
    wrong_count = int(all_wrong.sum())
    stats = {
        "adv/mean": _mean(values),
        "adv/std": values.std().item() if values.numel() > 1 else 0.0,
        "adv/abs_mean": _mean(values.abs()),
        "adv/p99_abs": torch.quantile(values.abs(), 0.99).item() if values.numel() else math.nan,
        "adv/nonzero_fraction": _mean((values != 0).to(torch.float64)),
        "adv/correct_negative_fraction": _mean((values[correct] < 0).to(torch.float64)),
        "adv/wrong_positive_fraction": _mean((values[~correct] > 0).to(torch.float64)),
        "adv/all_wrong_question_fraction": wrong_count / num_questions if num_questions else math.nan,
        "adv/all_wrong_nonzero_fraction": (
            (nonzero[all_wrong] > 0).to(torch.float64).mean().item() if wrong_count else math.nan
        ),
    }
    success = (right / counts.clamp(min=1))[question] if num_questions else values
    for low, high in DIFFICULTY_BINS:
        inside = (success >= low) & ((success < high) | (high == 1.0))
        stats[f"adv/mean_success_{low * 100:.0f}_{high * 100:.0f}"] = _mean(values[inside])
    return stats


def _mean(values: torch.Tensor) -> float:
    return values.mean().item() if values.numel() else math.nan
