"""The bucketed broadcast round-trips named tensors exactly, whatever the bucket size."""

from __future__ import annotations

import socket
import threading

import pytest
import torch

from workers.weight_sync import (
    SyncGroupAddress,
    TensorSpec,
    build_manifest,
    make_receiver,
    make_sender,
)
from workers.weight_sync.manifest import BYTE_ALIGNMENT


def _named_tensors() -> list[tuple[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        ("embed.weight", torch.randn(37, 8, generator=generator)),
        ("norm.weight", torch.randn(8, generator=generator).to(torch.bfloat16)),
        ("scalar", torch.tensor(3.5)),
        ("proj.weight", torch.randn(8, 8, generator=generator).t()),  # non-contiguous
        ("big.weight", torch.randn(300, 5, generator=generator)),  # larger than a bucket
        ("counts", torch.arange(7, dtype=torch.int64)),
    ]


def _specs(named: list[tuple[str, torch.Tensor]]) -> list[TensorSpec]:
    return [TensorSpec(name, tuple(t.shape), t.dtype) for name, t in named]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_manifest_buckets_respect_the_size_and_alignment() -> None:
    manifest = build_manifest(_specs(_named_tensors()), bucket_bytes=2048)
    assert [p.spec.name for p in manifest.buckets[0].tensors][:2] == ["embed.weight", "norm.weight"]
    assert len(manifest.buckets) < len(_named_tensors())
    for bucket in manifest.buckets:
        assert bucket.num_bytes <= 2048 or len(bucket.tensors) == 1
        assert all(p.offset % BYTE_ALIGNMENT == 0 for p in bucket.tensors)
    per_tensor = build_manifest(_specs(_named_tensors()), bucket_bytes=0)
    assert len(per_tensor.buckets) == len(_named_tensors())


def test_manifest_rejects_duplicate_names() -> None:
    spec = TensorSpec("w", (2,), torch.float32)
    with pytest.raises(ValueError, match="'w' appears twice"):
        build_manifest([spec, spec], bucket_bytes=64)


@pytest.mark.parametrize("bucket_bytes", [0, 1024, 1 << 20])
def test_broadcast_round_trip_to_two_receivers(bucket_bytes: int) -> None:
    named = _named_tensors()
    manifest = build_manifest(_specs(named), bucket_bytes)
    address = SyncGroupAddress("127.0.0.1", _free_port(), world_size=3)
    received: dict[int, list[tuple[str, torch.Tensor]]] = {}

    def receive(rank: int) -> None:
        receiver = make_receiver(address, rank)
        received[rank] = [(name, t.clone()) for name, t in receiver.receive(manifest)]

    threads = [threading.Thread(target=receive, args=(rank,)) for rank in (1, 2)]
    for thread in threads:
        thread.start()
    sent_bytes = make_sender(address).send(manifest, iter(named))
    for thread in threads:
        thread.join(timeout=30)
    assert sent_bytes == manifest.num_bytes
    for rank in (1, 2):
        assert [name for name, _ in received[rank]] == [name for name, _ in named]
        for (_, got), (_, want) in zip(received[rank], named, strict=True):
            assert got.dtype == want.dtype and torch.equal(got, want)


def test_sender_names_a_tensor_that_disagrees_with_the_manifest() -> None:
    named = _named_tensors()
    manifest = build_manifest(_specs(named), bucket_bytes=1 << 20)
    address = SyncGroupAddress("127.0.0.1", _free_port(), world_size=1)
    sender = make_sender(address)
    wrong = [(name, t.float() if name == "counts" else t) for name, t in named]
    with pytest.raises(ValueError, match="'counts' is"):
        sender.send(manifest, iter(wrong))
    with pytest.raises(ValueError, match="yielded 'extra'"):
        sender.send(manifest, iter([*named, ("extra", torch.zeros(1))]))
