"""Weight sync from learner rank 0 to the rollout engines: a manifest over Ray, the bytes in
buckets over a standalone torch.distributed group (gloo on CPU, NCCL on GPU, one code path).

Learner rank 0 calls `make_sender(address)`, each rollout actor `make_receiver(address, rank)`,
with the same SyncGroupAddress; both block until every member of the group has joined. The
object that ties a learner group to a rollout group and owns the weight version the engines
hold is `workers.weight_sync.sync.WeightSync` (it imports Ray; this package does not).
"""

from __future__ import annotations

from workers.weight_sync.manifest import TensorSpec, WeightManifest, build_manifest
from workers.weight_sync.transport import (
    SENDER_RANK,
    Backend,
    BroadcastReceiver,
    BroadcastSender,
    SyncGroupAddress,
    open_process_group,
)

__all__ = [
    "Backend",
    "BroadcastReceiver",
    "BroadcastSender",
    "SyncGroupAddress",
    "TensorSpec",
    "WeightManifest",
    "build_manifest",
    "make_receiver",
    "make_sender",
]


def make_sender(address: SyncGroupAddress) -> BroadcastSender:
    """The sending end (rank 0, which also hosts the rendezvous store at address.master_port)."""
    return BroadcastSender(open_process_group(address, SENDER_RANK), address.backend)


def make_receiver(address: SyncGroupAddress, rank: int) -> BroadcastReceiver:
    """A receiving end (rank >= 1): what a rollout actor builds when it joins the group."""
    if rank == SENDER_RANK:
        raise ValueError(f"make_receiver: rank {SENDER_RANK} is the sender's; receivers are 1..N")
    return BroadcastReceiver(open_process_group(address, rank), address.backend)
