"""A run's checkpoints on disk: where they go, which are complete, what they hold for the driver
(DriverState: step, sampler, advantage state, RNG, initial evaluation, wall time, the batches
made ahead), and the space the next one needs. A checkpoint is complete once its COMPLETE
marker exists (written last); one cut short is removed, and the free space a checkpoint needs
is checked before writing it, so a full disk stops the run with the last complete checkpoint
intact.
"""

from __future__ import annotations

import errno
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from riskpo.run.stops import NoSpaceLeft, checkpoint_note, error_line

CHECKPOINTS_SUBDIR = "checkpoints"
COMPLETE_MARKER = "COMPLETE"  # written last: a checkpoint without it was cut short
HF_EXPORT_SUBDIR = "hf"  # the policy as a HF directory, for riskpo-eval and vLLM
DRIVER_META = "driver_meta.json"  # step, wall time and wandb run id, readable without the learner
# A checkpoint holds fp32 weights, two Adam moments and the HF export: 16.2 MB for the tiny
# model's 0.8M parameters. The first checkpoint of a run is estimated from the parameter count.
BYTES_PER_PARAMETER = 20
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
SPACE_MARGIN = 1.05  # times the estimate, plus 1 MiB: the next checkpoint may be a little larger


class CheckpointWriter(Protocol):
    """The learner's part in a checkpoint (riskpo.loop.contracts.Learner has it)."""

    def save(self, path: str, extra: dict[str, Any] | None = None) -> None: ...
    def export_hf(self, path: str) -> None: ...


class CheckpointLearner(CheckpointWriter, Protocol):
    def load(self, path: str) -> dict[str, Any]: ...


@dataclass
class DriverState:
    """What the driver keeps in a checkpoint beside the learner's state, to continue the run
    exactly: the step, the sampler's position, the advantage estimator's state (RiskPO's
    quantile tracker), the RNG states, the evaluation before training, the wandb run, the wall
    time so far, and what the rollout mode made ahead (None when nothing)."""

    step: int
    sampler: dict[str, Any]
    advantage_state: dict[str, Any]
    rng: dict[str, Any]
    initial_eval: dict[str, float]
    wandb_run_id: str | None
    wall_s: float
    rollouts: dict[str, Any] | None = None

    def to_extra(self) -> dict[str, Any]:
        """The learner checkpoint's `extra` (driver_meta.json holds step, wall_s, wandb_run_id)."""
        extra = {"step": self.step, "sampler": self.sampler, "advantage_state": self.advantage_state,
                 "rng": self.rng, "initial_eval": self.initial_eval,
                 "wandb_run_id": self.wandb_run_id, "wall_s": self.wall_s}
        if self.rollouts is not None:
            extra["pipeline"] = self.rollouts
        return extra

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> DriverState:
        return cls(step=int(extra["step"]), sampler=extra["sampler"],
                   advantage_state=extra["advantage_state"], rng=extra["rng"],
                   initial_eval=dict(extra.get("initial_eval") or {}),
                   wandb_run_id=extra.get("wandb_run_id"), wall_s=float(extra.get("wall_s", 0.0)),
                   rollouts=extra.get("pipeline"))


def capture_rng() -> dict[str, Any]:
    """The driver process's RNG states (python, numpy, torch)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class RunClock:
    """Seconds the run has trained, across resumes: the time before (kept in checkpoints) plus
    the time since start()."""

    def __init__(self, before_s: float = 0.0) -> None:
        self.before_s = before_s
        self._started: float | None = None

    def start(self) -> None:
        self._started = time.perf_counter()

    @property
    def seconds(self) -> float:
        since = 0.0 if self._started is None else time.perf_counter() - self._started
        return self.before_s + since


class RunCheckpoints:
    """The checkpoints of one run directory: the next save (keeping the newest `keep`; the first
    needs about `first_estimate` bytes), a resume's load, the removal of the weights that went
    bad, and the newest complete one."""

    def __init__(self, run_dir: Path, keep: int, first_estimate: int) -> None:
        self.run_dir, self.keep, self.first_estimate = Path(run_dir), keep, first_estimate

    def save(self, learner: CheckpointWriter, state: DriverState) -> Path:
        return write_checkpoint(self.run_dir, learner, state.to_extra(), self.keep, self.first_estimate)

    def load(self, learner: CheckpointLearner, path: Path) -> DriverState:
        return DriverState.from_extra(learner.load(str(path)))

    def remove_from(self, step: int) -> list[Path]:
        """Removes the checkpoints of `step` and later (and incomplete ones); returns them."""
        return remove_checkpoints_after(self.run_dir, step - 1)

    def last_complete(self) -> Path | None:
        return last_complete_checkpoint(self.run_dir)


def write_checkpoint(run_dir: Path, learner: CheckpointWriter, extra: dict[str, Any],
                     keep: int, first_estimate: int) -> Path:
    """Writes checkpoints/step_N: the learner's state with the driver's `extra` (step, wall_s,
    wandb_run_id...), the HF export, driver_meta.json, then the COMPLETE marker; prunes to the
    newest `keep`. Raises NoSpaceLeft, before writing, when the disk lacks the room the last
    checkpoint took (`first_estimate` bytes for the first), or when the write runs out of it;
    a write cut short by anything is removed."""
    step = int(extra["step"])
    path, last = checkpoint_path(run_dir, step), last_complete_checkpoint(run_dir)
    needed = checkpoint_bytes_needed(run_dir, first_estimate)
    kept = f"last complete checkpoint: {checkpoint_note(last)}"
    problem = space_problem(path.parent, needed)
    if problem:
        raise NoSpaceLeft(f"{problem} to save step {step}; {kept}", step)
    remove_partial(path)  # a leftover of the same step never passes for complete
    try:
        learner.save(str(path), extra)
        learner.export_hf(str(path / HF_EXPORT_SUBDIR))
        meta = {key: extra.get(key) for key in ("step", "wandb_run_id", "wall_s")}
        (path / DRIVER_META).write_text(json.dumps(meta))
        (path / COMPLETE_MARKER).write_text(str(step))
    except BaseException as error:
        no_space = isinstance(error, Exception) and is_no_space_error(error, path.parent, needed)
        remove_partial(path)
        if no_space:
            raise NoSpaceLeft(f"no space left on {path.parent} while saving step {step} "
                              f"({error_line(error)}); removed the partial {path.name}; {kept}",
                              step) from error
        raise
    prune_checkpoints(run_dir, keep)
    return path


def checkpoint_bytes_needed(run_dir: Path, first_estimate: int) -> int:
    """What the next checkpoint takes: what the last one took, else `first_estimate`."""
    last = last_complete_checkpoint(run_dir)
    return directory_bytes(last) if last else first_estimate


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_SUBDIR / f"step_{step:06d}"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints of a run directory, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_SUBDIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / COMPLETE_MARKER).is_file())


def last_complete_checkpoint(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def checkpoint_meta(path: Path) -> dict[str, Any]:
    """Step, wall time and wandb run id of a checkpoint, readable before any worker starts."""
    return json.loads((Path(path) / DRIVER_META).read_text())


def checkpoint_step(path: Path) -> int:
    """The step of a checkpoint directory, from its name (step_000042)."""
    return int(Path(path).name.removeprefix("step_"))


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem of `path` (of its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def model_checkpoint_bytes(model_dir: str | Path) -> int:
    """About what a checkpoint of this local HF model takes, from its weight files (0 when the
    model is not a local directory: a hub id)."""
    directory = Path(model_dir)
    if not directory.is_dir():
        return 0
    weights = sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin", "*.gguf")
                  for f in directory.glob(pattern))
    dtype = "float32"
    if (directory / "config.json").is_file():
        config = json.loads((directory / "config.json").read_text())
        dtype = str(config.get("torch_dtype") or config.get("dtype") or dtype)
    return weights // DTYPE_BYTES.get(dtype, 4) * BYTES_PER_PARAMETER


def space_problem(path: Path, needed: int) -> str | None:
    """Why the filesystem of `path` cannot take `needed` more bytes, or None when it can."""
    free = free_bytes(path)
    if needed and free < needed * SPACE_MARGIN + (1 << 20):
        return (f"no space left on {path}: a checkpoint needs about {_mb(needed)}, "
                f"{_mb(free)} free")
    return None


def is_no_space_error(error: BaseException, path: Path, needed: int) -> bool:
    """Whether a failed write ran out of space: ENOSPC anywhere in the chain (or in a Ray
    actor's message), or too little room left afterwards (torch's writer reports a full disk
    as `basic_ios::clear: iostream error`)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__ or getattr(seen, "cause", None)
    try:
        free = free_bytes(path)
    except OSError:
        return False
    return free < max(needed, 1 << 20)


def remove_partial(path: Path) -> None:
    """Removes a checkpoint that was cut short (marker first, so it never looks complete)."""
    (Path(path) / COMPLETE_MARKER).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def remove_checkpoints_after(run_dir: Path, step: int) -> list[Path]:
    """Removes incomplete checkpoints and those of steps after `step` (a branch a resume from
    an older checkpoint abandons); returns what it removed."""
    root = Path(run_dir) / CHECKPOINTS_SUBDIR
    removed = []
    for path in sorted(root.glob("step_*")) if root.is_dir() else []:
        complete = (path / COMPLETE_MARKER).is_file()
        if not complete or checkpoint_step(path) > step:
            remove_partial(path)
            removed.append(path)
    return removed


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keeps the newest `keep` complete checkpoints (0 keeps all)."""
    if keep:
        for old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def _mb(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"
