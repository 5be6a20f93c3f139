"""Policy losses on token log-probs (docs/algorithm.md section 7): PPO clipped surrogate with
separate low/high clip, dual clip, truncated importance sampling, loss aggregation modes, KL
estimators and entropy; the loss options (`algorithm.loss.*`) and the objective of one
micro-batch that the learner minimises.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from riskpo.algo.entropy_control import clip_cov_mask, kl_cov_penalty
from riskpo.options import join, one_of, require

# paper_mean: the mean over papers of the mean over each paper's responses (RiskPO, ICLR paper),
# with per-response weights from the estimator.
AGGREGATIONS = ("token_mean", "seq_mean_token_sum", "seq_mean_token_mean", "paper_mean")
RATIO_LEVELS = ("token", "sequence")  # PPO's token ratio, or GSPO's length-normalised sequence one
# Importance sampling between the policy that sampled (the rollout engine's log-probs) and the
# learner's old policy: none, per token, or per response; truncated at importance_cap. auto:
# token when the loop trains on rollouts of older weights (trainer.off_policy_steps > 0).
IMPORTANCE_CORRECTIONS = ("auto", "none", "token", "sequence")
ENTROPY_CONTROLS = ("none", "clip_cov", "kl_cov")
KL_KINDS = {"k1": "k1", "kl": "k1", "k2": "k2", "mse": "k2", "k3": "k3", "low_var_kl": "k3"}
LOG_RATIO_CLAMP = 20.0  # exp() arguments are clamped to [-20, 20], as verl does


@dataclass
class ClipCovConfig:
    """Clip-Cov (Cui et al. 2025, arXiv 2505.22617): a random `fraction` of the tokens whose
    log-prob/advantage covariance lies in [low, high] get no policy gradient."""

    fraction: float = 2e-4
    low: float = 1.0
    high: float = 5.0

    def check(self, key: str) -> None:
        require(0.0 <= self.fraction <= 1.0, f"{key}.fraction", "must lie in [0, 1]")
        require(self.low <= self.high, f"{key}.low", f"low {self.low} > high {self.high}")


@dataclass
class KLCovConfig:
    """KL-Cov (same paper): the top `fraction` of tokens by covariance get a penalty
    coef * |log-prob - old log-prob|."""

    fraction: float = 2e-3
    coef: float = 1.0

    def check(self, key: str) -> None:
        require(0.0 <= self.fraction <= 1.0, f"{key}.fraction", "must lie in [0, 1]")
        require(self.coef >= 0.0, f"{key}.coef", "must be >= 0")


@dataclass
class LossConfig:
    """The policy-gradient loss (`algorithm.loss`): one PPO term, optional KL and entropy."""

    clip_low: float = 0.2  # PPO ratio clip below 1 (eps_low)
    clip_high: float = 0.2  # above 1 (eps_high; DAPO's clip-higher raises it)
    dual_clip: float | None = 3.0  # c of dual-clip PPO; null disables
    aggregation: str = "token_mean"  # see AGGREGATIONS
    kl_coef: float = 0.0  # 0: no reference model is loaded
    kl_kind: str = "low_var_kl"  # see KL_KINDS
    entropy_coef: float = 0.0
    importance_correction: str = "auto"  # see IMPORTANCE_CORRECTIONS
    importance_cap: float = 2.0  # truncation of the importance weights
    ppo_epochs: int = 1
    ratio: str = "token"  # see RATIO_LEVELS
    entropy_control: str = "none"  # see ENTROPY_CONTROLS
    clip_cov: ClipCovConfig = field(default_factory=ClipCovConfig)
    kl_cov: KLCovConfig = field(default_factory=KLCovConfig)

    def check(self, key: str) -> None:
        require(0.0 <= self.clip_low < 1.0, f"{key}.clip_low", f"{self.clip_low} outside [0, 1)")
        require(self.clip_high >= 0.0, f"{key}.clip_high", "must be >= 0")
        require(self.dual_clip is None or self.dual_clip > 1.0, f"{key}.dual_clip",
                f"{self.dual_clip}: the dual-clip constant must be > 1", "e.g. 3.0, or null to disable")
        one_of(self.aggregation, AGGREGATIONS, f"{key}.aggregation")
        one_of(self.kl_kind, KL_KINDS, f"{key}.kl_kind")
        require(self.kl_coef >= 0.0, f"{key}.kl_coef", "must be >= 0 (0: no reference model)")
        require(self.entropy_coef >= 0.0, f"{key}.entropy_coef", "must be >= 0")
        one_of(self.importance_correction, IMPORTANCE_CORRECTIONS, f"{key}.importance_correction")
        require(self.importance_cap >= 1.0, f"{key}.importance_cap",
                f"{self.importance_cap}: a cap on importance weights below 1 discards on-policy samples",
                "use >= 1 (e.g. 2.0)")
        require(self.ppo_epochs >= 1, f"{key}.ppo_epochs", "must be >= 1")
        one_of(self.ratio, RATIO_LEVELS, f"{key}.ratio")
        one_of(self.entropy_control, ENTROPY_CONTROLS, f"{key}.entropy_control")
        self.clip_cov.check(join(key, "clip_cov"))
        self.kl_cov.check(join(key, "kl_cov"))

    @property
    def uses_reference_model(self) -> bool:
        return self.kl_coef > 0


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean",
              denominator: float | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce per-token values [B, T] under a response mask [B, T] to a scalar.

    token_mean: sum over all tokens / number of tokens. seq_mean_token_sum: per-sequence token
    sum, averaged over sequences. seq_mean_token_mean: per-sequence token mean, averaged over
    sequences. paper_mean: per-sequence token means weighted by `weights` [B] (the estimator's
    loss weights), divided by their sum. Sequences with no tokens count in the sequence
    average with 0. `denominator` overrides the token count (token_mean), sequence count
    (seq_*) or weight sum (paper_mean) -- for normalising by a global count across
    micro-batches or ranks.
    """
    if values.shape != mask.shape or values.dim() != 2:
        raise ValueError(f"aggregate needs equal [B, T] shapes, got {tuple(values.shape)} and {tuple(mask.shape)}")
    mask = mask.to(values.dtype)
    token_sums = (values * mask).sum(dim=-1)  # [B]
    if mode == "token_mean":
        count = mask.sum() if denominator is None else torch.as_tensor(denominator, dtype=values.dtype)
        return token_sums.sum() / count.clamp(min=1)
    if mode == "seq_mean_token_sum":
        per_sequence = token_sums
    elif mode == "seq_mean_token_mean":
        per_sequence = token_sums / mask.sum(dim=-1).clamp(min=1)
    elif mode == "paper_mean":
        if weights is None:
            raise ValueError("aggregation paper_mean needs per-sequence weights")
        weights = weights.to(values.dtype)
        per_sequence = weights * token_sums / mask.sum(dim=-1).clamp(min=1)
        total = weights.sum() if denominator is None else torch.as_tensor(denominator, dtype=values.dtype)
        return per_sequence.sum() / total.clamp(min=torch.finfo(values.dtype).tiny)
    else:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {mode!r}")
    count = values.shape[0] if denominator is None else denominator
    return per_sequence.sum() / max(float(count), 1.0)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
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


def _checked_advantages(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
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


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
    aggregation: str = "token_mean",
    rollout_logprobs: torch.Tensor | None = None,
    correction: str = "none",
    correction_cap: float = 2.0,
    ratio_level: str = "token",
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate, dual-clipped for negative advantages.

    logprobs, old_logprobs, response_mask: [B, T]; advantages: [B] (broadcast to tokens) or
    [B, T]. Per token: ratio = importance_ratio (token or sequence level); loss = max(-A*ratio,
    -A*clip(ratio, 1-clip_low, 1+clip_high)); where A < 0 it is further capped at -A*dual_clip
    (dual_clip None disables). correction "token" / "sequence" weighs each token loss by the
    truncated importance weight importance_weights() gives (rollout_logprobs needed).
    weights: per-sequence weights for paper_mean. Metrics: clip_fraction (share of tokens
    where the clipped term is taken), dual_clip_fraction, approx_kl (mean old - new), and with
    a correction is_mean and is_truncated_fraction.
    """
    advantages = _checked_advantages(logprobs, old_logprobs, advantages, response_mask)
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
    metrics: dict[str, float] = {}
    if correction != "none":
        if rollout_logprobs is None:
            raise ValueError(f"importance correction {correction!r} needs the rollout log-probs")
        weight, truncated = importance_weights(old_logprobs, rollout_logprobs, response_mask,
                                               correction, correction_cap)
        token_loss = token_loss * weight
        metrics["is_mean"] = _masked_mean(weight, response_mask).item()
        metrics["is_truncated_fraction"] = _masked_mean(truncated.to(weight.dtype), response_mask).item()
    loss = aggregate(token_loss, response_mask, aggregation, weights=weights)
    with torch.no_grad():
        clip_taken = (-advantages * clipped_ratio > unclipped).to(logprobs.dtype)
        metrics.update({
            "clip_fraction": _masked_mean(clip_taken, response_mask).item(),
            "dual_clip_fraction": _masked_mean(dual_clipped.to(logprobs.dtype), response_mask).item(),
            "approx_kl": _masked_mean(old_logprobs - logprobs, response_mask).item(),
        })
    return loss, metrics


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL(policy || reference) estimate [B, T] from sampled-token log-probs.

    k1 ("kl"): log p - log r. k2 ("mse"): (log p - log r)^2 / 2. k3 ("low_var_kl"):
    exp(log r - log p) - (log r - log p) - 1 with the log ratio clamped to [-20, 20] and the
    result to [-10, 10], as verl does.
    """
    if kind not in KL_KINDS:
        raise ValueError(f"KL kind must be one of {sorted(KL_KINDS)}, got {kind!r}")
    log_ratio = logprobs - ref_logprobs
    estimator = KL_KINDS[kind]
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    reverse = (-log_ratio).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (torch.exp(reverse) - reverse - 1.0).clamp(-10.0, 10.0)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last axis, [B, T, V] -> [B, T].

    logsumexp(z) - E_p[z] on max-shifted logits z, so large logits lose no precision.
    """
    shifted = logits - logits.amax(dim=-1, keepdim=True).detach()
    probabilities = torch.softmax(shifted, dim=-1)
    return torch.logsumexp(shifted, dim=-1) - (probabilities * shifted).sum(dim=-1)


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(input_ids[:, t+1] | prefix) for every t from logits [B, L, V]: [B, L-1], in float32,
    at the sampling temperature (logits are divided by it, as the rollout engine sampled)."""
    scaled = logits[:, :-1].float() / temperature
    targets = input_ids[:, 1:].unsqueeze(-1)
    return torch.log_softmax(scaled, dim=-1).gather(-1, targets).squeeze(-1)


# Per-micro-batch sums the objective reports; the learner adds them over micro-batches and
# ranks and divides the token-weighted ones by "tokens".
TOKEN_WEIGHTED_METRICS = ("clip_fraction", "approx_kl", "entropy", "kl", "cov_detached_fraction",
                          "is_mean", "is_truncated_fraction")


def resolved_correction(config: LossConfig) -> str:
    """The importance correction the loss applies ("auto" is settled by the run config from
    trainer.off_policy_steps before a learner starts; a bare LossConfig means on-policy)."""
    return "none" if config.importance_correction == "auto" else config.importance_correction


def micro_batch_objective(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    advantages: torch.Tensor,
    old_logprobs: torch.Tensor,
    config: LossConfig,
    *,
    loss_units: float,
    temperature: float,
    rollout_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    loss_weights: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """This micro-batch's share of the objective of its whole mini-batch, and its metric sums.

    logits [B, L, V] of the policy on input_ids [B, L]; response_mask, old/rollout/ref
    log-probs [B, L-1] aligned with the targets input_ids[:, 1:]; advantages [B]; loss_weights
    [B] (paper_mean). loss_units is the mini-batch's global normaliser (loss tokens for
    token_mean, rows for seq_mean_*, the weight sum for paper_mean, over all micro-batches and
    ranks), so the shares of all micro-batches add up to
        PPO term (+ KL-Cov penalty) - entropy_coef * entropy + kl_coef * KL
    of the whole mini-batch, each term aggregated as config.aggregation says. Clip-Cov leaves
    the selected tokens out of the PPO term (generator draws them); both covariance methods
    score the tokens of this micro-batch.
    """
    mask = response_mask
    logprobs = token_logprobs(logits, input_ids, temperature)
    loss, pg_metrics = _policy_term(logprobs, mask, advantages, old_logprobs, config, loss_units,
                                    rollout_logprobs, loss_weights, generator)

    def share(values: torch.Tensor) -> torch.Tensor:
        return aggregate(values, mask, config.aggregation, loss_units, loss_weights)

    entropy = entropy_from_logits(logits[:, :-1].float() / temperature)
    if config.entropy_coef > 0:
        loss = loss - config.entropy_coef * share(entropy)
    kl = torch.zeros_like(logprobs)
    if config.uses_reference_model:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 but no reference log-probs were given")
        kl = kl_penalty(logprobs, ref_logprobs, config.kl_kind)
        loss = loss + config.kl_coef * share(kl)
    if config.entropy_control == "kl_cov":
        loss = loss + share(kl_cov_penalty(logprobs, old_logprobs, advantages, mask,
                                           top_fraction=config.kl_cov.fraction, coef=config.kl_cov.coef))
    return loss, _metric_sums(loss, mask, pg_metrics, entropy, kl)


def _metric_sums(loss: torch.Tensor, mask: torch.Tensor, pg_metrics: dict[str, float],
                 entropy: torch.Tensor, kl: torch.Tensor) -> dict[str, float]:
    """A micro-batch's metrics as sums (token-weighted where per token), to average later."""
    tokens = float(mask.sum().item())
    return {
        "loss": loss.item(),
        "tokens": tokens,
        "clip_fraction": pg_metrics["clip_fraction"] * tokens,
        "approx_kl": pg_metrics["approx_kl"] * tokens,
        "entropy": _masked_sum(entropy.detach(), mask),
        "kl": _masked_sum(kl.detach(), mask),
        "cov_detached_fraction": pg_metrics.get("cov_detached_fraction", 0.0),
        # importance weights (1 and none truncated without a correction), token-weighted
        "is_mean": pg_metrics.get("is_mean", 1.0) * tokens,
        "is_truncated_fraction": pg_metrics.get("is_truncated_fraction", 0.0) * tokens,
    }


def _policy_term(logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
                 old_logprobs: torch.Tensor, config: LossConfig, loss_units: float,
                 rollout_logprobs: torch.Tensor | None, loss_weights: torch.Tensor | None,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, float]]:
    """The PPO term's share of the mini-batch loss (Clip-Cov's tokens detached first)."""
    detached = 0.0
    if config.entropy_control == "clip_cov":
        chosen = clip_cov_mask(logprobs, old_logprobs, advantages, mask, generator=generator,
                               clip_fraction=config.clip_cov.fraction, cov_low=config.clip_cov.low,
                               cov_high=config.clip_cov.high, clip_low=config.clip_low,
                               clip_high=config.clip_high)
        logprobs = torch.where(chosen, logprobs.detach(), logprobs)
        detached = float(chosen.sum())
    pg_loss, metrics = policy_loss(
        logprobs, old_logprobs, advantages, mask,
        clip_low=config.clip_low, clip_high=config.clip_high, dual_clip=config.dual_clip,
        aggregation=config.aggregation,
        rollout_logprobs=rollout_logprobs, correction=resolved_correction(config),
        correction_cap=config.importance_cap, ratio_level=config.ratio, weights=loss_weights,
    )
    if config.aggregation == "token_mean":
        micro_units = mask.sum().item()
    elif config.aggregation == "paper_mean":
        micro_units = float(loss_weights.sum()) if loss_weights is not None else 0.0
    else:
        micro_units = mask.shape[0]
    metrics["cov_detached_fraction"] = detached
    return pg_loss * (micro_units / loss_units), metrics


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float((values * mask).sum().item())
