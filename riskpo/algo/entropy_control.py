"""Clip-Cov and KL-Cov, the covariance-based entropy controls of Cui et al. 2025, "The Entropy
Mechanism of Reinforcement Learning for Reasoning Language Models" (arXiv 2505.22617), as pure
token-level tensor functions for the policy loss (issue 15, section 3).

The paper shows that entropy falls where a token's log-prob and its advantage covary: a few
confident, high-advantage tokens drive the collapse. Both methods score every response token by
its centred covariance term and act on the highest-scoring few:
- Clip-Cov: a random subset of the tokens whose score lies in [cov_low, cov_high] is left out
  of the policy-gradient term (detached): clip_cov_mask returns them.
- KL-Cov: the top fraction of tokens by score get a penalty coef * |logprob - old_logprob|:
  kl_cov_penalty returns it per token.
Defaults are the paper's and its release's (github.com/PRIME-RL/Entropy-Mechanism-of-RL,
merged into verl as loss_mode clip_cov / kl_cov): Clip-Cov clip ratio 2e-4 with bounds 1 and 5;
KL-Cov k = 2e-3 (the release's k_percent = 0.2, in percent; the paper uses 2e-4 for its 32B
model) and coefficient 1.

The registered losses clip_cov and kl_cov (riskpo/algo/losses.py) take their options from
ClipCovOptions and KLCovOptions below (`algorithm.loss.options.*`) and select over the whole
mini-batch of a rank, as the release does, in a no-grad pass before its micro-batches, so the
selection does not depend on the micro-batch split.

Shapes: logprobs, old_logprobs, response_mask [B, T]; advantages [B] (one per response,
broadcast to its tokens) or [B, T]. Scores are computed on detached float64 copies, centred
over the masked tokens of the tensors given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from riskpo.algo.ppo import LOG_RATIO_CLAMP
from riskpo.options import require


@dataclass
class ClipCovOptions:
    """Clip-Cov's options (`algorithm.loss.options` with `algorithm.loss.name=clip_cov`): a
    random `fraction` of the tokens whose log-prob/advantage covariance lies in [low, high] get
    no policy gradient. Defaults: the paper's r = 2e-4, bounds 1 and 5."""

    fraction: float = 2e-4
    low: float = 1.0
    high: float = 5.0

    def check(self, key: str) -> None:
        require(0.0 <= self.fraction <= 1.0, f"{key}.fraction", "must lie in [0, 1]")
        require(self.low <= self.high, f"{key}.low", f"low {self.low} > high {self.high}")


@dataclass
class KLCovOptions:
    """KL-Cov's options (`algorithm.loss.options` with `algorithm.loss.name=kl_cov`): the top
    `fraction` of tokens by covariance get a penalty coef * |log-prob - old log-prob|.
    Defaults: the release's k = 2e-3 (k_percent 0.2) and coefficient 1."""

    fraction: float = 2e-3
    coef: float = 1.0

    def check(self, key: str) -> None:
        require(0.0 <= self.fraction <= 1.0, f"{key}.fraction", "must lie in [0, 1]")
        require(0.0 <= self.coef < math.inf, f"{key}.coef", "must be finite and >= 0")


def _token_advantages(advantages: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """advantages [B] or [B, T] -> [B, T] float64 (detached)."""
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    if advantages.dim() != 2 or advantages.shape[0] != logprobs.shape[0]:
        raise ValueError(f"advantages {tuple(advantages.shape)} must be [B] or [B, T] for logprobs "
                         f"{tuple(logprobs.shape)}")
    return advantages.detach().to(torch.float64).expand(logprobs.shape)


def _check_tokens(logprobs: torch.Tensor, response_mask: torch.Tensor,
                  old_logprobs: torch.Tensor | None = None) -> torch.Tensor:
    """Shape and finiteness checks; returns the mask as bool [B, T]."""
    shapes = [logprobs.shape, response_mask.shape]
    if old_logprobs is not None:
        shapes.append(old_logprobs.shape)
    if logprobs.dim() != 2 or any(shape != logprobs.shape for shape in shapes):
        raise ValueError(f"logprobs, old_logprobs, response_mask must share one [B, T] shape, got "
                         f"{[tuple(shape) for shape in shapes]}")
    mask = response_mask.bool()
    for name, tensor in (("logprobs", logprobs), ("old_logprobs", old_logprobs)):
        if tensor is not None:
            bad = mask & ~torch.isfinite(tensor.detach())
            if bad.any():
                row, token = bad.nonzero()[0].tolist()
                raise ValueError(f"{name}[{row}, {token}] is {tensor[row, token].item()}, not finite, "
                                 "inside the response mask")
    return mask


def token_covariance(logprobs: torch.Tensor, advantages: torch.Tensor,
                     response_mask: torch.Tensor) -> torch.Tensor:
    """Per-token covariance score (A_t - mean A) * (logprob_t - mean logprob), means over the
    masked tokens (token-weighted: a response's advantage counts once per token). [B, T]
    float64, detached, 0 outside the mask.
    """
    mask = _check_tokens(logprobs, response_mask)
    token_advantages = _token_advantages(advantages, logprobs)
    if not torch.isfinite(token_advantages[mask]).all():
        raise ValueError("advantages must be finite on the masked tokens")
    values = logprobs.detach().to(torch.float64)
    count = mask.sum().clamp(min=1)
    zero = torch.zeros((), dtype=torch.float64, device=values.device)
    mean_advantage = torch.where(mask, token_advantages, zero).sum() / count
    mean_logprob = torch.where(mask, values, zero).sum() / count
    covariance = (token_advantages - mean_advantage) * (values - mean_logprob)
    return torch.where(mask, covariance, zero)


def _selection_size(fraction: float, num_tokens: int) -> int:
    """max(1, floor(fraction * num_tokens)), or 0 when the fraction or the token count is 0
    (the release's rounding; a zero fraction switches the method off)."""
    if fraction == 0.0 or num_tokens == 0:
        return 0
    return max(1, math.floor(fraction * num_tokens))


def _check_fraction(name: str, fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {fraction}")


def ppo_clipped_tokens(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                       clip_low: float, clip_high: float) -> torch.Tensor:
    """Tokens where PPO's clipped term is the one taken, -A clip(ratio) > -A ratio: [B, T] bool.

    The same test as riskpo.algo.losses.policy_loss's clip_fraction metric (ratio from the log-ratio
    clamped to [-20, 20]); such tokens already carry no gradient.
    """
    token_advantages = _token_advantages(advantages, logprobs)
    log_ratio = (logprobs.detach() - old_logprobs.detach()).to(torch.float64)
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    clipped_ratio = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return -token_advantages * clipped_ratio > -token_advantages * ratio


def clip_cov_mask(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  response_mask: torch.Tensor, *, generator: torch.Generator,
                  clip_fraction: float = 2e-4, cov_low: float = 1.0, cov_high: float = 5.0,
                  skip_ppo_clipped: bool = True, clip_low: float = 0.2,
                  clip_high: float = 0.2) -> torch.Tensor:
    """Clip-Cov (Cui et al. 2025, arXiv 2505.22617): tokens whose policy-gradient term must be
    detached, [B, T] bool.

    Candidates: masked tokens with covariance score in [cov_low, cov_high] (closed, as the
    paper writes it; the release uses the open interval, which differs only on exact ties).
    With skip_ppo_clipped (the release's behaviour) tokens where PPO's clip is already taken
    (ppo_clipped_tokens with clip_low / clip_high) are not candidates. Of them,
    max(1, floor(clip_fraction * masked tokens)) are drawn uniformly without replacement (all
    when fewer): candidates in row-major order, the first ones of
    torch.randperm(count, generator=generator). The generator is required so that a run
    (and its resume) is reproducible. Defaults: the paper's r = 2e-4, bounds 1 and 5.
    """
    _check_fraction("clip_fraction", clip_fraction)
    if not cov_low <= cov_high:
        raise ValueError(f"Clip-Cov needs cov_low <= cov_high, got {cov_low}, {cov_high}")
    mask = _check_tokens(logprobs, response_mask, old_logprobs)
    covariance = token_covariance(logprobs, advantages, mask)
    candidates = mask & (covariance >= cov_low) & (covariance <= cov_high)
    if skip_ppo_clipped:
        candidates &= ~ppo_clipped_tokens(logprobs, old_logprobs, advantages, clip_low, clip_high)
    candidate_index = candidates.flatten().nonzero().squeeze(1)  # [C] row-major
    wanted = _selection_size(clip_fraction, int(mask.sum()))
    chosen = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    if wanted and candidate_index.numel():
        order = torch.randperm(candidate_index.numel(), generator=generator, device=generator.device)
        chosen[candidate_index[order[:wanted].to(mask.device)]] = True
    return chosen.view(mask.shape)


def kl_cov_mask(logprobs: torch.Tensor, advantages: torch.Tensor, response_mask: torch.Tensor, *,
                top_fraction: float = 2e-3) -> torch.Tensor:
    """KL-Cov's selection (Cui et al. 2025, arXiv 2505.22617): the max(1, floor(top_fraction *
    masked tokens)) masked tokens with the largest covariance score, [B, T] bool. Ties at the
    cut go to the earliest tokens in row-major order (deterministic on every device).
    """
    _check_fraction("top_fraction", top_fraction)
    mask = _check_tokens(logprobs, response_mask)
    covariance = token_covariance(logprobs, advantages, mask)
    masked_index = mask.flatten().nonzero().squeeze(1)  # [M] row-major
    scores = covariance.flatten()[masked_index]
    wanted = _selection_size(top_fraction, masked_index.numel())
    chosen = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    if wanted:
        cut = torch.topk(scores, wanted).values[-1]  # the wanted-th largest score
        above = scores > cut
        at_cut = scores == cut
        room = wanted - int(above.sum())
        take = above | (at_cut & (torch.cumsum(at_cut.long(), 0) <= room))
        chosen[masked_index[take]] = True
    return chosen.view(mask.shape)


def kl_cov_penalty(logprobs: torch.Tensor, old_logprobs: torch.Tensor, selected: torch.Tensor, *,
                   coef: float = 1.0) -> torch.Tensor:
    """KL-Cov (Cui et al. 2025, arXiv 2505.22617): per-token penalty coef * |logprob -
    old_logprob| on the selected tokens (kl_cov_mask), 0 elsewhere, [B, T] in logprobs' dtype
    and differentiable in logprobs. In the release, and in the registered kl_cov loss, it is
    added to the unclipped surrogate -A * ratio: the penalty is the only trust region.
    """
    if not 0.0 <= coef < math.inf:
        raise ValueError(f"KL-Cov coef must be finite and >= 0, got {coef}")
    if selected.shape != logprobs.shape or old_logprobs.shape != logprobs.shape:
        raise ValueError(f"logprobs, old_logprobs, selected must share one [B, T] shape, got "
                         f"{tuple(logprobs.shape)}, {tuple(old_logprobs.shape)}, {tuple(selected.shape)}")
    penalty = coef * (logprobs - old_logprobs.detach()).abs()
    return torch.where(selected, penalty, torch.zeros_like(penalty))
