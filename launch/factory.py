"""The composition root: turns a RunConfig into the worker groups a Trainer calls -- the Ray
connection, the model the workers load, and the rollout, verifier and learner groups placed
as the cluster config says (launch/placement.py)."""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from launch.config import RunConfig
from launch.machine import node_cpu_ids, omp_env, vllm_thread_binding
from launch.placement import (
    check_resources,
    computes_on_gpu,
    node_marker,
    required_resources,
    reserve_placement,
)
from launch.reachability import unreachable
from riskpo.models.config import TINY_MODEL
from riskpo.options import ConfigError
from workers.learner.config import LearnerSpec
from workers.rollout.vllm_api import CPU_MAX_SEQUENCES

# Set in every actor: no usage reporting, no JIT builds of DeepSpeed's CPU ops, quiet tokenizers,
# one OpenMP thread (rollout actors and learner ranks get their share instead: thread_environments).
ACTOR_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}


def prepare_model(run: RunConfig, console: Console) -> str:
    """The model directory every worker loads: the warm-started tiny model (trained once, then
    cached), or model.path as given (a local HF directory or a hub id)."""
    if run.model.path != TINY_MODEL:
        return run.model.path
    from riskpo.models.tiny import build_tiny_model
    from riskpo.models.warmstart import cache_root, ensure_warm_start

    if run.model.warmstart.enabled:
        return str(ensure_warm_start(run.model, run.data, console))
    tiny = run.model.tiny
    target = cache_root(run.model.warmstart.cache_dir) / "random" / f"{tiny.arch}-{tiny.init_seed}"
    if not (target / "config.json").is_file():
        build_tiny_model(target, **tiny.build_kwargs())
    return str(target)


_STARTED_DIRS: list[Path] = []  # Ray temp/session directories of the local clusters started here


def start_local_ray(num_cpus: int) -> None:
    """A local Ray cluster of num_cpus logical CPUs, with the actors' environment. It lives in a
    fresh directory under the temp dir (or a session under $RAY_TMPDIR), which shutdown_ray
    removes again (at exit too, whatever stops the process short of SIGKILL)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    shared = os.environ.get("RAY_TMPDIR")
    base = tempfile.gettempdir()  # Ray's socket paths under it must stay below 108 bytes
    temp_dir = shared or tempfile.mkdtemp(prefix="ray-riskpo-", dir=base if len(base) <= 24 else "/tmp")
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=512 * 1024 * 1024, runtime_env={"env_vars": ACTOR_ENV},
                 _temp_dir=temp_dir)
    except BaseException:
        if not shared:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    started = _session_dir() if shared else Path(temp_dir)
    if started is not None:
        if not _STARTED_DIRS:
            atexit.unregister(shutdown_ray)
            atexit.register(shutdown_ray)
        _STARTED_DIRS.append(started)


def shutdown_ray() -> None:
    """Disconnects from Ray: a local cluster started here stops, and its directory under the
    temp dir is removed. Safe to call more than once."""
    import ray

    ray.shutdown()
    remove_started_dirs()


def remove_started_dirs() -> None:
    """Removes the temp directories of the local clusters started here."""
    while _STARTED_DIRS:
        path = _STARTED_DIRS.pop()
        for _ in range(3):  # Ray's processes may still be closing their logs
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                break
            time.sleep(0.2)
        latest = path.parent / "session_latest"
        if latest.is_symlink() and not latest.exists():
            latest.unlink()


def _session_dir() -> Path | None:
    """The session directory of the local cluster just started (Ray has no public call)."""
    import ray

    try:
        return Path(ray._private.worker._global_node.get_session_dir_path())
    except AttributeError:
        return None


def cluster_address(run: RunConfig) -> tuple[str | None, str]:
    """The address to join and the key that set it (cluster.address or RAY_ADDRESS)."""
    if run.cluster.address:
        return run.cluster.address, "cluster.address"
    return os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS"


def check_reachable(run: RunConfig) -> None:
    """Raises ConfigError within cluster.connect_timeout_s when the cluster address given does
    not accept connections (Ray itself would retry for about 14 minutes)."""
    address, key = cluster_address(run)
    problem = unreachable(address, run.cluster.connect_timeout_s) if address else None
    if problem:
        raise ConfigError(key, f"no Ray cluster answered at {address} ({problem})",
                          f"check that the head node is up (ray status --address {address}), the "
                          "host and port (GCS, 6379 by default) and firewalls; raise "
                          f"cluster.connect_timeout_s for a slow start, or unset {key} to start "
                          "a local cluster")


def connect_ray(run: RunConfig, console: Console) -> bool:
    """Joins cluster.address or RAY_ADDRESS when given (within cluster.connect_timeout_s),
    else starts a local cluster with enough logical CPUs for the run's actors. Returns True
    when this call connected (the caller calls shutdown_ray at the end). Raises when the
    cluster cannot hold the actors, rather than letting them wait forever for resources."""
    import ray

    if ray.is_initialized():
        check_resources(run, ray.cluster_resources())
        return False
    address, _ = cluster_address(run)
    if address:
        check_reachable(run)
        console.print(f"ray: joining the cluster at {address}")
        ray.init(address=address, runtime_env={"env_vars": ACTOR_ENV}, log_to_driver=False)
    else:
        num_cpus = run.cluster.num_cpus or max(os.cpu_count() or 1, int(required_resources(run)["CPU"] + 0.999))
        console.print(f"ray: starting a local cluster ({num_cpus} logical CPUs)")
        start_local_ray(num_cpus)
    try:
        check_resources(run, ray.cluster_resources())
    except ConfigError:
        shutdown_ray()
        raise
    return True


@dataclass
class RunWorkers:
    """What a Trainer calls: the three groups, the weight-sync object that ties the learner to
    the rollout engines, and their shutdown (placement groups last)."""

    rollout: Any
    verifiers: Any
    learner: Any
    weight_sync: Any
    placement_groups: list[Any] = field(default_factory=list)

    def shutdown(self) -> None:
        for group in (self.learner, self.rollout, self.verifiers):
            group.shutdown()
        if self.placement_groups:
            from ray.util.placement_group import remove_placement_group

            for placement_group in self.placement_groups:
                remove_placement_group(placement_group)
            self.placement_groups = []


def learner_spec(run: RunConfig) -> LearnerSpec:
    """The learner options, the loss, and where and at what temperature the ranks compute."""
    device = "gpu" if computes_on_gpu(run, run.cluster.learner_gpus_per_rank) else "cpu"
    return LearnerSpec(config=run.learner, loss=run.algorithm.loss, device=device,
                       temperature=run.rollout.temperature or 1.0, seed=run.seed, lora=run.model.adapters)


def verifier_limits(run: RunConfig) -> Any:
    """The verifier pool's limits, its actors asking for the cluster's verifier resources."""
    return run.verifier.limits(run.cluster.verifier_cpus_per_actor, node_marker(run, "verifier"))


def engine_kwargs(run: RunConfig) -> dict[str, Any]:
    """The rollout engines' options from the run (model.dtype settled by validate())."""
    r = run.rollout
    kwargs: dict[str, Any] = {"dtype": run.model.dtype}
    if run.model.gguf_file:
        kwargs["gguf_file"] = run.model.gguf_file
    if r.engine == "vllm":
        kwargs.update(tensor_parallel_size=r.tensor_parallel_size,
                      gpu_memory_utilization=r.gpu_memory_utilization,
                      enforce_eager=r.enforce_eager)
        if r.kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(r.kv_cache_gib * 1024**3)
        if not computes_on_gpu(run, run.cluster.rollout_gpus_per_actor):  # KV cache sized on CPU
            kwargs.update(max_model_len=run.data.max_prompt_length + r.max_new_tokens,
                          kv_cache_sequences=engine_sequences(run))
        if run.model.adapters is not None and run.learner.lora_sync == "adapter":
            kwargs["max_lora_rank"] = run.model.adapters.rank  # LoRA enabled at engine start
        if run.cluster.colocate:  # the loop puts the engines to sleep while the learner works
            # vLLM has sleep mode only on GPUs (it refuses it elsewhere): an engine computing on
            # CPUs (cluster.device=cpu, a rehearsal) still sleeps and wakes, freeing nothing
            kwargs.update(enable_sleep_mode=computes_on_gpu(run, run.cluster.rollout_gpus_per_actor),
                          sleep_level=r.sleep_level)
    elif computes_on_gpu(run, run.cluster.rollout_gpus_per_actor):
        kwargs["device"] = "cuda"  # Ray's CUDA_VISIBLE_DEVICES makes the actor's GPU device 0
    return kwargs


def engine_sequences(run: RunConfig) -> int:
    """The most sequences the run sends one engine in a call: a training round's prompts x
    samples, or an evaluation's rows (data.<eval_on>.size; all rows: vLLM's largest CPU
    batch) x data.eval_samples, shared by the rollout actors."""
    train = run.trainer.prompts_per_step * run.trainer.samples_per_prompt
    split = getattr(run.data, run.data.eval_on)
    rows = split.size if split is not None and split.size is not None else CPU_MAX_SEQUENCES
    return math.ceil(max(train, rows * run.data.eval_samples) / run.rollout.num_actors)


def thread_environments(run: RunConfig) -> tuple[dict[str, str], dict[str, str]]:
    """The environment of each rollout actor and of each learner rank: the thread counts
    validate() settled (launch/machine.py thread_shares), OpenMP's passive waiting, and for a
    vLLM engine on CPUs its thread binding (read where vLLM runs its workers as processes;
    in-process, as here, OMP_NUM_THREADS sizes its threads). Verifiers keep ACTOR_ENV's one."""
    c, r = run.cluster, run.rollout
    rollout_env = omp_env(c.rollout_threads_per_actor)
    if r.engine == "vllm" and not computes_on_gpu(run, c.rollout_gpus_per_actor):
        rollout_env["VLLM_CPU_OMP_THREADS_BIND"] = vllm_thread_binding(
            node_cpu_ids(c.num_cpus), c.rollout_threads_per_actor, r.num_actors, r.tensor_parallel_size)
    return rollout_env, omp_env(c.learner_threads_per_rank)


def _use_one_thread() -> None:
    """The driver's own tensor work (advantages, batches) is small: one intra-op thread (two
    threads beside busy actors made such ops 10-20x slower here)."""
    import torch

    torch.set_num_threads(1)


def engines_load_first(run: RunConfig) -> bool:
    """Whether the engines must be up before the learner loads: colocated on GPUs, where the
    engines take their memory first; on CPUs (cluster.device=cpu, a rehearsal) the colocated
    engines and learner share no device memory, so they load at once, as disaggregated ones do."""
    return run.cluster.colocate and computes_on_gpu(run, run.cluster.rollout_gpus_per_actor)


def build_workers(run: RunConfig, model_path: str, console: Console) -> RunWorkers:
    """Starts the rollout, verifier and learner groups, placed as the cluster config says (see
    launch/placement.py), and the weight sync between learner and engines. The engines load
    while the learner loads (and the verifiers start), except colocated on GPUs: there the
    engines are up before the learner loads onto the same devices. On failure, what was started
    is stopped again before the error propagates."""
    from ray.util.placement_group import remove_placement_group

    from workers.learner.group import LearnerGroup
    from workers.rollout.group import RolloutGroup
    from workers.verifier.ray_pool import VerifierPool
    from workers.weight_sync.sync import WeightSync

    c, r = run.cluster, run.rollout
    if run.model.adapters is not None:  # target modules the model has, before anything starts
        from riskpo.models.lora import check_lora_targets

        targets = check_lora_targets(model_path, run.model.adapters)
        console.print(f"lora: rank {run.model.adapters.rank} adapters on {len(targets)} Linear "
                      f"modules, sync {run.learner.lora_sync}", highlight=False)
    rollout_env, learner_env = thread_environments(run)
    console.print(f"threads: {c.rollout_threads_per_actor} per rollout actor, "
                  f"{c.learner_threads_per_rank} per learner rank ("
                  f"{'split: they overlap' if run.trainer.off_policy_steps else 'they take turns'}), "
                  "1 per verifier, 1 in the driver", highlight=False)
    _use_one_thread()
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
            bundle_indices=placement.rollout_bundles, runtime_env={"env_vars": rollout_env},
            wait=engines_load_first(run)))
        started.append(VerifierPool(
            run.verifier.actor_counts, verifier_limits(run), placement_group=placement.verifier,
            bundle_indices=placement.verifier_bundles, wait=False))
        started.append(LearnerGroup(
            model_path, learner_spec(run), cpus_per_rank=c.learner_cpus_per_rank,
            gpus_per_rank=c.learner_gpus_per_rank * share, placement_strategy=c.placement_strategy,
            bundle_resources=node_marker(run, "learner"), placement_group=placement.learner,
            runtime_env={"env_vars": learner_env}))
        for group in started[:2]:
            group.wait_ready()
    except BaseException:
        for group in reversed(started):
            group.shutdown()
        for group in placement.groups:
            remove_placement_group(group)
        raise
    rollout, verifiers, learner = started
    return RunWorkers(rollout=rollout, verifiers=verifiers, learner=learner,
                      weight_sync=WeightSync(learner, rollout), placement_groups=placement.groups)
