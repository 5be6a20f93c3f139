"""The learner backend interface (one data-parallel rank) and the PPO step every backend shares.

A backend (DeepSpeed today, FSDP2 later) implements the primitives below -- initialize,
forward, backward, optimizer step, full-parameter iteration, save/load, export -- and inherits
`logprobs` and `train_step`, so adding a backend is one module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from riskpo.batch import TrainBatch
from riskpo.losses import aggregate, entropy_from_logits, kl_penalty, policy_loss
from workers.learner.config import LearnerConfig
from workers.learner.microbatch import (
    MicroBatch,
    RankPlan,
    collate,
    response_values,
    token_logprobs,
)
from workers.weight_sync import TensorSpec

# Per-mini-batch sums a rank returns; the group adds them over ranks and divides by "tokens".
TOKEN_WEIGHTED_METRICS = ("clip_fraction", "approx_kl", "entropy", "kl")


class LearnerBackend(ABC):
    """One rank of a data-parallel learner. Every method that touches parameters runs on all
    ranks together (collectives under ZeRO), in the same order, with the same plan shape."""

    config: LearnerConfig
    world_size: int
    pad_token_id: int
    device: torch.device

    # ---------------------------------------------------------------- primitives

    @abstractmethod
    def initialize(self, model_path: str, config: LearnerConfig, rank: int, world_size: int) -> None:
        """Loads the policy (and the reference model when config.kl_coef > 0), builds the
        optimizer; the distributed default group is already up."""

    @abstractmethod
    def forward(self, micro: MicroBatch, *, reference: bool = False) -> torch.Tensor:
        """Logits [B, L, V] of the policy (or the frozen reference model)."""

    @abstractmethod
    def backward(self, loss: torch.Tensor, *, last_micro_batch: bool) -> None:
        """Accumulates gradients; last_micro_batch marks the gradient-accumulation boundary."""

    @abstractmethod
    def optimizer_step(self) -> dict[str, float]:
        """Clips, steps the optimizer and the scheduler; returns {"grad_norm", "lr"}."""

    @abstractmethod
    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full (unsharded) parameters in HF names, one module at a time; runs on every rank."""

    @abstractmethod
    def parameter_specs(self) -> list[TensorSpec]:
        """Names, full shapes and dtypes of named_parameters(), without gathering anything."""

    @abstractmethod
    def save(self, path: str, extra: dict[str, Any]) -> None:
        """Writes model, optimizer and scheduler state plus the driver's `extra` to path."""

    @abstractmethod
    def load(self, path: str) -> dict[str, Any]:
        """Restores what save wrote; returns the driver's `extra`."""

    @abstractmethod
    def export_hf(self, path: str) -> None:
        """Writes the current policy as a Hugging Face directory (model, config, tokenizer)."""

    # ---------------------------------------------------------------- shared PPO logic

    @torch.no_grad()
    def logprobs(self, batch: TrainBatch, plan: RankPlan, *, reference: bool = False) -> list[list[float]]:
        """Per-token log-probs of the response tokens of the planned rows, in plan order."""
        values: list[list[float]] = []
        for rows in plan:
            micro = collate(batch, rows, self.pad_token_id).to(self.device)
            logits = self.forward(micro, reference=reference)
            if rows:
                per_token = token_logprobs(logits, micro.input_ids, self.config.temperature)
                values.extend(response_values(batch, rows, per_token))
        return values

    def train_step(
        self, batch: TrainBatch, mini_batch_plans: list[RankPlan], loss_units: list[float]
    ) -> list[dict[str, float]]:
        """One optimizer step per mini-batch; loss_units[m] is mini-batch m's global count of
        tokens (token_mean) or rows (seq_mean_*) so micro-batch losses add up to the loss of
        the whole mini-batch over all ranks. Returns per-mini-batch metric sums."""
        if batch.old_logprobs is None:
            raise ValueError("train_step: batch.old_logprobs is missing; call compute_logprobs first")
        if self.config.uses_reference_model and batch.ref_logprobs is None:
            raise ValueError("train_step: kl_coef > 0 but batch.ref_logprobs is missing")
        results = []
        for plan, units in zip(mini_batch_plans, loss_units, strict=True):
            sums: dict[str, float] = dict.fromkeys(("loss", "tokens", *TOKEN_WEIGHTED_METRICS), 0.0)
            for index, rows in enumerate(plan):
                micro = collate(batch, rows, self.pad_token_id).to(self.device)
                loss = self._micro_batch_loss(micro, units, sums)
                self.backward(loss, last_micro_batch=index == len(plan) - 1)
            sums.update(self.optimizer_step())
            results.append(sums)
        return results

    def _micro_batch_loss(self, micro: MicroBatch, loss_units: float, sums: dict[str, float]) -> torch.Tensor:
        """This micro-batch's share of the mini-batch loss, times world_size (data-parallel
        gradient averaging divides by it again); adds its metric sums into `sums`."""
        logits = self.forward(micro)
        if micro.is_empty:
            return logits.float().sum() * 0.0  # keeps the collectives of this micro-step in step
        config = self.config
        mask = micro.response_mask
        logprobs = token_logprobs(logits, micro.input_ids, config.temperature)
        pg_loss, pg_metrics = policy_loss(
            logprobs,
            micro.old_logprobs,
            micro.advantages,
            mask,
            clip_low=config.clip_low,
            clip_high=config.clip_high,
            dual_clip=config.dual_clip,
            aggregation=config.aggregation,
            rollout_logprobs=micro.rollout_logprobs if config.tis_cap is not None else None,
            tis_cap=config.tis_cap,
        )
        micro_units = mask.sum().item() if config.aggregation == "token_mean" else mask.shape[0]
        loss = pg_loss * (micro_units / loss_units)
        entropy = entropy_from_logits(logits[:, :-1].float() / config.temperature)
        if config.entropy_coef > 0:
            loss = loss - config.entropy_coef * aggregate(entropy, mask, config.aggregation, loss_units)
        kl = torch.zeros_like(logprobs)
        if config.uses_reference_model:
            kl = kl_penalty(logprobs, micro.ref_logprobs, config.kl_kind)
            loss = loss + config.kl_coef * aggregate(kl, mask, config.aggregation, loss_units)
        tokens = float(mask.sum().item())
        sums["loss"] += loss.item()
        sums["tokens"] += tokens
        sums["clip_fraction"] += pg_metrics["clip_fraction"] * tokens
        sums["approx_kl"] += pg_metrics["approx_kl"] * tokens
        sums["entropy"] += _masked_sum(entropy.detach(), mask)
        sums["kl"] += _masked_sum(kl.detach(), mask)
        return loss * self.world_size


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float((values * mask).sum().item())


def ensure_directory(path: str) -> Path:
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory
