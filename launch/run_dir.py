"""The rules of a run directory, checked before the warm start, before Ray and before anything
is written, so a refused command leaves the directory as it was:

- one run per directory: a fresh run into a directory that holds a run is refused unless
  run_dir_policy says what to do with it (overwrite: delete that run; new: write to R-2, R-3...);
- a resume continues the run with the config it started with: only RESUMABLE_KEYS (length,
  cadence, logging, where it runs) may differ from the run's config.yaml, and a config.yaml
  that holds a key that has moved since (launch/config.py MOVED_KEYS) is refused;
- every path the run writes (run_dir, checkpoints/, plots/, wandb/) is a writable directory.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from launch.config import MOVED_KEYS, RunConfig
from riskpo.options import ConfigError
from riskpo.run.checkpoints import (
    CHECKPOINTS_SUBDIR,
    COMPLETE_MARKER,
    checkpoint_meta,
    complete_checkpoints,
    remove_checkpoints_after,
)
from riskpo.run.record import (
    CONFIG_FILE,
    EVENTS_FILE,
    METRICS_FILE,
    PLOTS_SUBDIR,
    PROMPTS_FILE,
    SUMMARY_FILE,
    WANDB_SUBDIR,
    config_text,
    read_jsonl,
)

# Any of these in a directory means it holds a run (checkpoints/ when not empty).
RUN_RECORDS = (CONFIG_FILE, METRICS_FILE, EVENTS_FILE, SUMMARY_FILE, PROMPTS_FILE, CHECKPOINTS_SUBDIR)
RUN_ENTRIES = (*RUN_RECORDS, PLOTS_SUBDIR, WANDB_SUBDIR)  # what run_dir_policy=overwrite deletes
# Keys a resume may change: how long the run goes, how often it evaluates and saves, how it
# logs, and where its actors run. Every other key is fixed when the run starts.
RESUMABLE_KEYS = (
    "resume", "run_dir", "run_dir_policy",
    "trainer.total_steps", "trainer.eval_every", "trainer.eval_before_training",
    "trainer.save_every", "trainer.keep_checkpoints", "trainer.max_skipped_updates",
    "logger.*",
    "cluster.name", "cluster.address", "cluster.num_cpus", "cluster.connect_timeout_s",
    "cluster.placement_strategy", "cluster.*_resource",
)


class RunFinished(Exception):
    """A resume with nothing left to train: the run is at or beyond trainer.total_steps."""


@dataclass
class RunPlan:
    """Where a run writes and what it continues from."""

    run_dir: Path
    checkpoint: Path | None = None  # to load
    resume_step: int | None = None  # the step a resume continues from (None: a fresh run)
    changed: list[str] = field(default_factory=list)  # resumable keys that differ, "key: a -> b"
    replaces: str | None = None  # run_dir_policy=overwrite: the run it deletes
    note: str | None = None  # said once at start-up


def holds_run(run_dir: Path) -> bool:
    """Whether a directory holds (part of) a run."""
    return any(_is_record(Path(run_dir) / name) for name in RUN_RECORDS)


def _is_record(path: Path) -> bool:
    if path.name == CHECKPOINTS_SUBDIR:
        return path.is_dir() and any(path.iterdir())
    return path.is_file()


def describe_run(run_dir: Path) -> str:
    steps = [row.get("step") for row in read_jsonl(Path(run_dir) / METRICS_FILE)]
    found = complete_checkpoints(run_dir)
    parts = [f"steps {steps[0]}-{steps[-1]}" if steps else "no steps"]
    parts.append(f"checkpoint {found[-1].name}" if found else "no checkpoint")
    return ", ".join(parts)


def plan_run(run: RunConfig, resolved: dict[str, Any], run_dir: Path) -> RunPlan:
    """Decides, reading only, what this command does with run_dir; raises ConfigError when the
    rules refuse it and RunFinished when a resume has nothing to train."""
    run_dir = Path(run_dir)
    _check_lookup(run_dir)
    if run.resume == "never":
        return _fresh_run(run, run_dir)
    if run.run_dir_policy != "refuse":
        raise ConfigError("run_dir_policy", f"{run.run_dir_policy} is for fresh runs; "
                          f"resume={run.resume} continues a run", "drop one of the two")
    if run.resume == "auto":
        if not holds_run(run_dir):
            return RunPlan(run_dir, note=f"resume=auto: no run in {run_dir} yet, starting one")
        found = complete_checkpoints(run_dir)
        return _resume(run, resolved, run_dir, found[-1] if found else None, run_dir)
    checkpoint = Path(run.resume).expanduser()
    if not (checkpoint / COMPLETE_MARKER).is_file():
        raise ConfigError("resume", f"{checkpoint} is not a complete checkpoint",
                          "name a run_dir/checkpoints/step_N directory, or resume=auto")
    source = checkpoint.parent.parent
    if _same(source, run_dir) or not holds_run(run_dir):
        return _resume(run, resolved, run_dir, checkpoint, source)
    plan = _fresh_run(run, run_dir)  # into another directory that holds a run: the policy says
    resumed = _resume(run, resolved, plan.run_dir, checkpoint, source)
    resumed.replaces = plan.replaces
    return resumed


def _check_lookup(run_dir: Path) -> None:
    """A run_dir the filesystem cannot even look up (a name too long) is refused in the line an
    unwritable one gets (check_output_paths), before anything reads it."""
    try:
        run_dir.exists()
    except OSError as error:
        raise ConfigError("run_dir", f"cannot write the run directory at {run_dir}: "
                          f"{error.strerror or type(error).__name__}",
                          "choose a run_dir this user can write") from None


def _fresh_run(run: RunConfig, run_dir: Path) -> RunPlan:
    if not holds_run(run_dir):
        return RunPlan(run_dir)
    held = describe_run(run_dir)
    if run.run_dir_policy == "overwrite":
        return RunPlan(run_dir, replaces=held,
                       note=f"run_dir_policy=overwrite: deleting the run in {run_dir} ({held})")
    if run.run_dir_policy == "new":
        fresh = next_free_dir(run_dir)
        return RunPlan(fresh, note=f"run_dir_policy=new: {run_dir} holds a run ({held}); "
                                   f"this run writes to {fresh}")
    raise ConfigError("run_dir", f"{run_dir} already holds a run ({held})",
                      f"continue it with resume=auto, give a fresh run_dir=..., or say "
                      f"run_dir_policy=overwrite (delete it) or run_dir_policy=new (write to "
                      f"{next_free_dir(run_dir)})")


def _resume(run: RunConfig, resolved: dict[str, Any], run_dir: Path, checkpoint: Path | None,
            source: Path) -> RunPlan:
    changed = check_resume_config(source, resolved)
    step = checkpoint_meta(checkpoint)["step"] if checkpoint else 0
    total = run.trainer.total_steps
    if checkpoint and step >= total:
        raise RunFinished(f"nothing to train: {source} is at step {step} ({checkpoint.name}) and "
                          f"trainer.total_steps={total}; raise trainer.total_steps to continue it")
    note = (f"resuming {source} from {checkpoint.name} at step {step}" if checkpoint else
            f"resume=auto: {run_dir} holds a run with no complete checkpoint; starting it over "
            "from step 0 with the same config")
    return RunPlan(run_dir, checkpoint, step, changed, note=note)


def check_resume_config(source: Path, resolved: dict[str, Any]) -> list[str]:
    """Compares the requested config with the run's config.yaml; returns the changes a resume
    may make ("key: old -> new"), or raises ConfigError listing the keys that may not change.
    A key only one side has (an option added or removed since the run started: another code
    version) is not a difference; it is returned as a note."""
    recorded = Path(source) / CONFIG_FILE
    if not recorded.is_file():
        raise ConfigError("resume", f"{source} has no {CONFIG_FILE} to check the resume against",
                          "start a fresh run_dir")
    old = _flatten(OmegaConf.to_container(OmegaConf.load(recorded)))
    moved = [key for key in sorted(old) if key in MOVED_KEYS]
    if moved:
        raise ConfigError("resume", f"{recorded} has {moved[0]}, which is {MOVED_KEYS[moved[0]]} "
                          "now: this version cannot continue a run written before the key moved",
                          "start a fresh run_dir, or resume with the version that wrote the run")
    new = _flatten(OmegaConf.to_container(OmegaConf.create(config_text(resolved))))
    differing = [key for key in sorted(old.keys() & new.keys()) if old[key] != new[key]]
    fixed = [key for key in differing if not resumable(key)]
    if fixed:
        shown = "; ".join(f"{key} {old[key]!r} -> {new[key]!r}" for key in fixed)
        raise ConfigError("resume", f"cannot change on resume: {shown}",
                          f"resume with the run's values, or start a fresh run_dir (a resume may "
                          f"change only {', '.join(RESUMABLE_KEYS[3:])})")
    notes = [f"{key}: {old[key]!r} -> {new[key]!r}" for key in differing
             if key not in RESUMABLE_KEYS[:3]]
    added, removed = sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())
    if added:
        notes.append(f"options the run did not have yet, taken as {_listed(added, new)}")
    if removed:
        notes.append(f"options the run had that no longer exist: {', '.join(removed)}")
    return notes


def _listed(keys: list[str], values: dict[str, Any]) -> str:
    return ", ".join(f"{key}={values[key]!r}" for key in keys)


def resumable(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE_KEYS)


def apply_plan(plan: RunPlan) -> list[str]:
    """The writes a plan needs before the run starts: deletes the run it replaces; on a resume,
    the checkpoints after the resumed step or cut short, and the old summary. Returns what it
    did, for events.jsonl."""
    done = []
    if plan.replaces:
        for name in RUN_ENTRIES:
            path = plan.run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        done.append(f"deleted the run that was here ({plan.replaces}): run_dir_policy=overwrite")
    if plan.resume_step is not None:
        removed = remove_checkpoints_after(plan.run_dir, plan.resume_step)
        if removed:
            done.append(f"removed checkpoints after step {plan.resume_step} or cut short: "
                        f"{', '.join(path.name for path in removed)}")
        summary = plan.run_dir / SUMMARY_FILE
        if summary.is_file():
            summary.unlink()
            done.append(f"removed {SUMMARY_FILE} of the earlier leg (written again at the end)")
    return done


def next_free_dir(run_dir: Path) -> Path:
    """run_dir-2, run_dir-3, ...: the first that does not hold a run."""
    number = 2
    while holds_run(candidate := run_dir.with_name(f"{run_dir.name}-{number}")):
        number += 1
    return candidate


def check_output_paths(run: RunConfig, run_dir: Path) -> None:
    """Every directory the run writes exists (created here) and takes a file; raises ConfigError
    naming the path otherwise."""
    targets = {run_dir: "run directory", run_dir / CHECKPOINTS_SUBDIR: "checkpoints"}
    if run.logger.plots:
        targets[run_dir / PLOTS_SUBDIR] = "plots"
    if run.logger.backend == "wandb":
        targets[run_dir / WANDB_SUBDIR] = "wandb files"
    for path, what in targets.items():
        if path.exists() and not path.is_dir():
            raise ConfigError("run_dir", f"{path} is a file where the run writes its {what}",
                              "move it away or choose another run_dir")
        probe = path / f".write-check-{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise ConfigError("run_dir", f"cannot write the {what} at {path}: {reason}",
                              "choose a run_dir this user can write") from None


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: node}


def _same(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)
