"""Whether the rollout engines give up their devices while the learner works, chosen once at
start-up (cluster.colocate): colocated engines sleep through the learner's phases of a step and
wake before the weight sync; engines on their own devices stay as they are. Both have the same
interface, so a step's phases are written once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from riskpo.loop.rollouts import PhaseTimer


class Sleeper(Protocol):
    def sleep(self) -> None: ...
    def wake_up(self) -> None: ...


class DeviceSharing(Protocol):
    phases: tuple[str, ...]  # the phases it adds to a step (time/<phase>)

    def learner_turn(self, timer: PhaseTimer) -> AbstractContextManager[None]:
        """Around the learner's phases of a step."""
        ...


class OwnDevices:
    """Engines on devices of their own (or on CPUs): nothing changes hands."""

    phases: tuple[str, ...] = ()

    @contextmanager
    def learner_turn(self, timer: PhaseTimer) -> Iterator[None]:
        yield


class SharedDevices:
    """Colocated engines: asleep (their accelerator memory freed) while the learner works, awake
    again before the weight sync, which a sleeping engine refuses. A learner phase that raises
    leaves them asleep: the run stops there."""

    phases = ("sleep", "wake")

    def __init__(self, engines: Sleeper) -> None:
        self.engines = engines

    @contextmanager
    def learner_turn(self, timer: PhaseTimer) -> Iterator[None]:
        with timer("sleep"):
            self.engines.sleep()
        yield
        with timer("wake"):
            self.engines.wake_up()


def device_sharing(colocate: bool, engines: Sleeper) -> DeviceSharing:
    return SharedDevices(engines) if colocate else OwnDevices()
