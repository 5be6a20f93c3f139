"""The rollout actor: one engine (built by make_engine inside the actor's process) behind a
Ray actor, plus the two weight-sync entry points that feed it new weights.

`RolloutActor` is a plain class so it can also run in-process; `RolloutGroup` turns it into a
Ray actor with `ray.remote(RolloutActor).options(...)`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from riskpo.messages import Completion, Prompt, SamplingParams
from workers.rollout import make_engine


class RolloutActor:
    """Samples completions with one engine; the unit the rollout group shards prompts over."""

    def __init__(self, engine_kind: Any, model_path: str | Path, engine_kwargs: dict | None = None):
        self.engine = make_engine(engine_kind, model_path, **(engine_kwargs or {}))
        self._receiver = None
        self._synced_version: int | None = None  # the learner's numbering, once it has synced

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        return self.engine.generate(prompts, params)

    def weight_version(self) -> int:
        """The learner's version of the weights held (after a sync), else the engine's count
        of loads (0 at start and after a restart)."""
        return self.engine.weight_version if self._synced_version is None else self._synced_version

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

    def init_weight_sync(self, **transport_kwargs: Any) -> None:
        from workers.weight_sync import make_receiver

        self._receiver = make_receiver(**transport_kwargs)

    def receive_weights(self, manifest: Any, version: int | None = None) -> int:
        """Loads the weights the sender broadcasts; `version` is the learner's number for them."""
        if self._receiver is None:
            raise RuntimeError("RolloutActor.receive_weights before init_weight_sync")
        self.engine.load_weights(self._receiver.receive(manifest))
        self._synced_version = version
        return self.weight_version()
