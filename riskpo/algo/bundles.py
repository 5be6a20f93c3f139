"""Bundles, papers and credit assignment (docs/algorithm.md section 4): how per-response rewards become paper scores
and how a paper's advantage is given back to its responses.

A bundle is a group of questions; paper j of a bundle takes the j-th response (in pairing
order) of every question and scores the sum of their rewards. All of it is scatter/sort code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from riskpo.algo.risk import (
    dense_ids,
    gather,
    segment_counts,
    segment_mean,
    segment_quantiles,
    segment_std,
    segment_sum,
)

PAIRINGS = ("index", "permute")
CREDITS = ("uniform", "std", "sum_mean")
_NO_LIMIT = 2**62
CREDIT_STD_FLOOR = 1e-3  # credit "std": sigma_q at or below this (or undefined) counts as 1
SUM_MEAN_FLOOR = 1e-6  # credit "sum_mean": |sum(rho)| at or below this gives equal shares


@dataclass(frozen=True)
class Papers:
    """The papers of one step. N responses, Q questions, K bundles, M papers (all contiguous)."""

    response_question: torch.Tensor  # [N] long, question index 0..Q-1
    response_bundle: torch.Tensor  # [N] long, bundle index 0..K-1
    response_paper: torch.Tensor  # [N] long, paper index 0..M-1, or -1 (masked or unpaired)
    paper_bundle: torch.Tensor  # [M] long, bundle of each paper (papers sorted by bundle)
    paper_scores: torch.Tensor  # [M] float64, sum of its responses' rewards
    papers_per_bundle: torch.Tensor  # [K] long, m_b = min valid responses over its questions
    num_questions: int
    num_bundles: int

    @property
    def paired(self) -> torch.Tensor:
        """[N] bool: the response belongs to a paper."""
        return self.response_paper >= 0


def consecutive_bundles(question_ids: torch.Tensor, bundle_size: int) -> torch.Tensor:
    """Bundle id [N] of each response: questions, in sorted question-id order, cut into
    consecutive bundles of bundle_size (the last one smaller when they do not divide)."""
    if bundle_size < 1:
        raise ValueError(f"bundle_size must be >= 1, got {bundle_size}")
    question_index, _ = dense_ids(question_ids)
    return question_index // bundle_size


def _check_inputs(rewards: torch.Tensor, question_ids: torch.Tensor, bundle_ids: torch.Tensor,
                  valid: torch.Tensor | None) -> None:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    for name, tensor in (("question_ids", question_ids), ("bundle_ids", bundle_ids), ("valid", valid)):
        if tensor is not None and tensor.shape != rewards.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, rewards {tuple(rewards.shape)}")
    if question_ids.dtype.is_floating_point or bundle_ids.dtype.is_floating_point:
        raise TypeError("question_ids and bundle_ids must be integer tensors")
    if valid is not None and valid.dtype != torch.bool:
        raise TypeError(f"valid must be a bool tensor, got {valid.dtype}")
    finite = torch.isfinite(rewards) if valid is None else torch.isfinite(rewards) | ~valid
    if not finite.all():
        raise ValueError("rewards contain NaN or inf in valid rows")


def _check_structure(question_bundle: torch.Tensor, response_question: torch.Tensor,
                     response_bundle: torch.Tensor, question_ids: torch.Tensor,
                     num_bundles: int, allow_surplus: bool) -> torch.Tensor:
    """Each question in one bundle, n >= 2 responses, equal counts per bundle. Returns counts [Q]."""
    split = gather(question_bundle, response_question) != response_bundle
    if split.any():
        culprit = question_ids[split.nonzero()[0, 0]].item()
        raise ValueError(f"question id {culprit} has responses in more than one bundle")
    counts = segment_counts(response_question, question_bundle.numel())
    if (counts < 2).any():
        row = (counts[response_question] < 2).nonzero()[0, 0]
        raise ValueError(
            f"question id {question_ids[row].item()} has {counts[response_question[row]].item()} "
            "response(s); bundling needs n >= 2 responses per question"
        )
    if not allow_surplus:
        low = torch.full((num_bundles,), _NO_LIMIT).scatter_reduce(0, question_bundle, counts, "amin")
        high = torch.zeros(num_bundles, dtype=torch.long).scatter_reduce(0, question_bundle, counts, "amax")
        if (low != high).any():
            bundle = (low != high).nonzero()[0, 0].item()
            raise ValueError(
                f"bundle index {bundle} mixes questions with {low[bundle].item()} and "
                f"{high[bundle].item()} responses; pass allow_surplus=True to pair only the first "
                "min(n) responses of each question"
            )
    return counts


def _ranks_within_questions(response_question: torch.Tensor, valid: torch.Tensor | None,
                            num_questions: int, pairing: str,
                            generator: torch.Generator | None) -> torch.Tensor:
    """Position of each valid response among its question's valid responses, in pairing order."""
    n = response_question.numel()
    group = response_question * 2  # invalid rows rank in their own group, 2q + 1
    if valid is not None:
        group = group + (~valid).long()
    if pairing == "index":
        already_grouped = bool((group[1:] >= group[:-1]).all())
        order = None if already_grouped else torch.argsort(group, stable=True)
    else:
        keys = torch.rand(n, generator=generator, dtype=torch.float64)
        by_key = torch.argsort(keys)
        order = gather(by_key, torch.argsort(gather(group, by_key), stable=True))
    group_counts = segment_counts(group, 2 * num_questions)
    starts = torch.cumsum(group_counts, 0) - group_counts
    if order is None:  # rows already sit in pairing order, grouped by question
        return torch.arange(n) - gather(starts, group)
    ranks_in_order = torch.arange(n) - gather(starts, gather(group, order))
    return torch.empty(n, dtype=torch.long).scatter_(0, order, ranks_in_order)


def form_papers(
    rewards: torch.Tensor,
    question_ids: torch.Tensor,
    bundle_ids: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    pairing: str = "index",
    generator: torch.Generator | None = None,
    allow_surplus: bool = False,
) -> Papers:
    """Cut responses into papers: paper j of a bundle = j-th valid response of each question.

    Structural checks use every row (masked ones included): n >= 2 per question, and equal
    counts within a bundle unless allow_surplus. Masked rows (valid False) never enter a paper;
    a bundle then has m_b = min over its questions that have valid responses, and valid
    responses beyond m_b stay unpaired (advantage 0 downstream).
    pairing "index" keeps order of appearance (the release); "permute" draws a random order per
    question from `generator`.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    _check_inputs(rewards, question_ids, bundle_ids, valid)
    response_question, num_questions = dense_ids(question_ids)
    response_bundle, num_bundles = dense_ids(bundle_ids)
    question_bundle = torch.zeros(num_questions, dtype=torch.long).scatter_(
        0, response_question, response_bundle
    )
    _check_structure(question_bundle, response_question, response_bundle, question_ids,
                     num_bundles, allow_surplus)

    ranks = _ranks_within_questions(response_question, valid, num_questions, pairing, generator)
    valid_counts = segment_counts(response_question, num_questions, valid)
    # questions without valid responses do not limit their bundle's paper count
    limiting_counts = torch.where(valid_counts > 0, valid_counts, _NO_LIMIT)
    papers_per_bundle = torch.full((num_bundles,), _NO_LIMIT).scatter_reduce(
        0, question_bundle, limiting_counts, "amin"
    )
    papers_per_bundle = torch.where(papers_per_bundle == _NO_LIMIT, 0, papers_per_bundle)
    paired = ranks < gather(papers_per_bundle, response_bundle)
    if valid is not None:
        paired &= valid
    first_paper = torch.cumsum(papers_per_bundle, 0) - papers_per_bundle
    response_paper = torch.where(paired, gather(first_paper, response_bundle) + ranks, -1)
    num_papers = int(papers_per_bundle.sum())
    paper_scores = torch.zeros(num_papers, dtype=torch.float64)
    if num_papers:
        paper_scores.index_add_(0, response_paper.clamp(min=0),
                                torch.where(paired, rewards.to(torch.float64), 0.0))
    paper_bundle = torch.repeat_interleave(torch.arange(num_bundles), papers_per_bundle)
    return Papers(response_question, response_bundle, response_paper, paper_bundle,
                  paper_scores, papers_per_bundle, num_questions, num_bundles)


def bundle_quantiles(papers: Papers, alpha: float, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bundle empirical quantiles (qa [K], qb [K]) of the paper scores; NaN for no papers."""
    levels = torch.tensor([alpha, beta], dtype=torch.float64)
    values = segment_quantiles(papers.paper_scores, papers.paper_bundle, papers.num_bundles, levels)
    return values[:, 0], values[:, 1]


def bundle_score_std(papers: Papers) -> torch.Tensor:
    """Unbiased std of each bundle's paper scores [K]; NaN with fewer than two papers."""
    return segment_std(papers.paper_scores, papers.paper_bundle, papers.num_bundles)


def question_reward_std(papers: Papers, rewards: torch.Tensor,
                        valid: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased std of each question's valid rewards [Q]; NaN with fewer than two."""
    return segment_std(rewards.to(torch.float64), papers.response_question, papers.num_questions,
                       valid)


def assign_credit(
    paper_advantages: torch.Tensor,
    papers: Papers,
    rewards: torch.Tensor,
    valid: torch.Tensor | None = None,
    mode: str = "uniform",
) -> torch.Tensor:
    """Give each paper's advantage back to its responses; unpaired/masked responses get 0.

    uniform: every response gets A(S_j). std: A(S_j) / sigma_q (sigma_q = unbiased std of the
    question's valid rewards; 1 when <= 1e-3 or undefined). sum_mean: A(S_j) * rho_k / sum(rho)
    with rho_k = r_k - mean_q, so shares sum to A(S_j); equal shares A(S_j) / (responses in the
    paper) when |sum(rho)| <= 1e-6. sum_mean can flip a response's sign (rho_k and sum(rho) of
    opposite signs) and gives 0 to every response of a question whose rewards are all equal.
    """
    if mode not in CREDITS:
        raise ValueError(f"credit must be one of {CREDITS}, got {mode!r}")
    paired = papers.paired
    if papers.paper_scores.numel() == 0:
        return torch.zeros_like(rewards, dtype=paper_advantages.dtype)
    paper_index = papers.response_paper.clamp(min=0)
    credit = torch.where(paired, gather(paper_advantages, paper_index), paper_advantages.new_zeros(()))
    if mode == "uniform":
        return credit
    if mode == "std":
        sigma = question_reward_std(papers, rewards, valid)
        sigma = torch.where(torch.isfinite(sigma) & (sigma > CREDIT_STD_FLOOR), sigma, 1.0)
        return credit / gather(sigma, papers.response_question)
    return credit * _sum_mean_shares(papers, rewards, valid, paper_index, paired)


def _sum_mean_shares(papers: Papers, rewards: torch.Tensor, valid: torch.Tensor | None,
                     paper_index: torch.Tensor, paired: torch.Tensor) -> torch.Tensor:
    rewards64 = rewards.to(torch.float64)
    question_mean = segment_mean(rewards64, papers.response_question, papers.num_questions, valid)
    rho = torch.where(paired, rewards64 - gather(question_mean, papers.response_question), 0.0)
    num_papers = papers.paper_scores.numel()
    rho_sum = segment_sum(rho, paper_index, num_papers)
    paper_size = segment_counts(paper_index, num_papers, paired).to(torch.float64)
    degenerate = rho_sum.abs() <= SUM_MEAN_FLOOR
    safe_sum = torch.where(degenerate, 1.0, rho_sum)
    shares = torch.where(gather(degenerate, paper_index), 1.0 / gather(paper_size.clamp(min=1), paper_index),
                         rho / gather(safe_sum, paper_index))
    return torch.where(paired, shares, 0.0)


__all__ = [
    "CREDITS", "PAIRINGS", "Papers", "assign_credit", "bundle_quantiles", "bundle_score_std",
    "consecutive_bundles", "form_papers", "question_reward_std",
]
