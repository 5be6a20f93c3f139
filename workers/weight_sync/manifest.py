"""The weight manifest: names, shapes, dtypes and bucket boundaries of one weight sync.

It travels over Ray before the bytes; sender and receivers both pack and unpack buckets
from it, so the tensors themselves can cross the process group as flat byte buffers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

BYTE_ALIGNMENT = 16  # every tensor starts at a multiple of this inside its bucket


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def num_bytes(self) -> int:
        return _numel(self.shape) * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True)
class PackedTensor:
    spec: TensorSpec
    offset: int  # byte offset inside the bucket


@dataclass
class Bucket:
    tensors: list[PackedTensor] = field(default_factory=list)
    num_bytes: int = 0


@dataclass
class WeightManifest:
    """What one sync sends, bucket by bucket. adapter: None for the policy's weights (an
    engine loads them in place of its own), else the LoRA adapter's PEFT options (r,
    lora_alpha, target_modules) and the tensors are the adapter's alone, which the engine
    applies on top of its base weights (learner.lora_sync=adapter)."""

    buckets: list[Bucket]
    version: int = 0  # the learner's step count when the manifest was sent (informational)
    adapter: dict[str, Any] | None = None

    @property
    def num_bytes(self) -> int:
        return sum(bucket.num_bytes for bucket in self.buckets)

    @property
    def specs(self) -> list[TensorSpec]:
        return [packed.spec for bucket in self.buckets for packed in bucket.tensors]


def build_manifest(specs: Iterable[TensorSpec], bucket_bytes: int) -> WeightManifest:
    """Packs tensors, in the order given, into buckets of at most bucket_bytes each (a tensor
    larger than that gets a bucket of its own; bucket_bytes=0 gives one bucket per tensor)."""
    if bucket_bytes < 0:
        raise ValueError(f"build_manifest: bucket_bytes must be >= 0, got {bucket_bytes}")
    buckets: list[Bucket] = []
    current = Bucket()
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"build_manifest: tensor {spec.name!r} appears twice")
        seen.add(spec.name)
        offset = _align(current.num_bytes)
        if current.tensors and offset + spec.num_bytes > bucket_bytes:
            buckets.append(current)
            current, offset = Bucket(), 0
        current.tensors.append(PackedTensor(spec, offset))
        current.num_bytes = offset + spec.num_bytes
    if current.tensors:
        buckets.append(current)
    return WeightManifest(buckets)


def pack_into(buffer: torch.Tensor, packed: PackedTensor, tensor: torch.Tensor) -> None:
    """Copies `tensor` into its slot of a flat uint8 bucket buffer, checking it fits the spec."""
    spec = packed.spec
    if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
        raise ValueError(
            f"weight sync: tensor {spec.name!r} is {tuple(tensor.shape)} {tensor.dtype}, "
            f"the manifest says {spec.shape} {spec.dtype}"
        )
    slot = buffer[packed.offset : packed.offset + spec.num_bytes]
    slot.copy_(tensor.detach().contiguous().reshape(-1).view(torch.uint8), non_blocking=True)


def unpack_from(buffer: torch.Tensor, packed: PackedTensor) -> torch.Tensor:
    """A view of one tensor inside a received uint8 bucket buffer."""
    spec = packed.spec
    slot = buffer[packed.offset : packed.offset + spec.num_bytes]
    return slot.view(spec.dtype).reshape(spec.shape)


def _align(num_bytes: int) -> int:
    return -(-num_bytes // BYTE_ALIGNMENT) * BYTE_ALIGNMENT


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
