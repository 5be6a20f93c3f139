"""The learner backend interface (one data-parallel rank) and the PPO step every backend shares.

A backend (DeepSpeed today, FSDP2 later) implements the primitives below -- initialize, the
policy's last hidden states, backward, optimizer step, full-parameter iteration, save/load,
export -- and inherits `prepare` and `train_step`, so adding a backend is one module. Log-probs
and entropy come from the hidden states in chunks of tokens (workers/learner/logits.py); the
objective is riskpo.algo.losses.policy_objective, and the passes a step runs are those the
policy loss declares (riskpo.algo.losses.LearnerNeeds): the old log-probs (a no-grad pass, or,
for an on-policy step of one update, the training forward's own, detached), the reference's
when the KL term is on, and for Clip-Cov and KL-Cov a no-grad pre-pass over each mini-batch
whose token selection the micro-batches then share. A vision-language policy's micro-batches
carry the pixel inputs of their rows' images (workers/learner/vision.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from riskpo.algo.losses import (
    TOKEN_WEIGHTED_METRICS,
    LearnerNeeds,
    PolicyLoss,
    build_policy_loss,
    policy_objective,
)
from riskpo.batch import TrainBatch
from workers.learner.config import LearnerSpec
from workers.learner.logits import TokenStats, token_stats
from workers.learner.microbatch import (
    MicroBatch,
    RankPlan,
    RowLogprobs,
    RowTokenMask,
    collate,
    response_values,
)
from workers.learner.vision import ImageInputs
from workers.weight_sync import TensorSpec


@dataclass
class PreparedBatch:
    """A step's batch as one rank holds it: the rows it trains on, with the policy's log-probs
    before the update (and the reference model's, when KL is on), kept here for the step.
    old_logprobs is None until the training forward of a step planned without the separate
    pass fills it (its first and only mini-batch sees the weights before the update)."""

    batch: TrainBatch
    old_logprobs: RowLogprobs | None
    ref_logprobs: RowLogprobs | None


class LearnerBackend(ABC):
    """One rank of a data-parallel learner. Every method that touches parameters runs on all
    ranks together (collectives under ZeRO), in the same order, with the same plan shape."""

    spec: LearnerSpec
    rank: int
    world_size: int
    pad_token_id: int
    device: torch.device
    suppressed: list[int]  # token ids the policy never samples (a VLM's image token): prob. 0
    prepared: PreparedBatch | None = None  # the current step's batch (prepare -> train_step)
    images: ImageInputs | None = None  # set by initialize for a vision-language model

    # ---------------------------------------------------------------- primitives

    @abstractmethod
    def initialize(self, model_path: str, spec: LearnerSpec, rank: int, world_size: int) -> None:
        """Loads the policy (and the reference model when the loss needs one), builds the
        optimizer; the distributed default group is already up."""

    @abstractmethod
    def hidden_states(self, micro: MicroBatch, *,
                      reference: bool = False) -> tuple[torch.Tensor, torch.nn.Module]:
        """The last hidden states [B, L, H] of the policy (or the frozen reference model) on the
        micro-batch, and its output layer, which maps them to logits. Under autograd the call
        takes part in the backward (ZeRO's hooks)."""

    @abstractmethod
    def backward(self, loss: torch.Tensor, *, last_micro_batch: bool) -> None:
        """Accumulates gradients; last_micro_batch marks the gradient-accumulation boundary."""

    @abstractmethod
    def optimizer_step(self) -> dict[str, float]:
        """Clips, steps the optimizer and the scheduler; returns {"grad_norm", "lr": the rate
        this update used, "skipped"}."""

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

    def token_stats(self, micro: MicroBatch, positions: torch.Tensor, *, reference: bool = False,
                    entropy: bool = False, entropy_grad: bool = False) -> TokenStats:
        """Log-probs (and entropy) of the micro-batch's targets at `positions` [B, L-1], from
        the hidden states in chunks of learner.logit_chunk_tokens tokens."""
        hidden, output_layer = self.hidden_states(micro, reference=reference)
        return token_stats(hidden, output_layer, micro.input_ids, positions, self.spec.temperature,
                           self.suppressed, chunk_tokens=self.logit_chunk_tokens(),
                           entropy=entropy, entropy_grad=entropy_grad,
                           recompute=self.recompute_logit_chunks())

    def logit_chunk_tokens(self) -> int | None:
        """learner.logit_chunk_tokens, or None (one chunk per micro-batch) where a backend's
        every call of the output layer is a collective (ZeRO-3)."""
        return self.spec.config.logit_chunk_tokens

    def recompute_logit_chunks(self) -> bool:
        """Whether each chunk's logits are recomputed in the backward (not kept)."""
        return True

    @torch.no_grad()
    def logprobs(self, batch: TrainBatch, plan: RankPlan, *, reference: bool = False) -> dict[int, torch.Tensor]:
        """Per-token log-probs of the response tokens of the planned rows (row -> [len])."""
        values: dict[int, torch.Tensor] = {}
        for rows in plan:
            micro = self._collate(batch, rows).to(self.device)
            stats = self.token_stats(micro, micro.response_positions, reference=reference)
            if rows:
                values.update(response_values(batch, rows, stats.logprobs.cpu()))
        return values

    def prepare(self, batch: TrainBatch, plan: RankPlan, needs: LearnerNeeds, *,
                old_logprobs_pass: bool = True) -> dict[str, float]:
        """Keeps this rank's rows of the step's batch with the old log-probs -- from a separate
        no-grad pass over `plan`, or (old_logprobs_pass False: an on-policy step of one
        update) left for the training forward to take -- and the reference's when the loss
        needs them; returns the sums behind the rollout-vs-learner log-prob gap (none without
        the pass: train_step returns them)."""
        if self.images is not None:
            self.images.new_batch()
        old = self.logprobs(batch, plan) if old_logprobs_pass else None
        ref = self.logprobs(batch, plan, reference=True) if needs.reference_model else None
        self.prepared = PreparedBatch(batch, old, ref)
        if old is None:
            return {}
        gap, tokens = 0.0, 0
        for row in sorted(old):
            rollout = batch.rollout_logprobs[row]
            if batch.loss_mask[row] and rollout:
                gap += float((torch.tensor(rollout) - old[row]).abs().sum())
                tokens += len(rollout)
        return {"gap_sum": gap, "gap_tokens": float(tokens)}

    def train_step(self, mini_batch_plans: list[RankPlan], loss_units: list[float], step: int,
                   needs: LearnerNeeds) -> list[dict[str, float]]:
        """One optimizer step per mini-batch of the prepared batch; loss_units[m] is mini-batch
        m's normaliser (its aggregation's units over all ranks) so micro-batch losses add up to
        the loss of the whole mini-batch. With needs.mini_batch_pre_pass the loss first selects
        tokens over the rank's whole mini-batch (`step`, the group's train_step count, seeds
        Clip-Cov's draw). Without old log-probs yet (prepare without the pass) the step has one
        mini-batch, whose training forward gives them (detached): the result then carries the
        gap sums. Returns per-mini-batch sums."""
        prepared = self.prepared
        if prepared is None:
            raise ValueError("train_step before prepare: the step's log-probs are not computed")
        from_training = prepared.old_logprobs is None
        if from_training and (len(mini_batch_plans) > 1 or needs.mini_batch_pre_pass):
            raise ValueError("the old log-probs come from the training forward only in a step of "
                             "one update without a pre-pass")
        loss = build_policy_loss(self.spec.loss)
        results, taken = [], {}
        for mini_batch, (plan, units) in enumerate(zip(mini_batch_plans, loss_units, strict=True)):
            selection = (self._pre_pass_selection(loss, plan, step, mini_batch)
                         if needs.mini_batch_pre_pass else None)
            sums: dict[str, float] = dict.fromkeys(("loss", "tokens", *TOKEN_WEIGHTED_METRICS), 0.0)
            if from_training:
                sums.update(gap_sum=0.0, gap_tokens=0.0)
            for index, rows in enumerate(plan):
                micro = self._collate(prepared.batch, rows, prepared.old_logprobs,
                                      prepared.ref_logprobs, selection).to(self.device)
                micro_loss, old = self._micro_batch_loss(loss, micro, units, sums)
                if old is not None and rows:
                    taken.update(response_values(prepared.batch, rows, old.cpu()))
                self.backward(micro_loss, last_micro_batch=index == len(plan) - 1)
            sums.update(self.optimizer_step())
            results.append(sums)
        if from_training:  # a second train_step on this batch starts from these
            prepared.old_logprobs = taken
        return results

    @torch.no_grad()
    def _pre_pass_selection(self, loss: PolicyLoss, plan: RankPlan, step: int,
                            mini_batch: int) -> RowTokenMask:
        """The loss's token selection over this rank's rows of one mini-batch: the policy's
        log-probs from a no-grad forward of each planned micro-batch (the weights the
        mini-batch trains), then one selection over all the rows at once, in row order, so the
        micro-batch split cannot change it. The generator is seeded by (seed, step, rank,
        mini-batch)."""
        batch, old = self.prepared.batch, self.prepared.old_logprobs
        current = self.logprobs(batch, plan)
        rows = sorted(current)
        width = max((len(current[row]) for row in rows), default=0)
        logprobs = torch.zeros((len(rows), width))
        old_logprobs = torch.zeros((len(rows), width))
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for slot, row in enumerate(rows):
            length = len(current[row])
            logprobs[slot, :length] = current[row]
            old_logprobs[slot, :length] = old[row]
            mask[slot, :length] = bool(batch.loss_mask[row])
        generator = torch.Generator().manual_seed(
            hash((self.spec.seed, step, self.rank, mini_batch)) % (2**63))
        chosen = loss.select(logprobs, old_logprobs, batch.advantages[rows].float(), mask, generator)
        return {row: chosen[slot, :len(current[row])].clone() for slot, row in enumerate(rows)}

    def _collate(self, batch: TrainBatch, rows: list[int], old_logprobs: RowLogprobs | None = None,
                 ref_logprobs: RowLogprobs | None = None,
                 selected: RowTokenMask | None = None) -> MicroBatch:
        """collate, plus the rows' pixel inputs for a vision-language model."""
        micro = collate(batch, rows, self.pad_token_id, old_logprobs, ref_logprobs, selected)
        if self.images is None:
            return micro
        return self.images.attach(micro, batch, rows, self.pad_token_id)

    def _micro_batch_loss(self, loss: PolicyLoss, micro: MicroBatch, loss_units: float,
                          sums: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This micro-batch's share of the mini-batch loss, times world_size (data-parallel
        gradient averaging divides by it again); adds its metric sums into `sums`. Without old
        log-probs in the micro-batch its own (detached) are the old ones: returned too, with the
        gap to the rollout's added to the sums."""
        stats = self.token_stats(micro, micro.response_mask, entropy=True,
                                 entropy_grad=loss.config.entropy_coef > 0)
        if micro.is_empty:  # keeps the collectives of this micro-step in step
            return stats.logprobs.sum() * 0.0, None
        old = micro.old_logprobs
        if old is None:
            old = stats.logprobs.detach()
            gap = (micro.rollout_logprobs - old).abs() * micro.response_mask
            sums["gap_sum"] += float(gap.sum())
            sums["gap_tokens"] += float(micro.response_mask.sum())
        objective, micro_sums = policy_objective(
            stats.logprobs, stats.entropy, micro.response_mask, micro.advantages, old, loss,
            loss_units=loss_units, rollout_logprobs=micro.rollout_logprobs,
            ref_logprobs=micro.ref_logprobs, loss_weights=micro.loss_weights, selected=micro.selected)
        for key, value in micro_sums.items():
            sums[key] += value
        return objective * self.world_size, old if micro.old_logprobs is None else None


def ensure_directory(path: str) -> Path:
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory
