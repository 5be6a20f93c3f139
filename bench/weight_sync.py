"""Weight-sync benchmark on this machine: a ~57M-parameter Llama sent from a sender process to
a receiver process that loads it into an HF rollout engine, over the same gloo transport the
learner uses; bucketed vs one broadcast per parameter, against an in-memory copy floor.

    .venv/bin/python bench/weight_sync.py [--bucket-mb 4 16 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from riskpo.models.tiny import build_tiny_model
from workers.rollout import make_engine
from workers.weight_sync import (
    SyncGroupAddress,
    TensorSpec,
    WeightManifest,
    build_manifest,
    make_receiver,
    make_sender,
)

MODEL = {"hidden_size": 768, "num_layers": 8, "num_heads": 12, "head_dim": 64, "intermediate_size": 2048}


def sender_main(model_path: str, port: int, manifests: list[WeightManifest], repeats: int) -> None:
    torch.set_num_threads(1)
    engine = make_engine("hf", model_path)  # the sender's copy of the weights
    sender = make_sender(SyncGroupAddress("127.0.0.1", port, world_size=2))
    for manifest in manifests:
        for _ in range(repeats):
            sender.send(barrier_manifest(), iter([("barrier", torch.zeros(1))]))
            sender.send(manifest, engine.model.named_parameters())


def receiver_main(model_path: str, port: int, manifests: list[WeightManifest], repeats: int, results) -> None:
    torch.set_num_threads(1)
    engine = make_engine("hf", model_path)
    receiver = make_receiver(SyncGroupAddress("127.0.0.1", port, world_size=2), rank=1)
    for label_index, manifest in enumerate(manifests):
        for _ in range(repeats):
            list(receiver.receive(barrier_manifest()))
            start = time.perf_counter()
            engine.load_weights(receiver.receive(manifest))
            results.put((label_index, time.perf_counter() - start))


def barrier_manifest() -> WeightManifest:
    return build_manifest([TensorSpec("barrier", (1,), torch.float32)], 0)


def in_memory_copy_seconds(num_bytes: int, repeats: int) -> float:
    """The physical floor: copying the same bytes once within one process's memory."""
    source = torch.randint(0, 255, (num_bytes,), dtype=torch.uint8)
    target = torch.empty_like(source)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        target.copy_(source)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bucket-mb", type=float, nargs="+", default=[4.0, 16.0, 64.0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model_path = str(build_tiny_model(Path(tempfile.mkdtemp(prefix="bench_sync_")), **MODEL))
    engine = make_engine("hf", model_path)
    specs = [TensorSpec(n, tuple(p.shape), p.dtype) for n, p in engine.model.named_parameters()]
    num_params = sum(p.numel() for p in engine.model.parameters())
    del engine
    manifests = [build_manifest(specs, int(mb * (1 << 20))) for mb in args.bucket_mb]
    labels = [f"bucketed ({mb:g} MB, {len(m.buckets)} broadcasts)" for mb, m in zip(args.bucket_mb, manifests, strict=True)]
    manifests.append(build_manifest(specs, 0))
    labels.append(f"one broadcast per parameter ({len(manifests[-1].buckets)} broadcasts)")

    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    receiver = context.Process(target=receiver_main, args=(model_path, port, manifests, args.repeats, results))
    sender = context.Process(target=sender_main, args=(model_path, port, manifests, args.repeats))
    receiver.start()
    sender.start()
    times: dict[int, list[float]] = {index: [] for index in range(len(manifests))}
    for _ in range(len(manifests) * args.repeats):
        index, seconds = results.get(timeout=600)
        times[index].append(seconds)
    sender.join()
    receiver.join()

    num_bytes = manifests[0].num_bytes
    floor = in_memory_copy_seconds(num_bytes, args.repeats)
    medians = [statistics.median(times[index]) for index in range(len(manifests))]
    print(f"model: {num_params / 1e6:.1f}M parameters, {num_bytes / 1e6:.1f} MB (float32), gloo on loopback")
    print(f"in-memory copy of the same bytes (floor): {floor * 1e3:8.1f} ms  {num_bytes / floor / 1e9:6.2f} GB/s")
    for label, seconds in zip(labels, medians, strict=True):
        print(f"{label:<45} {seconds * 1e3:8.1f} ms  {num_bytes / seconds / 1e9:6.2f} GB/s  "
              f"{seconds / floor:5.1f}x the floor")
    best = min(range(len(medians) - 1), key=lambda index: medians[index])
    print(f"best bucketed ({labels[best]}) vs one broadcast per parameter: "
          f"{medians[-1] / medians[best]:.2f}x faster")
    print(f"(median of {args.repeats}; receive time includes loading into the HF engine's module)")


if __name__ == "__main__":
    main()
