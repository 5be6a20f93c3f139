"""Weight sync from learner rank 0 to the rollout engines: a manifest over Ray, the bytes in
buckets over a standalone torch.distributed group (gloo on CPU, NCCL on GPU, one code path).

The rollout actor calls `make_receiver(**transport_kwargs)`; learner rank 0 calls
`make_sender(...)`. Both block until every member of the group has joined.
"""

from __future__ import annotations

from workers.weight_sync.manifest import TensorSpec, WeightManifest, build_manifest
from workers.weight_sync.transport import (
    SENDER_RANK,
    Backend,
    BroadcastReceiver,
    BroadcastSender,
    open_process_group,
)

__all__ = [
    "Backend",
    "BroadcastReceiver",
    "BroadcastSender",
    "TensorSpec",
    "WeightManifest",
    "build_manifest",
    "make_receiver",
    "make_sender",
]


def make_sender(
    *,
    master_addr: str,
    master_port: int,
    world_size: int,
    backend: Backend = "gloo",
    group_name: str = "weight_sync",
    timeout_s: float = 600.0,
) -> BroadcastSender:
    """The sending end (rank 0, which also hosts the rendezvous store at master_port)."""
    group = open_process_group(
        master_addr=master_addr,
        master_port=master_port,
        rank=SENDER_RANK,
        world_size=world_size,
        backend=backend,
        group_name=group_name,
        timeout_s=timeout_s,
    )
    return BroadcastSender(group, backend)


def make_receiver(
    *,
    master_addr: str,
    master_port: int,
    rank: int,
    world_size: int,
    backend: Backend = "gloo",
    group_name: str = "weight_sync",
    timeout_s: float = 600.0,
) -> BroadcastReceiver:
    """A receiving end (rank >= 1): what a rollout worker builds from its transport kwargs."""
    if rank == SENDER_RANK:
        raise ValueError(f"make_receiver: rank {SENDER_RANK} is the sender's; receivers are 1..N")
    group = open_process_group(
        master_addr=master_addr,
        master_port=master_port,
        rank=rank,
        world_size=world_size,
        backend=backend,
        group_name=group_name,
        timeout_s=timeout_s,
    )
    return BroadcastReceiver(group, backend)
