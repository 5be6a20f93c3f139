"""What the loop calls, as Protocols: the worker groups and the weight-sync object that
launch/factory.py builds (Ray actors behind them). tests/riskpo/loop/fakes.py implements the
same Protocols in-process."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from riskpo.batch import TrainBatch
from riskpo.messages import Completion


class RolloutWorkers(Protocol):
    def generate(self, prompts: Sequence[Any], params: Any) -> list[list[Completion]]:
        """Completions stamped with the weight version that sampled them; raises
        NonFiniteSampling (riskpo.messages) when the policy's probabilities are not finite."""
        ...

    def metrics(self) -> dict[str, float]:
        """rollout/* figures of the last generate call."""
        ...

    def drain_events(self) -> list[dict[str, Any]]: ...
    def sleep(self) -> None: ...  # colocated: frees the accelerator for the learner
    def wake_up(self) -> None: ...


class VerifierWorkers(Protocol):
    def verify_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]: ...
    def drain_events(self) -> list[dict[str, Any]]: ...


class Learner(Protocol):
    def compute_logprobs(self, batch: TrainBatch) -> dict[str, float]: ...
    def train_step(self, batch: TrainBatch) -> dict[str, float]: ...
    def save(self, path: str, extra: dict[str, Any] | None = None) -> None: ...
    def load(self, path: str) -> dict[str, Any]: ...
    def export_hf(self, path: str) -> None: ...

    @property
    def weight_version(self) -> int:
        """The version of the policy's weights: the updates they have had (load restores it)."""
        ...


class WeightSync(Protocol):
    """Owns the version of the weights every rollout engine holds (workers/weight_sync/sync.py)."""

    version: int | None  # None: never synced, the weights at model_path

    def sync(self, version: int) -> dict[str, float]:
        """Gives every engine the learner's current weights, numbered `version`; sync/* metrics."""
        ...

    def lagging_engines(self) -> dict[int, int | None]:
        """Engines not holding `version` (one that restarted holds None): index -> version."""
        ...


@dataclass
class Workers:
    """The worker groups the loop calls; built by launch/factory.py from the run config."""

    rollout: RolloutWorkers
    verifiers: VerifierWorkers
    learner: Learner
    weight_sync: WeightSync
