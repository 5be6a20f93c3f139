"""The learner group the driver calls: R DeepSpeed ranks as Ray actors in one placement group,
with old/reference log-probs (computed and kept on the ranks), PPO training steps,
checkpoints, HF export, and the sending end of the weight sync (workers/weight_sync/sync.py
ties it to the rollout group's receiving end)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
import torch
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from riskpo.algo.aggregation import Aggregation, get_aggregation
from riskpo.algo.losses import TOKEN_WEIGHTED_METRICS, LearnerNeeds
from riskpo.batch import TrainBatch
from workers.learner.actor import LearnerWorker
from workers.learner.config import LearnerSpec
from workers.learner.microbatch import RankPlan, plan_micro_batches, row_lengths, split_rows
from workers.weight_sync import SyncGroupAddress, WeightManifest, build_manifest

GROUP_STATE_KEY = "learner_group"  # the group's own entry beside the driver's in a checkpoint


@dataclass
class StepPlan:
    """How one step's rows are spread and which passes run: rank r computes log-probs for its
    shard in the micro-batches logprob_plans[r] (the reference's too when needs says so) and
    trains mini-batch m on mini_batch_plans[r][m], normalised by loss_units[m] (after the
    loss's pre-pass over that mini-batch when it declares one). logprob_plans are the first
    epoch's mini-batches' micro-batches in order, so the first mini-batch's training forwards
    see exactly the rows, padding and weights the old log-probs were computed with: its ratios
    are 1 in any precision. old_logprobs_pass False: the step is one on-policy update and the
    old log-probs are its training forward's (one forward less)."""

    step: int
    needs: LearnerNeeds
    logprob_plans: list[RankPlan]
    mini_batch_plans: list[list[RankPlan]]
    loss_units: list[float]
    old_logprobs_pass: bool = True


class LearnerGroup:
    """Data-parallel learner ranks behind one object; every call fans out to all ranks."""

    def __init__(
        self,
        model_path: str,
        spec: LearnerSpec,
        *,
        cpus_per_rank: float = 1.0,
        gpus_per_rank: float | None = None,
        placement_strategy: str = "PACK",
        placement_timeout_s: float = 300.0,
        bundle_resources: dict[str, float] | None = None,
        placement_group: PlacementGroup | None = None,
        runtime_env: dict[str, Any] | None = None,
    ) -> None:
        """Rank r runs in bundle r of a placement group: its own (one bundle per rank of
        {CPU, GPU, **bundle_resources}), or `placement_group` when given (colocation: bundles
        shared with rollout actors; the caller removes it). runtime_env: the ranks' Ray runtime
        environment (launch/factory.py gives their thread share as env_vars)."""
        self.spec = spec
        config = spec.config
        self.steps = 0  # train_step calls so far: seeds the mini-batch shuffle
        self._prepared: tuple[TrainBatch, StepPlan] | None = None  # the batch the ranks hold
        gpus = (1.0 if spec.device == "gpu" else 0.0) if gpus_per_rank is None else gpus_per_rank
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
                **({"runtime_env": runtime_env} if runtime_env else {}),
            ).remote(rank, config.num_ranks, spec)
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

    # ---------------------------------------------------------------- training

    def compute_logprobs(self, batch: TrainBatch) -> dict[str, float]:
        """Sends the step's batch to the ranks once; each computes the old (and, with KL, the
        reference) log-probs of the rows it trains on and keeps them for train_step. Returns
        rollout_learner_logprob_gap: mean |rollout log-prob - learner log-prob| over the loss
        rows' response tokens (engine/learner numerics, or off-policy drift); for a step whose
        old log-probs come from its training forward, train_step returns it instead."""
        plan = plan_step(batch, self.spec, self.steps)
        batch_ref = ray.put(batch)
        sums = ray.get([
            worker.prepare.remote(batch_ref, shard, plan.needs, old_logprobs_pass=plan.old_logprobs_pass)
            for worker, shard in zip(self.workers, plan.logprob_plans, strict=True)
        ])
        self._prepared = (batch, plan)
        return _logprob_gap(sums) if plan.old_logprobs_pass else {}

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        """PPO epochs x mini-batches of optimizer steps on the batch (its log-probs are
        computed first unless compute_logprobs already ran on this batch). Returns metrics
        averaged over mini-batches."""
        if self._prepared is None or self._prepared[0] is not batch:
            self.compute_logprobs(batch)
        plan = self._prepared[1] if self._prepared else plan_step(batch, self.spec, self.steps)
        if self.steps != plan.step:  # the same batch trained again: a new shuffle
            plan = plan_step(batch, self.spec, self.steps)
        per_rank = ray.get([
            worker.train_step.remote(plans, plan.loss_units, plan.step, plan.needs)
            for worker, plans in zip(self.workers, plan.mini_batch_plans, strict=True)
        ])
        self.steps += 1
        gap_sums = [mini_batches[0] for mini_batches in per_rank if mini_batches and "gap_sum" in mini_batches[0]]
        metrics = _combine_mini_batch_metrics(per_rank)
        lengths = row_lengths(batch)  # tokens the training forwards ran on (no padding): FLOP/s
        metrics["sequence_tokens"] = float(sum(lengths[row] for rank_plans in plan.mini_batch_plans
                                               for micro_batches in rank_plans
                                               for rows in micro_batches for row in rows))
        return {**metrics, **_logprob_gap(gap_sums)} if gap_sums else metrics

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

    # ---------------------------------------------------------------- weight sync: sending

    @property
    def weight_version(self) -> int:
        """The version of the policy's weights: the updates (train_step calls) they have had,
        restored by load. The weight-sync object labels the weights it sends with it."""
        return self.steps

    def weight_manifest(self) -> WeightManifest:
        """Names, shapes and buckets of the weights rank 0 sends, in the order it sends them:
        the policy's, or with LoRA and learner.lora_sync=adapter the adapter's alone (with its
        PEFT options, which the engines build it from)."""
        if self._manifest is None:
            adapter = None
            if self.spec.lora is not None and self.spec.config.lora_sync == "adapter":
                specs, adapter = ray.get(self.workers[0].adapter_specs.remote())
            else:
                specs = ray.get(self.workers[0].parameter_specs.remote())
            self._manifest = build_manifest(specs, int(self.spec.config.weight_sync_bucket_mb * (1 << 20)))
            self._manifest.adapter = adapter
        return self._manifest

    def weight_sync_address(self, receivers: int, group_name: str) -> SyncGroupAddress:
        """A new weight-sync group hosted by rank 0 (a free port on its node) for `receivers`
        engines: NCCL when the ranks compute on GPUs, gloo otherwise."""
        return SyncGroupAddress(
            master_addr=self.master_addr,
            master_port=ray.get(self.workers[0].reserve_port.remote()),
            world_size=1 + receivers,
            backend="nccl" if self.spec.device == "gpu" else "gloo",
            group_name=group_name,
            timeout_s=self.spec.config.weight_sync_timeout_s,
        )

    def join_weight_sync(self, address: SyncGroupAddress) -> list[ray.ObjectRef]:
        """Has rank 0 join the group as its sender; finishes once every receiver joins."""
        return [self.workers[0].open_weight_sender.remote(address)]

    def send_weights(self, manifest: WeightManifest) -> list[ray.ObjectRef]:
        """Every rank takes part (ZeRO-3 gathers layer by layer); rank 0 broadcasts the named
        parameters in manifest order. The results are the bytes each rank sent."""
        return [worker.send_weights.remote(manifest) for worker in self.workers]

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        if self._owns_placement_group:
            remove_placement_group(self.placement_group)


def plan_step(batch: TrainBatch, spec: LearnerSpec, step: int) -> StepPlan:
    """The plan of train_step call number `step`: rows split over the ranks once (rank r keeps
    the log-probs of its shard), then each PPO epoch shuffles every shard (seeded by the seed
    and `step`) and cuts it into num_mini_batches mini-batches; mini-batch m is the m-th slice
    of every shard. The passes are those the loss declares; each mini-batch's normaliser is its
    aggregation's units."""
    config, loss = spec.config, spec.loss
    aggregation = get_aggregation(loss.aggregation)
    lengths = row_lengths(batch)
    budget = config.micro_batch_token_budget
    shards = split_rows(range(len(batch)), config.num_ranks)
    generator = torch.Generator().manual_seed(spec.seed * 1_000_003 + step)
    plan = StepPlan(step=step, needs=loss.needs, logprob_plans=[[] for _ in shards],
                    mini_batch_plans=[[] for _ in shards], loss_units=[])
    for epoch in range(loss.ppo_epochs):
        orders = [[shard[i] for i in torch.randperm(len(shard), generator=generator).tolist()]
                  for shard in shards]
        slices = [split_rows(order, config.num_mini_batches) for order in orders]
        for mini_batch in zip(*slices, strict=True):
            rank_plans = plan_micro_batches(mini_batch, lengths, budget)
            if epoch == 0:  # every row once, packed as the first epoch trains it
                for rank, rank_plan in enumerate(rank_plans):
                    plan.logprob_plans[rank] += rank_plan
            units = _loss_units(batch, [row for rows in mini_batch for row in rows], aggregation)
            if units == 0:
                continue  # nothing to learn from (all rows masked): no optimizer step
            for rank, rank_plan in enumerate(rank_plans):
                plan.mini_batch_plans[rank].append(rank_plan)
            plan.loss_units.append(units)
    plan.old_logprobs_pass = not (loss.needs.old_logprobs_from_training_forward
                                  and not loss.needs.mini_batch_pre_pass
                                  and loss.ppo_epochs == 1 and config.num_mini_batches == 1)
    return plan


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


def _loss_units(batch: TrainBatch, rows: Sequence[int], aggregation: Aggregation) -> float:
    """The normaliser of one mini-batch, over all its ranks: the aggregation's units of its rows
    (loss tokens, rows or loss weights; a row outside the loss has no loss tokens)."""
    loss_tokens = [len(batch.response_ids[row]) if batch.loss_mask[row] else 0 for row in rows]
    weights = None if batch.loss_weights is None else [float(batch.loss_weights[row]) for row in rows]
    return aggregation.units(loss_tokens, weights)


def _logprob_gap(sums: list[dict[str, float]]) -> dict[str, float]:
    """rollout_learner_logprob_gap from the ranks' sums of |rollout - learner| and tokens."""
    tokens = sum(s["gap_tokens"] for s in sums)
    return {"rollout_learner_logprob_gap": sum(s["gap_sum"] for s in sums) / tokens if tokens else float("nan")}


def _combine_mini_batch_metrics(per_rank: list[list[dict[str, float]]]) -> dict[str, float]:
    """Adds each mini-batch's sums over ranks, normalises, and averages over mini-batches;
    lr is the rate the step's last update used."""
    per_mini_batch = []
    for rank_results in zip(*per_rank, strict=True):
        tokens = sum(result["tokens"] for result in rank_results)
        combined = {
            "loss": sum(result["loss"] for result in rank_results),
            "grad_norm": rank_results[0]["grad_norm"],
            "lr": rank_results[0]["lr"],
            "tokens": tokens,
            "skipped_updates": rank_results[0].get("skipped", 0.0),  # the same on every rank
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
    skipped = [m["skipped_updates"] for m in per_mini_batch]
    metrics["skipped_updates"] = sum(skipped)  # updates DeepSpeed skipped (non-finite gradients)
    trailing = len(skipped) - next((i + 1 for i in reversed(range(len(skipped))) if not skipped[i]), 0)
    metrics["trailing_skipped_updates"] = float(trailing)  # skipped in a row at the step's end
    return metrics
