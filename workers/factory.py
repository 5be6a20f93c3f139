"""Builds a run's worker groups from its config: the Ray connection, the model the workers load,
and the rollout, verifier and learner groups placed as the cluster config says."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
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


def required_resources(run: RunConfig) -> dict[str, float]:
    """Logical CPUs and GPUs the run's actors ask Ray for (the driver needs none)."""
    c, v = run.cluster, run.verifier
    verifiers = v.num_math_actors + v.num_code_actors
    return {
        "CPU": run.rollout.num_actors * c.rollout_cpus_per_actor
        + verifiers * c.verifier_cpus_per_actor + run.learner.num_ranks * c.learner_cpus_per_rank,
        "GPU": run.rollout.num_actors * c.rollout_gpus_per_actor
        + run.learner.num_ranks * c.learner_gpus_per_rank,
    }


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
    runtime_env = {"env_vars": ACTOR_ENV}
    if address:
        console.print(f"ray: joining the cluster at {address}")
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        temp_dir = os.environ.get("RAY_TMPDIR") or tempfile.mkdtemp(prefix="ray", dir="/tmp")
        num_cpus = run.cluster.num_cpus or max(os.cpu_count() or 1, int(required_resources(run)["CPU"] + 0.999))
        console.print(f"ray: starting a local cluster ({num_cpus} logical CPUs)")
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=512 * 1024 * 1024, runtime_env=runtime_env, _temp_dir=temp_dir)
    try:
        check_resources(run, ray.cluster_resources())
    except ConfigError:
        ray.shutdown()
        raise
    return True


def check_resources(run: RunConfig, available: dict[str, float]) -> None:
    """ConfigError when the cluster has fewer CPUs or GPUs than the run's actors need."""
    for resource, needed in required_resources(run).items():
        have = available.get(resource, 0.0)
        if needed > have + 1e-9:
            key = "cluster.num_cpus" if resource == "CPU" else "cluster.rollout_gpus_per_actor"
            raise ConfigError(
                key, f"the actors need {needed:g} {resource}s but the Ray cluster has {have:g}",
                "lower rollout.num_actors / learner.num_ranks / verifier actor counts or their "
                "cluster.*_per_actor shares, or add nodes (a local cluster: cluster.num_cpus=N)")


@dataclass
class RunWorkers:
    """The three groups a Trainer calls, and their shutdown."""

    rollout: Any
    verifiers: Any
    learner: Any

    def shutdown(self) -> None:
        for group in (self.learner, self.rollout, self.verifiers):
            group.shutdown()


def learner_config(run: RunConfig) -> Any:
    from workers.learner.config import LearnerConfig

    learner, loss = run.learner, run.algorithm.loss
    return LearnerConfig(
        num_ranks=learner.num_ranks,
        device="gpu" if run.cluster.learner_gpus_per_rank > 0 else "cpu",
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
        actor_num_cpus=run.cluster.verifier_cpus_per_actor)


def build_workers(run: RunConfig, model_path: str, console: Console) -> RunWorkers:
    """Starts the rollout, verifier and learner groups (learner last: it loads the model)."""
    from workers.learner.group import LearnerGroup
    from workers.rollout.group import RolloutGroup
    from workers.verifier.ray_pool import VerifierPool

    c, r = run.cluster, run.rollout
    console.print(f"workers: {r.num_actors} {r.engine} rollout actor(s), "
                  f"{run.verifier.num_math_actors} math + {run.verifier.num_code_actors} code "
                  f"verifier actor(s), {run.learner.num_ranks} learner rank(s) (ZeRO-{run.learner.zero_stage})")
    engine_kwargs: dict[str, Any] = {"dtype": run.model.dtype}
    if run.model.gguf_file:
        engine_kwargs["gguf_file"] = run.model.gguf_file
    if r.engine == "vllm":
        engine_kwargs.update(tensor_parallel_size=r.tensor_parallel_size,
                             gpu_memory_utilization=r.gpu_memory_utilization)
    rollout = RolloutGroup(
        num_actors=r.num_actors, engine_kind=r.engine, model_path=str(Path(model_path)),
        engine_kwargs=engine_kwargs, num_cpus_per_actor=c.rollout_cpus_per_actor,
        num_gpus_per_actor=c.rollout_gpus_per_actor)
    verifiers = VerifierPool(
        {"math": run.verifier.num_math_actors, "code": run.verifier.num_code_actors},
        verifier_limits(run))
    learner = LearnerGroup(model_path, learner_config(run), cpus_per_rank=c.learner_cpus_per_rank,
                           gpus_per_rank=c.learner_gpus_per_rank,
                           placement_strategy=c.placement_strategy)
    return RunWorkers(rollout=rollout, verifiers=verifiers, learner=learner)
