"""The rollout actor: one engine (built by make_engine inside the actor's process) behind a
Ray actor, plus the receiving end of the weight sync: joining its group, loading what it
broadcasts, and the record of which weights the engine holds.

`RolloutActor` is a plain class so it can also run in-process; `RolloutGroup` turns it into a
Ray actor with `ray.remote(RolloutActor).options(...)`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from riskpo.messages import Completion, NonFiniteSampling, Prompt, SamplingParams
from workers.rollout import make_engine
from workers.weight_sync import BroadcastReceiver, SyncGroupAddress, WeightManifest, make_receiver


class RolloutActor:
    """Samples completions with one engine; the unit the rollout group shards prompts over."""

    def __init__(self, engine_kind: Any, model_path: str | Path, engine_kwargs: dict | None = None):
        self.engine = make_engine(engine_kind, model_path, **(engine_kwargs or {}))
        self._receiver: BroadcastReceiver | None = None
        self._weight_version: int | None = None  # the learner's number, once it has synced

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """The engine's completions, each stamped with the learner's version of the weights
        that sampled it (None before the first sync), so the driver can check them; a
        NonFiniteSampling is stamped the same way (the driver removes those weights' checkpoints)."""
        try:
            completions = self.engine.generate(prompts, params)
        except NonFiniteSampling as error:
            error.weight_version = self._weight_version
            raise
        for samples in completions:
            for completion in samples:
                completion.weight_version = self._weight_version
        return completions

    def weight_version(self) -> int | None:
        """The learner's version of the weights held; None before the first sync (the weights
        at model_path: at start, and after a restart)."""
        return self._weight_version

    def sleep(self) -> None:
        self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()

    def ping(self) -> dict[str, Any]:
        """Where this actor lives (host, pid) and its weight version: a liveness check."""
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "weight_version": self.weight_version(),
        }

    def sync_state(self) -> dict[str, bool]:
        """joined: this actor is in the weight-sync group (a restarted one is not);
        sleeping: its engine would refuse the weights."""
        return {"joined": self._receiver is not None, "sleeping": self.engine.sleeping}

    def join_weight_sync(self, address: SyncGroupAddress, rank: int) -> None:
        """Joins the weight-sync group as receiver `rank` (blocks until every member joins)."""
        self._receiver = make_receiver(address, rank)

    def receive_weights(self, manifest: WeightManifest, version: int) -> int:
        """Loads the weights the sender broadcasts, which the learner numbers `version`;
        returns the version now held (weights the engine refused are not recorded as held)."""
        if self._receiver is None:
            raise RuntimeError("RolloutActor.receive_weights before join_weight_sync")
        if manifest.adapter is None:
            self.engine.load_weights(self._receiver.receive(manifest))
        else:  # a LoRA adapter on the engine's base weights, this version's
            self.engine.load_adapter(manifest.adapter, self._receiver.receive(manifest), version)
        self._weight_version = version
        return self._weight_version
