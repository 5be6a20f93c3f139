"""Builds a run's worker groups from its config: the Ray connection, the model the workers load,
and the rollout, verifier and learner groups placed as the cluster config says."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from riskpo.config import TINY_MODEL, ConfigError, RunConfig

# Set in every actor: no usage reporting, no JIT builds of DeepSpeed's CPU ops, quiet tokenizers.
ACTOR_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}


def run_name(run: RunConfig) -> str:
    return run.logger.run_name or f"{run.experiment_name}-{run.algorithm.name}-seed{run.seed}"


def prepare_model(run: RunConfig, console: Console) -> str:
    """The model directory every worker loads: the warm-started tiny model (trained once, then
    cached), or model.path as given (a local HF directory or a hub id)."""
    if run.model.path != TINY_MODEL:
        return run.model.path
    from riskpo.modeling import build_tiny_model
    from riskpo.warmstart import cache_root, ensure_warm_start

    if run.model.warmstart.enabled:
        return str(ensure_warm_start(run.model, run.data, console))
    tiny = run.model.tiny
    target = cache_root(run.model.warmstart.cache_dir) / "random" / f"{tiny.arch}-{tiny.init_seed}"
    if not (target / "config.json").is_file():
        build_tiny_model(target, arch=tiny.arch, hidden_size=tiny.hidden_size,
                         num_layers=tiny.num_layers, num_heads=tiny.num_heads,
                         head_dim=tiny.head_dim, intermediate_size=tiny.intermediate_size,
                         max_position_embeddings=tiny.max_position_embeddings, seed=tiny.init_seed)
    return str(target)


# Placement. Where the strategy allows, one placement group holds every actor of the run: a
# bundle per learner rank, per rollout actor and per verifier actor ({CPU, GPU, its node marker};
# colocated: bundle i holds rollout actor i and learner rank i, each asking half of its GPU so
# Ray hands both the same device). Reserved all or nothing, so two runs sharing a cluster that
# fits one never each hold part of what they need and wait for each other: the second waits,
# holding nothing, until the first ends. When a node dies, Ray reschedules its bundles on the
# surviving nodes that have room (a verifier's on another node with the verifier marker) and
# restarts the actors there. STRICT_SPREAD, and STRICT_PACK onto different node markers, which
# one group cannot satisfy, keep the rollout actors (or colocated pairs) in their own group,
# the learner ranks in LearnerGroup's, and the verifiers as plain actors. A marker resource is
# one unit per actor: a node advertising N (launch/cluster: --verifier-slots N) hosts at most N.
MARKER_KEYS = {"verifier": "verifier_resource", "rollout": "rollout_resource",
               "learner": "learner_resource"}


def node_marker(run: RunConfig, group: str) -> dict[str, float]:
    """{resource: 1} for the custom resource the cluster config names for group, else {}."""
    name = getattr(run.cluster, MARKER_KEYS[group])
    return {name: 1.0} if name else {}


def _cpu_gpu(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {})}


def rollout_bundle(run: RunConfig) -> dict[str, float]:
    c = run.cluster
    return {**_cpu_gpu(c.rollout_cpus_per_actor, c.rollout_gpus_per_actor), **node_marker(run, "rollout")}


def learner_bundle(run: RunConfig) -> dict[str, float]:
    c = run.cluster
    return {**_cpu_gpu(c.learner_cpus_per_rank, c.learner_gpus_per_rank), **node_marker(run, "learner")}


def shared_bundle(run: RunConfig) -> dict[str, float]:
    """Colocated: one GPU share for a rollout actor and a learner rank, CPUs for both."""
    c = run.cluster
    cpus = c.rollout_cpus_per_actor + c.learner_cpus_per_rank
    return {**_cpu_gpu(cpus, c.learner_gpus_per_rank), **node_marker(run, "rollout"),
            **node_marker(run, "learner")}


def verifier_actor_resources(run: RunConfig) -> dict[str, float]:
    return {"CPU": run.cluster.verifier_cpus_per_actor, **node_marker(run, "verifier")}


def _add(total: dict[str, float], resources: dict[str, float], times: int) -> None:
    for name, amount in resources.items():
        total[name] = total.get(name, 0.0) + amount * times


def required_resources(run: RunConfig) -> dict[str, float]:
    """Logical CPUs, GPUs and node-marker resources the run's actors ask Ray for (the driver
    needs none)."""
    total = {"CPU": 0.0, "GPU": 0.0}
    if run.cluster.colocate:
        _add(total, shared_bundle(run), run.learner.num_ranks)
    else:
        _add(total, rollout_bundle(run), run.rollout.num_actors)
        _add(total, learner_bundle(run), run.learner.num_ranks)
    verifiers = run.verifier.num_math_actors + run.verifier.num_code_actors
    _add(total, verifier_actor_resources(run), verifiers)
    return total


def start_local_ray(num_cpus: int) -> None:
    """A local Ray cluster of num_cpus logical CPUs, with the actors' environment."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    temp_dir = os.environ.get("RAY_TMPDIR") or tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 1024 * 1024, runtime_env={"env_vars": ACTOR_ENV},
             _temp_dir=temp_dir)


def connect_ray(run: RunConfig, console: Console) -> bool:
    """Joins cluster.address or RAY_ADDRESS when given, else starts a local cluster with enough
    logical CPUs for the run's actors. Returns True when this call connected (the caller
    disconnects at the end). Raises when the cluster cannot hold the actors, rather than
    letting them wait forever for resources."""
    import ray

    if ray.is_initialized():
        check_resources(run, ray.cluster_resources())
        return False
    address = run.cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        console.print(f"ray: joining the cluster at {address}")
        ray.init(address=address, runtime_env={"env_vars": ACTOR_ENV}, log_to_driver=False)
    else:
        num_cpus = run.cluster.num_cpus or max(os.cpu_count() or 1, int(required_resources(run)["CPU"] + 0.999))
        console.print(f"ray: starting a local cluster ({num_cpus} logical CPUs)")
        start_local_ray(num_cpus)
    try:
        check_resources(run, ray.cluster_resources())
    except ConfigError:
        ray.shutdown()
        raise
    return True


def check_resources(run: RunConfig, available: dict[str, float]) -> None:
    """ConfigError naming the cluster key when the Ray cluster has fewer CPUs, GPUs or marker
    resources than the run's actors need."""
    markers = {getattr(run.cluster, key): f"cluster.{key}" for key in MARKER_KEYS.values()}
    for resource, needed in required_resources(run).items():
        have = available.get(resource, 0.0)
        if needed <= have + 1e-9:
            continue
        if resource in markers:
            nodes = "no node advertises it" if have == 0 else f"the nodes advertise {have:g}"
            raise ConfigError(
                markers[resource], f"the actors need {needed:g} of the custom resource "
                f"{resource!r} (one per actor) but {nodes}",
                f"start nodes with ray start --resources='{{\"{resource}\": N}}' "
                "(launch/cluster: --verifier-slots N for verifier_node), or set it to null")
        key = "cluster.num_cpus" if resource == "CPU" else "cluster.rollout_gpus_per_actor"
        raise ConfigError(
            key, f"the actors need {needed:g} {resource}s but the Ray cluster has {have:g}",
            "lower rollout.num_actors / learner.num_ranks / verifier actor counts or their "
            "cluster.*_per_actor shares, or add nodes (a local cluster: cluster.num_cpus=N)")


@dataclass
class RunWorkers:
    """The three groups a Trainer calls, and their shutdown (placement groups last)."""

    rollout: Any
    verifiers: Any
    learner: Any
    placement_groups: list[Any] = field(default_factory=list)

    def shutdown(self) -> None:
        for group in (self.learner, self.rollout, self.verifiers):
            group.shutdown()
        if self.placement_groups:
            from ray.util.placement_group import remove_placement_group

            for placement_group in self.placement_groups:
                remove_placement_group(placement_group)
            self.placement_groups = []


def computes_on_gpu(run: RunConfig, gpus_per_actor: float) -> bool:
    """Whether an actor given gpus_per_actor GPUs computes on them (cluster.device=cpu: no)."""
    return gpus_per_actor > 0 and run.cluster.device != "cpu"


def learner_config(run: RunConfig) -> Any:
    from workers.learner.config import LearnerConfig

    learner, loss = run.learner, run.algorithm.loss
    return LearnerConfig(
        num_ranks=learner.num_ranks,
        device="gpu" if computes_on_gpu(run, run.cluster.learner_gpus_per_rank) else "cpu",
        zero_stage=learner.zero_stage, dtype=learner.dtype, lr=learner.lr,
        weight_decay=learner.weight_decay, betas=list(learner.betas), grad_clip=learner.grad_clip,
        warmup_steps=learner.warmup_steps, ppo_epochs=loss.ppo_epochs,
        num_mini_batches=learner.num_mini_batches,
        micro_batch_token_budget=learner.micro_batch_token_budget,
        gradient_checkpointing=learner.gradient_checkpointing,
        offload_optimizer=learner.offload, temperature=run.rollout.temperature or 1.0,
        clip_low=loss.clip_low, clip_high=loss.clip_high, dual_clip=loss.dual_clip,
        aggregation=loss.aggregation, kl_coef=loss.kl_coef, kl_kind=loss.kl_kind,
        entropy_coef=loss.entropy_coef, tis_cap=loss.tis_cap, seed=run.seed)


def verifier_limits(run: RunConfig) -> Any:
    from workers.verifier.code import CodeLimits
    from workers.verifier.executor import ExecLimits
    from workers.verifier.math_verifier import MathLimits
    from workers.verifier.ray_pool import VerifierLimits

    v = run.verifier
    return VerifierLimits(
        code=CodeLimits(test_timeout_s=v.code_timeout_s, request_timeout_s=v.request_timeout_s),
        sandbox=ExecLimits(max_timeout_s=max(10.0, v.code_timeout_s), memory_mb=v.memory_mb),
        math=MathLimits(timeout_s=max(1, int(v.math_timeout_s)), hard_timeout_s=2 * v.math_timeout_s,
                        memory_mb=max(v.memory_mb, 1024), workers=v.workers_per_actor),
        code_slots_per_actor=v.workers_per_actor,
        actor_num_cpus=run.cluster.verifier_cpus_per_actor,
        actor_resources=node_marker(run, "verifier"))


def reserve_bundles(bundles: list[dict[str, float]], strategy: str, what: str,
                    timeout_s: float = 300.0) -> Any:
    """A ready placement group, or a RuntimeError naming what could not be placed."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group(bundles, strategy=strategy)
    try:
        ray.get(group.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        kinds = [b for i, b in enumerate(bundles) if b not in bundles[:i]]
        shown = " + ".join(f"{bundles.count(b)} x {b}" for b in kinds)
        raise RuntimeError(
            f"the cluster cannot place {what}: {shown} ({strategy}) within {timeout_s:.0f} s; "
            "check `ray status` against cluster.* (another run may hold the resources)") from None
    return group


def engine_kwargs(run: RunConfig) -> dict[str, Any]:
    r = run.rollout
    kwargs: dict[str, Any] = {"dtype": run.model.dtype}
    if run.model.gguf_file:
        kwargs["gguf_file"] = run.model.gguf_file
    if r.engine == "vllm":
        kwargs.update(tensor_parallel_size=r.tensor_parallel_size,
                      gpu_memory_utilization=r.gpu_memory_utilization)
    elif computes_on_gpu(run, run.cluster.rollout_gpus_per_actor):
        kwargs["device"] = "cuda"  # Ray's CUDA_VISIBLE_DEVICES makes the actor's GPU device 0
    return kwargs


@dataclass
class Placement:
    """Where a run's actors go: placement groups and bundle indices (None: not in a group)."""

    groups: list[Any]  # what build_workers removes at shutdown
    rollout: Any
    rollout_bundles: list[int] | None
    learner: Any | None  # None: LearnerGroup reserves its own group, one bundle per rank
    verifier: Any | None = None
    verifier_bundles: list[int] | None = None


def one_gang(run: RunConfig) -> bool:
    """Whether one placement group can hold all the run's actors under its strategy."""
    c = run.cluster
    if c.placement_strategy == "STRICT_SPREAD":
        return False
    markers = [node_marker(run, group) for group in ("rollout", "learner")]
    if run.verifier.num_math_actors + run.verifier.num_code_actors:
        markers.append(node_marker(run, "verifier"))
    return c.placement_strategy != "STRICT_PACK" or all(m == markers[0] for m in markers)


def reserve_placement(run: RunConfig) -> Placement:
    """One group, reserved all or nothing, for every actor of the run where the strategy allows
    (learner ranks, then rollout actors, then verifier actors; colocated: bundle i shared by
    rollout actor i and learner rank i, then the verifiers). Otherwise the rollout actors (or the
    colocated pairs) get a group and the verifiers are plain actors."""
    c, ranks, actors = run.cluster, run.learner.num_ranks, run.rollout.num_actors
    verifiers = run.verifier.num_math_actors + run.verifier.num_code_actors
    gang = one_gang(run)
    tail = [verifier_actor_resources(run)] * verifiers if gang else []
    if c.colocate:
        head, what = [shared_bundle(run)] * ranks, "the colocated rollout actors and learner ranks"
    elif gang:
        head = [learner_bundle(run)] * ranks + [rollout_bundle(run)] * actors
        what = "the learner ranks and rollout actors"
    else:
        head, what = [rollout_bundle(run)] * actors, "the rollout actors"
    group = reserve_bundles(head + tail, c.placement_strategy,
                            what + (" and verifier actors" if tail else ""))
    placement = Placement(groups=[group], rollout=group, rollout_bundles=None, learner=None)
    if c.colocate:
        placement.learner = group
    elif gang:
        placement.learner, placement.rollout_bundles = group, list(range(ranks, ranks + actors))
    if tail:
        placement.verifier = group
        placement.verifier_bundles = list(range(len(head), len(head) + verifiers))
    return placement


def build_workers(run: RunConfig, model_path: str, console: Console) -> RunWorkers:
    """Starts the rollout, verifier and learner groups (learner last: it loads the model),
    placed as the cluster config says (see the Placement note above). On failure, what was
    started is stopped again before the error propagates."""
    from ray.util.placement_group import remove_placement_group

    from workers.learner.group import LearnerGroup
    from workers.rollout.group import RolloutGroup
    from workers.verifier.ray_pool import VerifierPool

    c, r = run.cluster, run.rollout
    console.print(f"workers: {r.num_actors} {r.engine} rollout actor(s), "
                  f"{run.verifier.num_math_actors} math + {run.verifier.num_code_actors} code "
                  f"verifier actor(s), {run.learner.num_ranks} learner rank(s) (ZeRO-{run.learner.zero_stage})"
                  f", {'colocated' if c.colocate else 'disaggregated'} ({c.placement_strategy})")
    share = 0.5 if c.colocate else 1.0  # colocated: rollout actor and learner rank halve a GPU
    placement = reserve_placement(run)
    started: list[Any] = []
    try:
        started.append(RolloutGroup(
            num_actors=r.num_actors, engine_kind=r.engine, model_path=str(Path(model_path)),
            engine_kwargs=engine_kwargs(run), num_cpus_per_actor=c.rollout_cpus_per_actor,
            num_gpus_per_actor=c.rollout_gpus_per_actor * share, placement_group=placement.rollout,
            bundle_indices=placement.rollout_bundles))
        started.append(VerifierPool(
            {"math": run.verifier.num_math_actors, "code": run.verifier.num_code_actors},
            verifier_limits(run), placement_group=placement.verifier,
            bundle_indices=placement.verifier_bundles))
        started.append(LearnerGroup(
            model_path, learner_config(run), cpus_per_rank=c.learner_cpus_per_rank,
            gpus_per_rank=c.learner_gpus_per_rank * share, placement_strategy=c.placement_strategy,
            bundle_resources=node_marker(run, "learner"), placement_group=placement.learner))
    except BaseException:
        for group in reversed(started):
            group.shutdown()
        for group in placement.groups:
            remove_placement_group(group)
        raise
    rollout, verifiers, learner = started
    return RunWorkers(rollout=rollout, verifiers=verifiers, learner=learner,
                      placement_groups=placement.groups)
