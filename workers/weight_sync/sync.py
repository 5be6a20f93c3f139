"""The weight-sync object the loop calls: it ties the learner group's sending end to the rollout
group's receiving end and owns the weight version every engine holds (one counter), with the
one check that every engine holds it. launch/factory.py builds it from the two groups.

A sync opens the transport when it has to (first use, or an engine that restarted and left the
group), then the engines load what learner rank 0 broadcasts. The loop never branches on the
transport: gloo on CPU and NCCL on GPU are the same calls (workers/weight_sync/transport.py).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import ray

from workers.weight_sync.manifest import WeightManifest
from workers.weight_sync.transport import SyncGroupAddress


class WeightSender(Protocol):
    """The learner group's sending end (workers/learner/group.py)."""

    def weight_manifest(self) -> WeightManifest: ...
    def weight_sync_address(self, receivers: int, group_name: str) -> SyncGroupAddress: ...
    def join_weight_sync(self, address: SyncGroupAddress) -> list[Any]: ...
    def send_weights(self, manifest: WeightManifest) -> list[Any]: ...


class WeightReceivers(Protocol):
    """The rollout group's receiving end (workers/rollout/group.py)."""

    def sync_states(self) -> list[dict[str, bool]]: ...
    def join_weight_sync(self, address: SyncGroupAddress) -> list[Any]: ...
    def receive_weights(self, manifest: WeightManifest, version: int) -> list[Any]: ...
    def weight_versions(self) -> list[int | None]: ...


class WeightSync:
    """Gives the rollout engines the learner's weights. `version` is the learner's number for
    the weights every engine holds (None until the first sync: the weights at model_path)."""

    def __init__(self, sender: WeightSender, receivers: WeightReceivers) -> None:
        self.sender, self.receivers = sender, receivers
        self.version: int | None = None
        self._groups_opened = 0

    def sync(self, version: int) -> dict[str, float]:
        """Broadcasts the learner's weights, numbered `version`, to every engine and checks that
        each holds them; returns the sync/* metrics. Engines asleep are refused before anything
        is sent (the broadcast would wait for them)."""
        states = self.receivers.sync_states()
        asleep = [index for index, state in enumerate(states) if state["sleeping"]]
        if asleep:
            raise RuntimeError(f"rollout actors {asleep} are asleep: wake them (wake_up) before "
                               "syncing weights")
        reopen = not self._groups_opened or not all(state["joined"] for state in states)
        if reopen:  # first use, or a restarted actor lost its place in the group (and its weights)
            self._open_group(len(states))
        manifest = self.sender.weight_manifest()
        start = time.perf_counter()
        receiving = self.receivers.receive_weights(manifest, version)
        sent = ray.get(self.sender.send_weights(manifest))
        held = ray.get(receiving)
        elapsed = time.perf_counter() - start
        lagging = self._lagging(held, version)
        if lagging:
            raise RuntimeError(f"rollout engines {lagging} report weight versions "
                               f"{[held[i] for i in lagging]} after the sync of version {version}")
        self.version = version
        return {
            "sync/time_s": elapsed,
            "sync/bytes": float(sent[0]),
            "sync/bytes_per_s": sent[0] / elapsed,
            "sync/weight_version": float(version),
            "sync/reopened": float(reopen),
        }

    def lagging_engines(self) -> dict[int, int | None]:
        """The engines that do not hold `version` (index -> what they hold): an engine that
        restarted comes back with the weights at model_path (None). Empty: all in step."""
        held = self.receivers.weight_versions()
        return {index: held[index] for index in self._lagging(held, self.version)}

    @staticmethod
    def _lagging(held: list[int | None], version: int | None) -> list[int]:
        return [index for index, engine_version in enumerate(held) if engine_version != version]

    def _open_group(self, receivers: int) -> None:
        """A new transport group: learner rank 0 and every engine join it together."""
        address = self.sender.weight_sync_address(receivers, f"weight_sync_{id(self)}_{self._groups_opened}")
        ray.get([*self.sender.join_weight_sync(address), *self.receivers.join_weight_sync(address)])
        self._groups_opened += 1
