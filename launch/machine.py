"""The share of a node's CPUs each kind of process of a run gets: the rule (thread_shares, a
pure function the run config's `auto` thread counts settle by), the environment that gives a
process its threads (OpenMP, MKL, passive waiting) and vLLM's CPU thread binding. The compute
dtype's `auto` is riskpo/models/precision.py."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass


def node_cpu_ids(limit: int | None = None) -> list[int]:
    """The CPU ids this process may run on (its affinity mask), at most `limit` of them."""
    ids = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    return ids[:limit] if limit else ids


@dataclass(frozen=True)
class ThreadShares:
    """Intra-op threads of each rollout actor and each learner rank on a node. Verifiers and
    the driver always use one (a verifier's work is Python; the driver's tensors are small,
    and two threads on a busy machine made small ops 10-20x slower)."""

    rollout: int
    learner: int
    overlap: bool  # generation and training run at once (trainer.off_policy_steps > 0)
    verifier: int = 1
    driver: int = 1


def thread_shares(node_cpus: int, rollout_actors: int, learner_ranks: int, overlap: bool) -> ThreadShares:
    """The rule. In the synchronous loop the rollout actors and the learner ranks on a node take
    turns (generate, then train), so each phase gets all node_cpus: each rollout actor
    node_cpus // rollout_actors threads, each learner rank node_cpus // learner_ranks. When
    they run at once (overlap) they split the node: every one of the rollout_actors +
    learner_ranks processes gets node_cpus // (their number). Never fewer than one thread."""
    if node_cpus < 1 or rollout_actors < 1 or learner_ranks < 1:
        raise ValueError(f"thread_shares: need >= 1 CPU, actor and rank, got {node_cpus}, "
                         f"{rollout_actors}, {learner_ranks}")
    if overlap:
        each = max(1, node_cpus // (rollout_actors + learner_ranks))
        return ThreadShares(rollout=each, learner=each, overlap=True)
    return ThreadShares(rollout=max(1, node_cpus // rollout_actors),
                        learner=max(1, node_cpus // learner_ranks), overlap=False)


def omp_env(threads: int) -> dict[str, str]:
    """The environment of a process given `threads` intra-op threads: OpenMP and MKL sized to
    them, and passive waiting, so the threads of a process whose turn it is not sleep instead of
    spinning on the cores the other phase computes on (GNU OpenMP spins ~300k iterations after
    each parallel region by default)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "OMP_WAIT_POLICY": "PASSIVE"}


def vllm_thread_binding(cpu_ids: Sequence[int], threads: int, actors_on_node: int,
                        tensor_parallel_size: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for a rollout actor's engine (read by vLLM's CPU backend when it
    runs its workers as processes: tensor parallelism, or V1 multiprocessing). One actor on the
    node: its `threads` CPUs, the first of cpu_ids, split into one "|"-separated list per
    tensor-parallel rank ("0-1", "0|1"). Several actors share one runtime environment and
    cannot be told apart, so they get "nobind" and run OMP_NUM_THREADS threads each, unpinned
    (vLLM's default "auto" would bind every one of them to the same NUMA node's cores, minus
    one it reserves for its scheduler)."""
    if actors_on_node > 1:
        return "nobind"
    ids = list(cpu_ids[:threads])
    per_rank = max(1, len(ids) // tensor_parallel_size)
    groups = [ids[rank * per_rank:(rank + 1) * per_rank] or ids[-1:] for rank in range(tensor_parallel_size)]
    return "|".join(_id_range(group) for group in groups)


def _id_range(ids: Sequence[int]) -> str:
    """"2-5" for consecutive ids, else "2,4,7"."""
    if len(ids) > 1 and list(ids) == list(range(ids[0], ids[0] + len(ids))):
        return f"{ids[0]}-{ids[-1]}"
    return ",".join(str(cpu) for cpu in ids)
