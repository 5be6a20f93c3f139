"""The policy loss (docs/algorithm.md section 7): a registry of losses on token log-probs -- the
PPO clipped surrogate ("ppo") and the covariance-based entropy controls Clip-Cov ("clip_cov")
and KL-Cov ("kl_cov") -- with what each needs from the learner; the options they share
(`algorithm.loss.*`: clip, dual clip, aggregation, ratio level, truncated importance sampling,
KL to a reference, entropy bonus, PPO epochs); and the objective of one micro-batch that the
learner minimises. Adding a loss is one class decorated with register_policy_loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields
from difflib import get_close_matches
from typing import Any, ClassVar

import torch

from riskpo.algo.aggregation import AGGREGATIONS, get_aggregation
from riskpo.algo.entropy_control import (
    ClipCovOptions,
    KLCovOptions,
    clip_cov_mask,
    kl_cov_mask,
    kl_cov_penalty,
)
from riskpo.algo.kl import DEFAULT_KL_KIND, KL_KINDS, kl_penalty, kl_term
from riskpo.algo.ppo import (
    RATIO_LEVELS,
    importance_weights,
    masked_mean,
    ppo_token_losses,
    unclipped_token_losses,
)
from riskpo.options import ConfigError, join, one_of, require

# Importance sampling between the policy that sampled (the rollout engine's log-probs) and the
# learner's old policy: none, per token, or per response; truncated at importance_cap. auto:
# token when the loop trains on rollouts of older weights (trainer.off_policy_steps > 0).
IMPORTANCE_CORRECTIONS = ("auto", "none", "token", "sequence")


@dataclass
class LossConfig:
    """The policy-gradient loss (`algorithm.loss`): the registered loss `name` with its own
    options (`options`: an instance of the options class it registered, or its fields as a
    mapping; None: its defaults), the PPO options every loss shares, and the optional KL and
    entropy terms. check() leaves `options` typed."""

    name: str = "ppo"  # a key of POLICY_LOSSES
    options: Any = None  # the loss's own options (its options_class; launch/config.py registers
    # each as the config group algorithm/loss/options/<name>, which a preset selects)
    clip_low: float = 0.2  # PPO ratio clip below 1 (eps_low)
    clip_high: float = 0.2  # above 1 (eps_high; DAPO's clip-higher raises it)
    dual_clip: float | None = 3.0  # c of dual-clip PPO; null disables
    aggregation: str = "token_mean"  # a key of riskpo.algo.aggregation.AGGREGATIONS
    kl_coef: float = 0.0  # 0: no reference model is loaded
    kl_kind: str = DEFAULT_KL_KIND  # see riskpo.algo.kl
    entropy_coef: float = 0.0
    importance_correction: str = "auto"  # see IMPORTANCE_CORRECTIONS
    importance_cap: float = 2.0  # truncation of the importance weights
    ppo_epochs: int = 1
    ratio: str = "token"  # see riskpo.algo.ppo.RATIO_LEVELS

    def check(self, key: str) -> None:
        one_of(self.name, POLICY_LOSSES, f"{key}.name")
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
        self.options = loss_options(self, key)

    @property
    def uses_reference_model(self) -> bool:
        return self.kl_coef > 0

    @property
    def needs(self) -> LearnerNeeds:
        """What the learner computes for this loss besides the training forwards."""
        loss_class = POLICY_LOSSES[self.name]
        return LearnerNeeds(old_logprobs_from_training_forward=loss_class.old_logprobs_from_training_forward,
                            mini_batch_pre_pass=loss_class.mini_batch_pre_pass,
                            reference_model=self.uses_reference_model)


@dataclass(frozen=True)
class LearnerNeeds:
    """The passes a loss needs from the learner (workers/learner plans a step from these).

    old_logprobs_from_training_forward: whether an on-policy step with a single update (one
    PPO epoch, one mini-batch) may take the old log-probs from its own (detached) training
    forward instead of a separate no-grad pass: their values are the same (issue 25).
    mini_batch_pre_pass: a no-grad forward over each mini-batch (per rank) before its
    micro-batches, whose log-probs the loss selects tokens from (PolicyLoss.select); such a
    loss reads old log-probs before any training forward, so they come from a separate pass.
    reference_model: the frozen reference's log-probs (the KL term is on).
    """

    old_logprobs_from_training_forward: bool
    mini_batch_pre_pass: bool
    reference_model: bool


class PolicyLoss(ABC):
    """A registered policy loss: per-token losses [B, T] of the sampled tokens from the policy's
    log-probs, the old policy's and the advantages (aggregated, importance-weighted and joined
    with the KL and entropy terms by micro_batch_objective), and what it needs from the learner.
    `options_class`: its own options dataclass (None: it has none)."""

    name: ClassVar[str]
    options_class: ClassVar[type | None] = None
    mini_batch_pre_pass: ClassVar[bool] = False
    old_logprobs_from_training_forward: ClassVar[bool] = True

    def __init__(self, config: LossConfig, options: Any = None) -> None:
        self.config, self.options = config, options
        self.aggregation = get_aggregation(config.aggregation)

    def select(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
               response_mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The pre-pass's token selection [B, T] bool over a whole mini-batch (of a rank), from
        the log-probs of the policy as it trains on that mini-batch. Only for losses that
        declare mini_batch_pre_pass."""
        raise TypeError(f"policy loss {self.name} declares no mini-batch pre-pass")

    @abstractmethod
    def token_losses(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                     response_mask: torch.Tensor,
                     selected: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """Per-token losses [B, T] and metrics (clip_fraction, dual_clip_fraction, approx_kl;
        cov_detached_fraction: the number of tokens a selection acted on). `selected`: this
        micro-batch's rows of the pre-pass selection (None without a pre-pass)."""


POLICY_LOSSES: dict[str, type[PolicyLoss]] = {}


def register_policy_loss(loss_class: type[PolicyLoss]) -> type[PolicyLoss]:
    """Class decorator: makes the loss available as `algorithm.loss.name=<its name>`."""
    if loss_class.name in POLICY_LOSSES:
        raise ValueError(f"policy loss {loss_class.name!r} is registered twice")
    POLICY_LOSSES[loss_class.name] = loss_class
    return loss_class


def loss_options(config: LossConfig, key: str = "algorithm.loss") -> Any:
    """The loss's options as an instance of its options class, checked (None for a loss without
    options). config.options may be that instance, a mapping of its fields, or None (the
    class's defaults); ConfigError names a field the class does not declare (and the nearest
    one that it does), a value of the wrong type, or options of another loss."""
    loss_class = POLICY_LOSSES[config.name]
    options_class, given = loss_class.options_class, config.options
    if isinstance(given, Mapping) and not given:
        given = None
    if options_class is None or isinstance(given, options_class):
        require(given is None or options_class is not None, join(key, "options"),
                f"policy loss {config.name} has no options, got {given!r}", f"remove {key}.options")
        if given is not None:
            given.check(join(key, "options"))
        return given
    if given is None:
        return options_class()
    require(isinstance(given, Mapping), join(key, "options"),
            f"{type(given).__name__}, but {key}.name={config.name} takes {options_class.__name__}",
            f"select its options with {key.replace('.', '/')}/options={config.name}")
    declared = {f.name: f for f in fields(options_class)}
    for name, value in given.items():
        if name not in declared:
            nearest = get_close_matches(str(name), list(declared), n=1)
            raise ConfigError(join(key, f"options.{name}"), f"policy loss {config.name} has no option {name!r}",
                              f"did you mean {key}.options.{nearest[0]}?" if nearest
                              else f"its options: {', '.join(declared)}")
        _require_type(value, declared[name].type, join(key, f"options.{name}"))
    options = options_class(**given)
    options.check(join(key, "options"))
    return options


def _require_type(value: Any, declared: Any, key: str) -> None:
    """value fits a field declared float, int, bool or str (an int is a float)."""
    kinds = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,)}
    name = declared if isinstance(declared, str) else getattr(declared, "__name__", "")
    if name in kinds:
        fits = isinstance(value, kinds[name]) and (name == "bool" or not isinstance(value, bool))
        require(fits, key, f"{value!r} is not a {name}")


def build_policy_loss(config: LossConfig) -> PolicyLoss:
    """The registered loss config.name with its typed options."""
    one_of(config.name, POLICY_LOSSES, "algorithm.loss.name")
    return POLICY_LOSSES[config.name](config, loss_options(config))


@register_policy_loss
class PPOLoss(PolicyLoss):
    """PPO's clipped surrogate with separate low/high clip and dual clip (riskpo.algo.ppo)."""

    name = "ppo"

    def token_losses(self, logprobs, old_logprobs, advantages, response_mask, selected):
        config = self.config
        return ppo_token_losses(logprobs, old_logprobs, advantages, response_mask,
                                clip_low=config.clip_low, clip_high=config.clip_high,
                                dual_clip=config.dual_clip, ratio_level=config.ratio)


@register_policy_loss
class ClipCovLoss(PPOLoss):
    """Clip-Cov (Cui et al. 2025, riskpo.algo.entropy_control): PPO, with a random few of the
    tokens whose covariance lies in [low, high] detached (no policy gradient). The draw is over
    the rank's whole mini-batch, from a generator the learner seeds by (seed, step, rank,
    mini-batch)."""

    name = "clip_cov"
    options_class = ClipCovOptions
    mini_batch_pre_pass = True
    old_logprobs_from_training_forward = False

    def select(self, logprobs, old_logprobs, advantages, response_mask, generator):
        options, config = self.options, self.config
        return clip_cov_mask(logprobs, old_logprobs, advantages, response_mask, generator=generator,
                             clip_fraction=options.fraction, cov_low=options.low, cov_high=options.high,
                             clip_low=config.clip_low, clip_high=config.clip_high)

    def token_losses(self, logprobs, old_logprobs, advantages, response_mask, selected):
        selected = _required_selection(self.name, selected, response_mask)
        logprobs = torch.where(selected, logprobs.detach(), logprobs)
        losses, metrics = super().token_losses(logprobs, old_logprobs, advantages, response_mask, None)
        return losses, {**metrics, "cov_detached_fraction": float(selected.sum())}


@register_policy_loss
class KLCovLoss(PolicyLoss):
    """KL-Cov (Cui et al. 2025, riskpo.algo.entropy_control) in the published form: the
    unclipped surrogate -A * ratio on every token, plus coef * |log pi - log pi_old| on the top
    fraction of the rank's mini-batch by covariance (clip_low, clip_high and dual_clip do not
    apply: the penalty is the trust region)."""

    name = "kl_cov"
    options_class = KLCovOptions
    mini_batch_pre_pass = True
    old_logprobs_from_training_forward = False

    def select(self, logprobs, old_logprobs, advantages, response_mask, generator):
        return kl_cov_mask(logprobs, advantages, response_mask, top_fraction=self.options.fraction)

    def token_losses(self, logprobs, old_logprobs, advantages, response_mask, selected):
        selected = _required_selection(self.name, selected, response_mask)
        losses, metrics = unclipped_token_losses(logprobs, old_logprobs, advantages, response_mask,
                                                 ratio_level=self.config.ratio)
        penalty = kl_cov_penalty(logprobs, old_logprobs, selected, coef=self.options.coef)
        return losses + penalty, {**metrics, "cov_detached_fraction": float(selected.sum())}


def _required_selection(name: str, selected: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    if selected is None:
        raise ValueError(f"policy loss {name} needs the mini-batch pre-pass's selection")
    if selected.shape != mask.shape:
        raise ValueError(f"selection {tuple(selected.shape)} does not match the tokens {tuple(mask.shape)}")
    return selected.bool() & mask.bool()


# ----------------------------------------------------------------------------- the objective


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last axis, [B, T, V] -> [B, T].

    logsumexp(z) - E_p[z] on max-shifted logits z, so large logits lose no precision. Entries
    at -inf (masked vocabulary: probability 0) drop out, value and gradient.
    """
    shifted = logits - logits.amax(dim=-1, keepdim=True).detach()
    probabilities = torch.softmax(shifted, dim=-1)
    finite = torch.where(torch.isneginf(shifted), torch.zeros_like(shifted), shifted)
    return torch.logsumexp(shifted, dim=-1) - (probabilities * finite).sum(dim=-1)


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(input_ids[:, t+1] | prefix) for every t from logits [B, L, V]: [B, L-1], in float32,
    at the sampling temperature (logits are divided by it, as the rollout engine sampled).
    Masked vocabulary entries (-inf logits) have probability 0; a target that is one is -inf."""
    scaled = logits[:, :-1].float() / temperature
    targets = input_ids[:, 1:].unsqueeze(-1)
    return torch.log_softmax(scaled, dim=-1).gather(-1, targets).squeeze(-1)


# Per-micro-batch sums the objective reports; the learner adds them over micro-batches and
# ranks and divides the token-weighted ones by "tokens" (cov_detached_fraction: the count of
# tokens a covariance control acted on -- Clip-Cov detached, KL-Cov penalised -- a share then).
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
    loss: PolicyLoss,
    *,
    loss_units: float,
    temperature: float,
    rollout_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    loss_weights: torch.Tensor | None = None,
    selected: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """policy_objective from the logits [B, L, V] of the policy on input_ids [B, L]: their
    log-probs of the sampled tokens and entropy at the sampling temperature (the learner
    computes the same two from hidden states in chunks over tokens instead:
    workers/learner/logits.py)."""
    logprobs = token_logprobs(logits, input_ids, temperature)
    entropy = entropy_from_logits(logits[:, :-1].float() / temperature)
    return policy_objective(logprobs, entropy, response_mask, advantages, old_logprobs, loss,
                            loss_units=loss_units, rollout_logprobs=rollout_logprobs,
                            ref_logprobs=ref_logprobs, loss_weights=loss_weights, selected=selected)


def policy_objective(
    logprobs: torch.Tensor,
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
    advantages: torch.Tensor,
    old_logprobs: torch.Tensor,
    loss: PolicyLoss,
    *,
    loss_units: float,
    rollout_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    loss_weights: torch.Tensor | None = None,
    selected: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """This micro-batch's share of the objective of its whole mini-batch, and its metric sums.

    logprobs [B, L-1]: the policy's log-prob of each target token input_ids[:, t+1] at the
    sampling temperature, entropy [B, L-1] its entropy there (float32; a gradient only where an
    entropy bonus needs one); response_mask, old/rollout/ref log-probs and the pre-pass
    selection [B, L-1] aligned with them; advantages [B]; loss_weights [B] (paper_mean).
    loss_units is the mini-batch's normaliser (the aggregation's units over all micro-batches
    and ranks), so the shares of all micro-batches add up to
        policy term - entropy_coef * entropy + kl_coef * KL
    of the whole mini-batch, each aggregated as config.aggregation says; the policy and KL
    terms are weighted by the truncated importance weights when a correction is on.
    """
    config = loss.config
    mask = response_mask.bool()
    # a masked vocabulary entry may be a target outside the loss (a VLM's image token in its
    # prompt): its -inf log-prob must not reach the sums
    logprobs = torch.where(mask, logprobs, 0.0)
    token_loss, metrics = loss.token_losses(logprobs, old_logprobs, advantages, mask, selected)
    sample_weight = _importance_weight(old_logprobs, rollout_logprobs, mask, config, metrics)
    if sample_weight is not None:
        token_loss = token_loss * sample_weight

    def share(values: torch.Tensor) -> torch.Tensor:
        return loss.aggregation.share(values, mask, loss_weights, loss_units)

    objective = share(token_loss)
    if config.entropy_coef > 0:
        objective = objective - config.entropy_coef * share(entropy)
    kl = torch.zeros_like(logprobs)
    if config.uses_reference_model:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 but no reference log-probs were given")
        kl_loss = kl_term(logprobs, ref_logprobs, old_logprobs, config.kl_kind)
        if sample_weight is not None:
            kl_loss = kl_loss * sample_weight
        objective = objective + config.kl_coef * share(kl_loss)
        kl = kl_penalty(logprobs, ref_logprobs, "k3")
    return objective, _metric_sums(objective, mask, metrics, entropy, kl)


def _importance_weight(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor | None,
                       mask: torch.Tensor, config: LossConfig,
                       metrics: dict[str, float]) -> torch.Tensor | None:
    """The truncated importance weights of the configured correction (None without one); adds
    is_mean and is_truncated_fraction to metrics."""
    correction = resolved_correction(config)
    if correction == "none":
        return None
    if rollout_logprobs is None:
        raise ValueError(f"importance correction {correction!r} needs the rollout log-probs")
    weight, truncated = importance_weights(old_logprobs, rollout_logprobs, mask, correction,
                                           config.importance_cap)
    metrics["is_mean"] = masked_mean(weight, mask).item()
    metrics["is_truncated_fraction"] = masked_mean(truncated.to(weight.dtype), mask).item()
    return weight


def _metric_sums(loss: torch.Tensor, mask: torch.Tensor, metrics: dict[str, float],
                 entropy: torch.Tensor, kl: torch.Tensor) -> dict[str, float]:
    """A micro-batch's metrics as sums (token-weighted where per token), to average later.
    kl: the k3 estimate of KL(pi || ref) (unbiased in value), whatever kind the loss uses."""
    tokens = float(mask.sum().item())
    return {
        "loss": loss.item(),
        "tokens": tokens,
        "clip_fraction": metrics["clip_fraction"] * tokens,
        "approx_kl": metrics["approx_kl"] * tokens,
        "entropy": _masked_sum(entropy.detach(), mask),
        "kl": _masked_sum(kl.detach(), mask),
        "cov_detached_fraction": metrics.get("cov_detached_fraction", 0.0),
        # importance weights (1 and none truncated without a correction), token-weighted
        "is_mean": metrics.get("is_mean", 1.0) * tokens,
        "is_truncated_fraction": metrics.get("is_truncated_fraction", 0.0) * tokens,
    }


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float((values * mask).sum().item())

