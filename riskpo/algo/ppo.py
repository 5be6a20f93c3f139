"""The PPO clipped surrogate per token (separate low/high clip, dual clip, token or sequence
ratios) and truncated importance sampling against the policy that sampled (docs/algorithm.md
section 7): pure tensor functions the registered policy losses (riskpo/algo/losses.py) build on.

Shapes: logprobs, old_logprobs, rollout_logprobs, response_mask [B, T]; advantages [B]
(broadcast to the tokens of each response) or [B, T].
"""

from __future__ import annotations

import torch

RATIO_LEVELS = ("token", "sequence")  # PPO's token ratio, or GSPO's length-normalised sequence one
LOG_RATIO_CLAMP = 20.0  # exp() arguments are clamped to [-20, 20], as verl does


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values over the masked entries (0 when none)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def importance_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, response_mask: torch.Tensor,
                     level: str = "token") -> torch.Tensor:
    """pi / pi_old per token [B, T]: token level (PPO), or the response's length-normalised
    sequence ratio (pi(y) / pi_old(y))^(1/|y|) = exp(mean log-ratio over its tokens), broadcast
    to its tokens (GSPO, and the RiskPO paper)."""
    log_ratio = logprobs - old_logprobs
    if level == "sequence":
        mask = response_mask.to(log_ratio.dtype)
        per_sequence = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
        log_ratio = per_sequence.expand_as(logprobs)
    elif level != "token":
        raise ValueError(f"ratio level must be one of {RATIO_LEVELS}, got {level!r}")
    return torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def importance_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor,
                       response_mask: torch.Tensor, level: str,
                       cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance weights [B, T] of the learner's old policy against the policy that
    sampled (detached), and where the truncation bit: per token min(pi_old/pi_rollout, cap),
    or per response min(prod_t pi_old/pi_rollout, cap) broadcast to its tokens."""
    log_ratio = (old_logprobs - rollout_logprobs) * response_mask
    if level == "sequence":
        log_ratio = log_ratio.sum(-1, keepdim=True).expand_as(old_logprobs)
    elif level != "token":
        raise ValueError(f"importance correction must be token or sequence, got {level!r}")
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)).detach()
    return ratio.clamp(max=cap), ratio > cap


def checked_advantages(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                       response_mask: torch.Tensor) -> torch.Tensor:
    """Advantages as [B, 1] or [B, T] in the log-probs' dtype, after the shapes are checked."""
    if logprobs.shape != old_logprobs.shape or logprobs.shape != response_mask.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)}, "
                         f"response_mask {tuple(response_mask.shape)} must agree")
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    if advantages.shape[0] != logprobs.shape[0]:
        raise ValueError(f"advantages {tuple(advantages.shape)} do not match batch {logprobs.shape[0]}")
    return advantages.to(logprobs.dtype)


def ppo_token_losses(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
    ratio_level: str = "token",
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate per token [B, T], dual-clipped for negative advantages.

    Per token: ratio = importance_ratio (token or sequence level); loss = max(-A*ratio,
    -A*clip(ratio, 1-clip_low, 1+clip_high)); where A < 0 it is further capped at -A*dual_clip
    (dual_clip None disables). Metrics over the masked tokens: clip_fraction (share where the
    clipped term is taken), dual_clip_fraction, approx_kl (mean old - new).
    """
    advantages = checked_advantages(logprobs, old_logprobs, advantages, response_mask)
    ratio = importance_ratio(logprobs, old_logprobs, response_mask, ratio_level)
    unclipped = -advantages * ratio
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped = torch.maximum(unclipped, -advantages * clipped_ratio)
    token_loss = clipped
    dual_clipped = torch.zeros_like(clipped, dtype=torch.bool)
    if dual_clip is not None:
        cap = -advantages * dual_clip
        dual_clipped = (advantages < 0) & (clipped > cap)
        token_loss = torch.where(advantages < 0, torch.minimum(clipped, cap), clipped)
    with torch.no_grad():
        clip_taken = (-advantages * clipped_ratio > unclipped).to(logprobs.dtype)
        metrics = {
            "clip_fraction": masked_mean(clip_taken, response_mask).item(),
            "dual_clip_fraction": masked_mean(dual_clipped.to(logprobs.dtype), response_mask).item(),
            "approx_kl": masked_mean(old_logprobs - logprobs, response_mask).item(),
        }
    return token_loss, metrics


def unclipped_token_losses(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                           response_mask: torch.Tensor, *,
                           ratio_level: str = "token") -> tuple[torch.Tensor, dict[str, float]]:
    """The plain importance-weighted surrogate -A * ratio per token [B, T] (no clip), with
    ppo_token_losses' metrics (clip fractions 0)."""
    advantages = checked_advantages(logprobs, old_logprobs, advantages, response_mask)
    token_loss = -advantages * importance_ratio(logprobs, old_logprobs, response_mask, ratio_level)
    with torch.no_grad():
        metrics = {"clip_fraction": 0.0, "dual_clip_fraction": 0.0,
                   "approx_kl": masked_mean(old_logprobs - logprobs, response_mask).item()}
    return token_loss, metrics
