"""Bucketed broadcast of named tensors from learner rank 0 to every rollout engine.

The process group is its own: a TCPStore hosted by the sender and a gloo (CPU) or NCCL
(GPU) group built on it directly, so it never touches DeepSpeed's default group.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

from workers.weight_sync.manifest import WeightManifest, pack_into, unpack_from

Backend = Literal["gloo", "nccl"]
SENDER_RANK = 0


@dataclass(frozen=True)
class SyncGroupAddress:
    """Where and how the members of one weight-sync group meet: the sender (rank 0) hosts the
    rendezvous store at master_addr:master_port; world_size counts the sender and every
    receiver; group_name keeps the store's keys apart from an earlier group's."""

    master_addr: str
    master_port: int
    world_size: int
    backend: Backend = "gloo"
    group_name: str = "weight_sync"
    timeout_s: float = 600.0


def open_process_group(address: SyncGroupAddress, rank: int) -> dist.ProcessGroup:
    """Joins a standalone process group (rank 0 hosts the store); blocks until all ranks join."""
    if address.backend not in ("gloo", "nccl"):
        raise ValueError(f"weight sync: backend must be 'gloo' or 'nccl', got {address.backend!r}")
    if not 0 <= rank < address.world_size:
        raise ValueError(f"weight sync: rank {rank} outside a group of {address.world_size}")
    timeout = datetime.timedelta(seconds=address.timeout_s)
    store = dist.TCPStore(
        address.master_addr,
        address.master_port,
        address.world_size,
        is_master=rank == SENDER_RANK,
        timeout=timeout,
        wait_for_workers=False,
    )
    prefixed = dist.PrefixStore(address.group_name, store)
    if address.backend == "gloo":
        return dist.ProcessGroupGloo(prefixed, rank, address.world_size, timeout)
    options = dist.ProcessGroupNCCL.Options()
    options._timeout = timeout
    return dist.ProcessGroupNCCL(prefixed, rank, address.world_size, options)


def transport_device(backend: Backend) -> torch.device:
    """Where bucket buffers live: host memory for gloo, the current GPU for NCCL."""
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _Broadcaster:
    def __init__(self, group: dist.ProcessGroup, backend: Backend):
        self.group = group
        self.device = transport_device(backend)

    def _broadcast(self, buffer: torch.Tensor) -> dist.Work:
        options = dist.BroadcastOptions()
        options.rootRank = SENDER_RANK
        return self.group.broadcast([buffer], options)


class BroadcastSender(_Broadcaster):
    """Rank 0 of the group: packs (name, tensor) pairs into buckets and broadcasts each bucket."""

    def send(self, manifest: WeightManifest, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Sends every tensor of the manifest, in manifest order; returns the bytes sent.

        `named_tensors` must yield exactly the manifest's tensors in the same order. Two
        buffers alternate, so packing one bucket overlaps the broadcast of the previous one.
        """
        tensors = iter(named_tensors)
        largest = max((bucket.num_bytes for bucket in manifest.buckets), default=0)
        buffers = [torch.empty(largest, dtype=torch.uint8, device=self.device) for _ in range(2)]
        in_flight: list[dist.Work | None] = [None, None]
        for index, bucket in enumerate(manifest.buckets):
            slot = index % 2
            if in_flight[slot] is not None:
                in_flight[slot].wait()
            buffer = buffers[slot][: bucket.num_bytes]
            for packed in bucket.tensors:
                name, tensor = _next_named(tensors, packed.spec.name)
                pack_into(buffer, packed, tensor.to(self.device))
            in_flight[slot] = self._broadcast(buffer)
        for work in in_flight:
            if work is not None:
                work.wait()
        _expect_exhausted(tensors)
        return manifest.num_bytes


class BroadcastReceiver(_Broadcaster):
    """Any other rank: receives buckets and yields (name, tensor) views into them."""

    def receive(self, manifest: WeightManifest) -> Iterator[tuple[str, torch.Tensor]]:
        """Yields the manifest's tensors bucket by bucket; the caller must consume all of
        them (each bucket is one collective that the sender waits on). The next bucket is
        already on its way while the caller loads the current one."""
        pending = [self._post(bucket.num_bytes) for bucket in manifest.buckets[:1]]
        for index, bucket in enumerate(manifest.buckets):
            buffer, work = pending.pop()
            work.wait()
            if index + 1 < len(manifest.buckets):
                pending.append(self._post(manifest.buckets[index + 1].num_bytes))
            for packed in bucket.tensors:
                yield packed.spec.name, unpack_from(buffer, packed)

    def _post(self, num_bytes: int) -> tuple[torch.Tensor, dist.Work]:
        buffer = torch.empty(num_bytes, dtype=torch.uint8, device=self.device)
        return buffer, self._broadcast(buffer)


def _next_named(
    tensors: Iterator[tuple[str, torch.Tensor]], expected_name: str
) -> tuple[str, torch.Tensor]:
    try:
        name, tensor = next(tensors)
    except StopIteration:
        raise ValueError(
            f"weight sync: the learner ran out of tensors before {expected_name!r}"
        ) from None
    if name != expected_name:
        raise ValueError(f"weight sync: the learner yielded {name!r} where the manifest has {expected_name!r}")
    return name, tensor


def _expect_exhausted(tensors: Iterator[tuple[str, torch.Tensor]]) -> None:
    extra = next(tensors, None)
    if extra is not None:
        raise ValueError(f"weight sync: the learner yielded {extra[0]!r}, which is not in the manifest")
