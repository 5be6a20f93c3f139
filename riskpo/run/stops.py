"""Why a run stops before its last step, and the stop policy for training that is no longer
finite: the watch over the learner's updates (UpdateHealth), the policy that samples from
non-finite probabilities (the engines' typed NonFiniteSampling), and which checkpoints go with
the weights that broke.

A stop is an exception carrying one line for the user and the process exit status
(launch/train.py prints the line, no traceback): 1 for a failure (non-finite training, a full
disk, a step that failed), 130/143 for an interrupt (SIGINT/SIGTERM).
"""

from __future__ import annotations

import math
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from riskpo.messages import NonFiniteSampling

FAILED = 1  # exit status of a run stopped by a failure
INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal number, as shells report it
NON_FINITE_METRICS = ("actor/loss", "actor/grad_norm")  # checked after every step


class RunStopped(RuntimeError):
    """The run stopped before trainer.total_steps; str() is the one line the user sees."""

    exit_status = FAILED

    def __init__(self, message: str, step: int = 0) -> None:
        super().__init__(message)
        self.step = step


class NonFiniteTraining(RunStopped):
    """A non-finite loss or gradient norm for too many updates in a row, or a policy whose
    sampling probabilities are no longer finite."""


class NoSpaceLeft(RunStopped):
    """The disk of a run directory filled up (or would, with the next checkpoint)."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM turned into an interrupt, so a run stops the way Ctrl-C stops it."""

    def __init__(self, signal_name: str = "SIGINT") -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def raise_interrupt(signum: int, frame: object) -> None:
    """A signal handler (for SIGTERM): the signal stops the program the way Ctrl-C does."""
    raise Interrupted(signal.Signals(signum).name)


def interrupt_status(error: BaseException) -> int:
    """The exit status for an interrupt: 130 for Ctrl-C, 143 for SIGTERM."""
    return INTERRUPTED.get(getattr(error, "signal_name", "SIGINT"), 130)


def checkpoint_note(checkpoint: Path | None) -> str:
    return str(checkpoint) if checkpoint else "none (no checkpoint was completed)"


def is_finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def non_finite_sampling(error: BaseException) -> NonFiniteSampling | None:
    """The engines' NonFiniteSampling behind an error: itself, or the actor's error a Ray task
    error carries (its `cause`); None for any other error, whatever its message says."""
    cause = getattr(error, "cause", None)
    for candidate in (cause, error):
        if isinstance(candidate, NonFiniteSampling):
            return candidate
    return None


def error_line(error: BaseException) -> str:
    """`Type: first line` of an error (of the actor's error when Ray wraps one)."""
    cause = getattr(error, "cause", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}".rstrip(": ")


@dataclass
class UpdateHealth:
    """Counts consecutive bad optimizer updates: ones DeepSpeed skipped (its gradient norm was
    not finite), or, on a step whose loss or gradient norm is not finite, all of that step's.
    The first bad update after good ones is an event; `max_skipped` in a row stop the run."""

    max_skipped: int
    consecutive: int = 0
    first_bad_step: int = 0
    metrics_seen: list[str] = field(default_factory=list)

    def observe(self, metrics: Mapping[str, float]) -> tuple[bool, str | None]:
        """Takes one step's metrics (actor/skipped_updates, actor/mini_batches and the
        trailing count the learner reports); returns (healthy, message of a new streak)."""
        bad_metrics = [key for key in NON_FINITE_METRICS if key in metrics and not is_finite(metrics[key])]
        updates = int(metrics.get("actor/mini_batches", 1) or 0)
        skipped = int(metrics.get("actor/skipped_updates", 0) or 0)
        trailing = int(metrics.get("actor/trailing_skipped_updates", 0) or 0)
        if bad_metrics and not skipped:  # the update went through with non-finite values
            skipped = trailing = updates
        if not skipped:
            self.consecutive, self.metrics_seen = 0, []
            return True, None
        streak_starts = self.consecutive == 0
        self.consecutive = self.consecutive + skipped if trailing == updates else trailing
        self.metrics_seen = bad_metrics or self.metrics_seen or ["actor/grad_norm"]
        if not streak_starts:
            return False, None
        self.first_bad_step = int(metrics.get("step", 0))
        names = " and ".join(self.metrics_seen)
        return False, (f"{names} not finite; {skipped} of {updates} updates skipped "
                       f"(trainer.max_skipped_updates={self.max_skipped} in a row stop the run)")

    def must_stop(self) -> bool:
        return self.max_skipped > 0 and self.consecutive >= self.max_skipped

    def problem(self) -> str:
        """What went wrong, for the stop line: the metric, how long, since when."""
        return (f"{' and '.join(self.metrics_seen)} not finite for {self.consecutive} consecutive "
                f"updates since step {self.first_bad_step} (skipped)")


class CheckpointShelf(Protocol):
    """The run's checkpoints as the stop policy sees them (riskpo.run.checkpoints.RunCheckpoints)."""

    def remove_from(self, step: int) -> list[Path]: ...
    def last_complete(self) -> Path | None: ...


class StopPolicy:
    """When training that is no longer finite stops the run, and what that stop keeps. Updates:
    trainer.max_skipped_updates bad ones in a row (UpdateHealth). Sampling: at once, when an
    engine raises NonFiniteSampling. Either way the weights that broke are known, and their
    checkpoints (and every later one) are removed; the newest before them is the last good one."""

    def __init__(self, max_skipped_updates: int, checkpoints: CheckpointShelf) -> None:
        self.health = UpdateHealth(max_skipped_updates)
        self.checkpoints = checkpoints

    def observe(self, metrics: dict[str, float]) -> tuple[bool, str | None]:
        """Takes a step's metrics (and removes the learner's trailing count of skipped updates,
        which is the policy's input, not a record); returns (healthy, message of a new streak)."""
        verdict = self.health.observe(metrics)
        metrics.pop("actor/trailing_skipped_updates", None)
        return verdict

    def must_stop(self) -> bool:
        return self.health.must_stop()

    def updates_stop(self, step: int) -> NonFiniteTraining:
        """The stop after too many bad updates in a row: the first one started from the weights
        trained up to the step before it."""
        return self._stop(step, self.health.problem(), first_bad_step=self.health.first_bad_step)

    def sampling_stop(self, error: BaseException, step: int) -> NonFiniteTraining | None:
        """The stop for an error that is the engines' NonFiniteSampling (None for any other):
        the weights that sampled (version v, from the error; the batch of step s is v =
        s - 1 - trainer.off_policy_steps old) are broken, so the first bad step is v + 1."""
        failure = non_finite_sampling(error)
        if failure is None:
            return None
        version = failure.weight_version or 0  # None: the weights at model_path
        problem = (f"the policy's sampling probabilities are not finite (the weights of step "
                   f"{version} sampled: {error_line(failure)})")
        return self._stop(step, problem, first_bad_step=version + 1)

    def _stop(self, step: int, problem: str, first_bad_step: int) -> NonFiniteTraining:
        """The weights trained up to first_bad_step - 1 went bad: their checkpoint and the later
        ones are removed, and the newest one before them is named as the last good one."""
        removed = self.checkpoints.remove_from(first_bad_step - 1)
        note = (f"; removed {', '.join(path.name for path in removed)} (the weights that went "
                "non-finite)" if removed else "")
        return NonFiniteTraining(f"training stopped at step {step}: {problem}{note}; last good "
                                 f"checkpoint: {checkpoint_note(self.checkpoints.last_complete())}", step)
