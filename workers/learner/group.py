"""The learner group the driver calls: R DeepSpeed ranks as Ray actors in one placement group,
with old/reference log-probs, PPO training steps, checkpoints, HF export and weight sync."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import ray
import torch
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from riskpo.batch import TrainBatch
from workers.learner.actor import LearnerWorker
from workers.learner.base import TOKEN_WEIGHTED_METRICS
from workers.learner.config import LearnerConfig
from workers.learner.microbatch import RankPlan, plan_micro_batches, row_lengths, split_rows
from workers.weight_sync import WeightManifest, build_manifest

GROUP_STATE_KEY = "learner_group"  # the group's own entry beside the driver's in a checkpoint


class LearnerGroup:
    """Data-parallel learner ranks behind one object; every call fans out to all ranks."""

    def __init__(
        self,
        model_path: str,
        config: LearnerConfig,
        *,
        cpus_per_rank: float = 1.0,
        gpus_per_rank: float | None = None,
        placement_strategy: str = "PACK",
        placement_timeout_s: float = 300.0,
        bundle_resources: dict[str, float] | None = None,
        placement_group: PlacementGroup | None = None,
    ) -> None:
        """Rank r runs in bundle r of a placement group: its own (one bundle per rank of
        {CPU, GPU, **bundle_resources}), or `placement_group` when given (colocation: bundles
        shared with rollout actors; the caller removes it)."""
        config.validate()
        self.config = config
        self.steps = 0  # train_step calls so far: seeds the mini-batch shuffle
        gpus = (1.0 if config.device == "gpu" else 0.0) if gpus_per_rank is None else gpus_per_rank
        self._owns_placement_group = placement_group is None
        if placement_group is None:
            bundle = {"CPU": cpus_per_rank, **({"GPU": gpus} if gpus else {}), **(bundle_resources or {})}
            placement_group = _reserve_bundles(bundle, config.num_ranks, placement_strategy,
                                               placement_timeout_s)
        self.placement_group = placement_group
        actor_class = ray.remote(LearnerWorker)
        self.workers = [
            actor_class.options(
                num_cpus=cpus_per_rank,
                num_gpus=gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement_group, rank),
            ).remote(rank, config.num_ranks, config)
            for rank in range(config.num_ranks)
        ]
        node_ips = ray.get([worker.node_ip.remote() for worker in self.workers])
        master_port = ray.get(self.workers[0].reserve_port.remote())
        local_ranks = [node_ips[:rank].count(ip) for rank, ip in enumerate(node_ips)]
        ray.get([
            worker.setup.remote(model_path, node_ips[0], master_port, local_rank)
            for worker, local_rank in zip(self.workers, local_ranks, strict=True)
        ])
        self.master_addr = node_ips[0]
        self._manifest: WeightManifest | None = None
        self._sync_targets: list[Any] = []
        self._sync_generation = 0
        self.weight_version = 0  # of the last sync; every engine holds it after sync_weights

    # ---------------------------------------------------------------- training

    def compute_logprobs(self, batch: TrainBatch) -> TrainBatch:
        """The batch with old_logprobs (current policy) and, when KL is on, ref_logprobs filled."""
        plans = plan_micro_batches(
            row_lengths(batch), range(len(batch)), self.config.num_ranks, self.config.micro_batch_token_budget
        )
        batch_ref = ray.put(batch)
        old = self._gather_logprobs(batch_ref, plans, len(batch), reference=False)
        ref = self._gather_logprobs(batch_ref, plans, len(batch), reference=True) if self.config.uses_reference_model else None
        return dataclasses.replace(batch, old_logprobs=old, ref_logprobs=ref)

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        """PPO epochs x mini-batches of optimizer steps on the batch (log-probs are computed
        first when the batch has none). Returns metrics averaged over mini-batches."""
        if batch.old_logprobs is None or (self.config.uses_reference_model and batch.ref_logprobs is None):
            batch = self.compute_logprobs(batch)
        rank_plans, loss_units = self._plan_step(batch)
        batch_ref = ray.put(batch)
        per_rank = ray.get([
            worker.train_step.remote(batch_ref, plans, loss_units)
            for worker, plans in zip(self.workers, rank_plans, strict=True)
        ])
        self.steps += 1
        metrics = _combine_mini_batch_metrics(per_rank)
        metrics["rollout_learner_logprob_gap"] = rollout_learner_logprob_gap(batch)
        return metrics

    def _plan_step(self, batch: TrainBatch) -> tuple[list[list[RankPlan]], list[float]]:
        config = self.config
        lengths = row_lengths(batch)
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + self.steps)
        rank_plans: list[list[RankPlan]] = [[] for _ in self.workers]
        loss_units: list[float] = []
        for _ in range(config.ppo_epochs):
            order = torch.randperm(len(batch), generator=generator).tolist()
            for rows in split_rows(order, config.num_mini_batches):
                units = _loss_units(batch, rows, config.aggregation)
                if units == 0:
                    continue  # nothing to learn from (all rows masked): no optimizer step
                plans = plan_micro_batches(lengths, rows, config.num_ranks, config.micro_batch_token_budget)
                for rank, plan in enumerate(plans):
                    rank_plans[rank].append(plan)
                loss_units.append(units)
        return rank_plans, loss_units

    def _gather_logprobs(
        self, batch_ref: ray.ObjectRef, plans: list[RankPlan], num_rows: int, *, reference: bool
    ) -> list[list[float]]:
        per_rank = ray.get([
            worker.logprobs.remote(batch_ref, plan, reference)
            for worker, plan in zip(self.workers, plans, strict=True)
        ])
        values: list[list[float] | None] = [None] * num_rows
        for plan, rank_values in zip(plans, per_rank, strict=True):
            for row, row_values in zip((r for micro in plan for r in micro), rank_values, strict=True):
                values[row] = row_values
        return values  # type: ignore[return-value]

    # ---------------------------------------------------------------- checkpoints, export

    def save(self, path: str, extra: dict[str, Any] | None = None) -> None:
        """Full checkpoint: DeepSpeed model/optimizer/scheduler states of every rank plus
        `extra` (the driver's sampler position, RNG, quantile tracker, step...)."""
        state = {"driver": extra or {}, GROUP_STATE_KEY: {"steps": self.steps}}
        ray.get([worker.save.remote(path, state) for worker in self.workers])

    def load(self, path: str) -> dict[str, Any]:
        """Restores a checkpoint written by save; returns the driver's `extra`."""
        states = ray.get([worker.load.remote(path) for worker in self.workers])
        self.steps = states[0][GROUP_STATE_KEY]["steps"]
        return states[0]["driver"]

    def export_hf(self, path: str) -> None:
        """Writes the current policy as a HF directory (transformers and vLLM load it)."""
        ray.get([worker.export_hf.remote(path) for worker in self.workers])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full parameters (HF names) as CPU tensors."""
        return ray.get([worker.state_dict.remote() for worker in self.workers])[0]

    # ---------------------------------------------------------------- weight sync

    def sync_weights(self, rollout: Any) -> dict[str, float]:
        """Broadcasts the policy from rank 0 to every rollout actor (a RolloutGroup or a list
        of actors) in buckets; checks they all report the same new weight version."""
        actors = rollout_actors(rollout)
        before = ray.get([actor.weight_version.remote() for actor in actors])
        # A restarted actor has lost its place in the sync group (and its weights): reopen.
        reopen = actors != self._sync_targets or any(v != self.weight_version for v in before)
        if reopen:
            self._open_weight_sync(actors)
        manifest = self._weight_manifest()
        start = time.perf_counter()
        self.weight_version += 1
        receiving = [actor.receive_weights.remote(manifest, self.weight_version) for actor in actors]
        sent = ray.get([worker.send_weights.remote(manifest) for worker in self.workers])
        versions = ray.get(receiving)
        elapsed = time.perf_counter() - start
        if set(versions) != {self.weight_version}:
            raise RuntimeError(f"rollout engines report weight versions {versions} after sync "
                               f"{self.weight_version}")
        return {
            "sync/time_s": elapsed,
            "sync/bytes": float(sent[0]),
            "sync/bytes_per_s": sent[0] / elapsed,
            "sync/weight_version": float(self.weight_version),
            "sync/reopened": float(reopen),
        }

    def _open_weight_sync(self, actors: list[Any]) -> None:
        transport = {
            "master_addr": self.master_addr,
            "master_port": ray.get(self.workers[0].reserve_port.remote()),
            "world_size": 1 + len(actors),
            "backend": "nccl" if self.config.device == "gpu" else "gloo",
            "group_name": f"weight_sync_{id(self)}_{self._sync_generation}",
            "timeout_s": self.config.weight_sync_timeout_s,
        }
        ray.get([
            self.workers[0].open_weight_sync.remote(**transport),
            *[actor.init_weight_sync.remote(rank=rank, **transport) for rank, actor in enumerate(actors, 1)],
        ])
        self._sync_targets = actors
        self._sync_generation += 1

    def _weight_manifest(self) -> WeightManifest:
        if self._manifest is None:
            specs = ray.get(self.workers[0].parameter_specs.remote())
            self._manifest = build_manifest(specs, int(self.config.weight_sync_bucket_mb * (1 << 20)))
        return self._manifest

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        if self._owns_placement_group:
            remove_placement_group(self.placement_group)


def _reserve_bundles(bundle: dict[str, float], num_ranks: int, strategy: str,
                     timeout_s: float) -> PlacementGroup:
    """A ready placement group of num_ranks copies of bundle, or a RuntimeError naming the keys."""
    group = placement_group([bundle] * num_ranks, strategy=strategy)
    try:
        ray.get(group.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        raise RuntimeError(
            f"LearnerGroup: the cluster cannot place {num_ranks} learner ranks of {bundle} "
            f"within {timeout_s:.0f} s (learner.num_ranks, cpus_per_rank, gpus_per_rank)"
        ) from None
    return group


def rollout_actors(rollout: Any) -> list[Any]:
    """The actor handles behind a RolloutGroup (its `actors`) or a list of actors."""
    if isinstance(rollout, Sequence):
        actors = list(rollout)
    elif hasattr(rollout, "actors"):
        actors = list(rollout.actors)
    else:
        raise TypeError(f"sync_weights needs a RolloutGroup or a list of rollout actors, got {type(rollout).__name__}")
    if not actors:
        raise ValueError("sync_weights: no rollout actors to send weights to")
    return actors


def rollout_learner_logprob_gap(batch: TrainBatch) -> float:
    """Mean |rollout log-prob - learner (old) log-prob| over the loss rows' response tokens."""
    total, count = 0.0, 0
    for keep, rollout, learner in zip(batch.loss_mask.tolist(), batch.rollout_logprobs, batch.old_logprobs, strict=True):
        if keep and rollout:
            total += float((torch.tensor(rollout) - torch.tensor(learner)).abs().sum())
            count += len(rollout)
    return total / count if count else float("nan")


def _loss_units(batch: TrainBatch, rows: Sequence[int], aggregation: str) -> float:
    """The global normaliser of one mini-batch: loss tokens (token_mean) or rows (seq_mean_*),
    matching riskpo.losses.aggregate (masked rows count as sequences with no tokens)."""
    if aggregation == "token_mean":
        return float(sum(len(batch.response_ids[r]) for r in rows if batch.loss_mask[r]))
    return float(len(rows)) if any(bool(batch.loss_mask[r]) for r in rows) else 0.0


def _combine_mini_batch_metrics(per_rank: list[list[dict[str, float]]]) -> dict[str, float]:
    """Adds each mini-batch's sums over ranks, normalises, and averages over mini-batches
    (the learning rate is the last one's)."""
    per_mini_batch = []
    for rank_results in zip(*per_rank, strict=True):
        tokens = sum(result["tokens"] for result in rank_results)
        combined = {
            "loss": sum(result["loss"] for result in rank_results),
            "grad_norm": rank_results[0]["grad_norm"],
            "lr": rank_results[0]["lr"],
            "tokens": tokens,
        }
        for key in TOKEN_WEIGHTED_METRICS:
            combined[key] = sum(result[key] for result in rank_results) / max(tokens, 1.0)
        per_mini_batch.append(combined)
    if not per_mini_batch:
        return {"mini_batches": 0.0}
    metrics = {key: sum(m[key] for m in per_mini_batch) / len(per_mini_batch) for key in per_mini_batch[0]}
    metrics["lr"] = per_mini_batch[-1]["lr"]
    metrics["tokens"] = sum(m["tokens"] for m in per_mini_batch)
    metrics["mini_batches"] = float(len(per_mini_batch))
    return metrics
