"""The run config's `auto` values, settled once by validate() (launch/config.py) from the run's
shape and this machine, before anything starts: the engines' and the learner's dtype
(riskpo/models/precision.py), the threads of each rollout actor and learner rank
(launch/machine.py), and whether the loss corrects for the engines sampling from a policy other
than the learner's (the importance correction). record_settled writes what they settled to into
the composed config, so config.yaml holds what the run used and the run reproduces elsewhere."""

from __future__ import annotations

from dataclasses import is_dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from launch.machine import node_cpu_ids, thread_shares
from launch.placement import computes_on_gpu
from riskpo.models.precision import AUTO, resolve_dtype

# Keys whose `auto` validate() settles from the machine and the run's shape, recorded in the
# composed config: config.yaml then holds what the run used.
SETTLED_KEYS = ("model.dtype", "learner.dtype", "cluster.rollout_threads_per_actor",
                "cluster.learner_threads_per_rank", "algorithm.loss.importance_correction")
FULL_PRECISION = "float32"


def settle_auto(run: Any) -> None:
    """Replaces the `auto` of every key of SETTLED_KEYS in the run config (a RunConfig) by
    what it stands for here; explicit values stay."""
    run.model.dtype = resolve_dtype(run.model.dtype, computes_on_gpu(run, run.cluster.rollout_gpus_per_actor),
                                    role="engine")
    run.learner.dtype = resolve_dtype(run.learner.dtype,
                                      computes_on_gpu(run, run.cluster.learner_gpus_per_rank), role="learner")
    _settle_threads(run)
    _settle_importance_correction(run)


def record_settled(cfg: DictConfig, run: Any) -> None:
    """Writes the settled value of every key of SETTLED_KEYS into the composed config. A section
    the composed config leaves empty (algorithm.loss of a preset that selects none: the run
    takes its estimator's recipe) is written whole, as the run used it."""
    for key in SETTLED_KEYS:
        parts = key.split(".")
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if depth == len(parts) or OmegaConf.select(cfg, prefix) is None:
                value = run
                for part in parts[:depth]:
                    value = getattr(value, part)
                if is_dataclass(value):
                    value = OmegaConf.structured(value)
                OmegaConf.update(cfg, prefix, value, merge=False)
                break


def _settle_threads(run: Any) -> None:
    """launch/machine.py thread_shares over the CPUs this process may use (at most
    cluster.num_cpus), every rollout actor and learner rank of the run counted on one node:
    so it is on a local cluster; a joined cluster whose nodes differ from this one states the
    two keys."""
    cluster = run.cluster
    if AUTO not in (cluster.rollout_threads_per_actor, cluster.learner_threads_per_rank):
        return
    shares = thread_shares(len(node_cpu_ids(cluster.num_cpus)), run.rollout.num_actors,
                           run.learner.num_ranks, overlap=run.trainer.off_policy_steps > 0)
    if cluster.rollout_threads_per_actor == AUTO:
        cluster.rollout_threads_per_actor = shares.rollout
    if cluster.learner_threads_per_rank == AUTO:
        cluster.learner_threads_per_rank = shares.learner


def _settle_importance_correction(run: Any) -> None:
    """algorithm.loss.importance_correction=auto: token-level truncated importance sampling when
    the engines' samples are not the learner's policy's: the loop trains on rollouts of older
    weights (trainer.off_policy_steps > 0), or the engines or the learner compute below float32
    (in bf16 two implementations of one model differ in a token's log-prob by far more than
    in float32: workers/learner/README.md). None when both compute in float32 on-policy, and
    on-policy when the engines sample a truncated distribution (rollout.top_p < 1 or top_k > 0:
    their log-probs are not the full softmax the weights compare with)."""
    loss, rollout = run.algorithm.loss, run.rollout
    if loss.importance_correction != AUTO:
        return
    full_precision = run.model.dtype == run.learner.dtype == FULL_PRECISION
    truncated = rollout.top_p < 1.0 or rollout.top_k > 0
    on_policy = run.trainer.off_policy_steps == 0
    loss.importance_correction = "none" if on_policy and (full_precision or truncated) else "token"
