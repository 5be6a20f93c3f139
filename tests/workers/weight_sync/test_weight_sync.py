"""The weight-sync object between a sender and a real rollout group (two hf actors): it owns the
version every engine holds, opens the transport only when it must (first use, an engine that
restarted), finds an engine that restarted with the weights at model_path, and refuses to send
to sleeping engines."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from riskpo.messages import Prompt, SamplingParams
from riskpo.models.loading import load_model_and_tokenizer
from riskpo.models.tiny import build_tiny_model
from workers.weight_sync import (
    SyncGroupAddress,
    TensorSpec,
    WeightManifest,
    build_manifest,
    make_sender,
)

pytestmark = pytest.mark.slow
GREEDY = SamplingParams(n=1, temperature=0.0, max_new_tokens=6)


class SenderActor:
    """Rank 0 of the group, holding a model's weights (what learner rank 0 does)."""

    def __init__(self, model_path: str) -> None:
        self.weights = load_model_and_tokenizer(model_path)[0].state_dict()
        self.sender = None

    def open(self, address: SyncGroupAddress) -> None:
        self.sender = make_sender(address)

    def send(self, manifest: WeightManifest) -> int:
        return self.sender.send(manifest, iter(self.weights.items()))


class ModelSender:
    """The sending end the weight-sync object needs (the learner group's surface)."""

    def __init__(self, ray, model_path: str) -> None:
        self.ray = ray
        self.actor = ray.remote(SenderActor).remote(model_path)
        weights = load_model_and_tokenizer(model_path)[0].state_dict()
        self.manifest = build_manifest([TensorSpec(n, tuple(t.shape), t.dtype) for n, t in weights.items()],
                                       bucket_bytes=1 << 16)
        self.groups: list[str] = []

    def weight_manifest(self) -> WeightManifest:
        return self.manifest

    def weight_sync_address(self, receivers: int, group_name: str) -> SyncGroupAddress:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.groups.append(group_name)
        return SyncGroupAddress("127.0.0.1", port, world_size=1 + receivers, group_name=group_name,
                                timeout_s=60)

    def join_weight_sync(self, address: SyncGroupAddress) -> list:
        return [self.actor.open.remote(address)]

    def send_weights(self, manifest: WeightManifest) -> list:
        return [self.actor.send.remote(manifest)]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """The engines' model at start, and the 'learner's' weights (same shapes, other values)."""
    start = build_tiny_model(tmp_path_factory.mktemp("start"), arch="llama", seed=0)
    learned = build_tiny_model(tmp_path_factory.mktemp("learned"), arch="llama", seed=1)
    return start, learned


def _greedy(model_path: Path, prompt_ids: list[int]) -> list[int]:
    model = load_model_and_tokenizer(model_path)[0]
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=6, min_new_tokens=6)
    return out[0, len(prompt_ids):].tolist()


@pytest.fixture(scope="module")
def sender_by_value():
    """Ray workers cannot import this test module: ship SenderActor by value."""
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_the_weight_sync_owns_the_engines_version_and_reopens_only_when_it_must(
        ray_cluster, models, sender_by_value):
    from workers.rollout.group import RolloutGroup
    from workers.weight_sync.sync import WeightSync

    start, learned = models
    group = RolloutGroup(2, "hf", start, {"num_threads": 1}, max_restarts=1)
    try:
        sender = ModelSender(ray_cluster, str(learned))
        sync = WeightSync(sender, group)
        assert sync.version is None and sync.lagging_engines() == {}  # all at model_path
        first = sync.sync(3)
        assert first["sync/reopened"] == 1.0 and first["sync/weight_version"] == 3.0
        assert first["sync/bytes"] == sender.manifest.num_bytes
        assert sync.version == 3 and group.weight_versions() == [3, 3] and sync.lagging_engines() == {}
        expected = _greedy(learned, [1, 10, 11, 12])
        for samples in group.generate([Prompt(token_ids=[1, 10, 11, 12])] * 2, GREEDY):
            assert samples[0].token_ids == expected[: len(samples[0].token_ids)]
            assert samples[0].weight_version == 3
        assert sync.sync(4)["sync/reopened"] == 0.0 and len(sender.groups) == 1

        pid = ray_cluster.get(group.actors[0].ping.remote())["pid"]
        ray_cluster.kill(group.actors[0], no_restart=False)  # back with the weights at model_path
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if ray_cluster.get(group.actors[0].ping.remote(), timeout=10)["pid"] != pid:
                    break
            except Exception:  # still restarting
                time.sleep(0.5)
        lagging = sync.lagging_engines()
        assert lagging == {0: None}
        assert sync.sync(5)["sync/reopened"] == 1.0 and len(sender.groups) == 2
        assert group.weight_versions() == [5, 5] and sync.lagging_engines() == {}

        group.sleep()
        with pytest.raises(RuntimeError, match=r"rollout actors \[0, 1\] are asleep"):
            sync.sync(6)
        assert sync.version == 5 and group.weight_versions() == [5, 5]  # nothing was sent
        group.wake_up()
        assert sync.sync(6)["sync/reopened"] == 0.0 and sync.version == 6
    finally:
        group.shutdown()
