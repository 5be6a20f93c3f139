"""The run directory that other programs read, and what the user watches while a run goes on.

    run_dir/config.yaml     the resolved config
    run_dir/metrics.jsonl   one JSON object per step (REQUIRED_STEP_KEYS at least; eval/... on eval steps)
    run_dir/events.jsonl    faults and notable events (actor restarts, masked samples, ...)
    run_dir/prompts.jsonl   the training rows each step used: {"step", "epoch", "rows", "dropped"}
    run_dir/summary.json    {"initial": {...}, "final": {...}, "steps": N, "wall_s": T}
    run_dir/wandb/          wandb files: offline unless a key is configured; logger.backend=none: none
    run_dir/plots/          PNGs (riskpo/run/plots.py)
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from riskpo.options import one_of, require

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
PROMPTS_FILE = "prompts.jsonl"
SUMMARY_FILE = "summary.json"
WANDB_SUBDIR = "wandb"
PLOTS_SUBDIR = "plots"
STEP_FILES = (METRICS_FILE, PROMPTS_FILE)  # one row per step: a resume drops the rows after its step
# the phase times (time/<phase>) the progress line shows; every step records them
PROGRESS_PHASES = ("generate", "verify", "advantage", "train", "sync")
REQUIRED_STEP_KEYS = ("step", "train/reward_mean", "actor/entropy", "time/step",
                      *(f"time/{phase}" for phase in PROGRESS_PHASES))


BACKENDS = ("wandb", "none")
PROGRESS_STYLES = ("rich", "tqdm", "plain", "none")


def message_console() -> Console:
    """The console our programs tell the user things on (stderr). Soft wrap: a line is never
    broken by rich (which wraps at 80 columns when stderr is a file or a pipe), so the paths
    and commands it prints can be copied from a log; the terminal wraps long lines itself."""
    return Console(stderr=True, soft_wrap=True)


@dataclass
class LoggerConfig:
    """Where a run's metrics go besides metrics.jsonl, and what the user sees meanwhile."""

    backend: str = "wandb"  # wandb (offline unless WANDB_API_KEY is set) | none
    project: str = "riskpo-rl"
    entity: str | None = None
    run_name: str | None = None  # null: <experiment>-<algorithm>-seed<seed>
    online: bool | None = None  # null: online only when WANDB_API_KEY is set
    progress: str = "rich"  # see PROGRESS_STYLES
    plots: bool = True

    def check(self, key: str) -> None:
        one_of(self.backend, BACKENDS, f"{key}.backend")
        one_of(self.progress, PROGRESS_STYLES, f"{key}.progress")
        if self.backend == "wandb" and self.online:
            require(bool(os.environ.get("WANDB_API_KEY")), f"{key}.online",
                    "online wandb needs WANDB_API_KEY", f"export WANDB_API_KEY=... or {key}.online=null")


def json_value(value: Any) -> Any:
    """A JSON-safe copy: tensors and numpy scalars as numbers, NaN/inf as null."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    if hasattr(value, "tolist"):
        return json_value(value.tolist())
    return value


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (an empty list when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of run_dir/metrics.jsonl (an empty list when there are none yet)."""
    return read_jsonl(Path(run_dir) / METRICS_FILE)


def truncate_metrics(run_dir: str | Path, last_step: int, name: str = METRICS_FILE) -> int:
    """Drops rows of run_dir/name after `last_step` (the step a resumed run continues from);
    returns how many were dropped, so a resumed run's curve has no duplicate or orphaned steps."""
    path = Path(run_dir) / name
    rows = read_jsonl(path)
    kept = [row for row in rows if row["step"] <= last_step]
    if len(kept) != len(rows):
        path.write_text("".join(json.dumps(row) + "\n" for row in kept))
    return len(rows) - len(kept)


def config_text(resolved_config: Mapping[str, Any]) -> str:
    """The resolved config as config.yaml holds it."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(json_value(dict(resolved_config))))


class RunLogger:
    """Writes the run directory's files, mirrors steps to wandb, shows a live progress line."""

    def __init__(
        self,
        run_dir: str | Path,
        config: LoggerConfig,
        resolved_config: Mapping[str, Any],
        total_steps: int,
        run_name: str,
        wandb_run_id: str | None = None,
        resume_step: int | None = None,
        console: Console | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.console = console or message_console()
        (self.run_dir / CONFIG_FILE).write_text(config_text(resolved_config))
        if resume_step is not None:
            for name in STEP_FILES:
                dropped = truncate_metrics(self.run_dir, resume_step, name)
                if dropped:
                    self.event("resume", f"dropped {dropped} {name} rows after step {resume_step}")
        self._metrics = (self.run_dir / METRICS_FILE).open("a", encoding="utf-8")
        self._prompts = (self.run_dir / PROMPTS_FILE).open("a", encoding="utf-8")
        self._wandb = None
        if config.backend == "wandb":
            self._wandb = _start_wandb(self.run_dir, config, resolved_config, run_name, wandb_run_id)
        self._wandb_run_id = None if self._wandb is None else self._wandb.id
        self.progress = ProgressLine(config.progress, total_steps, self.console, resume_step or 0)

    @property
    def wandb_run_id(self) -> str | None:
        """Kept in checkpoints so a resumed run continues the same wandb run."""
        return self._wandb_run_id

    def log_step(self, metrics: Mapping[str, Any]) -> None:
        """Appends one step's metrics (REQUIRED_STEP_KEYS at least) and updates the display."""
        missing = [key for key in REQUIRED_STEP_KEYS if key not in metrics]
        if missing:
            raise ValueError(f"step metrics lack {missing} (the metrics.jsonl contract)")
        row = json_value(dict(metrics))
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step" and v is not None},
                            step=int(row["step"]))
        self.progress.update(row)

    def log_prompts(self, step: int, epoch: int, rows: list[int], dropped: list[int]) -> None:
        """Records the training rows (dataset positions) a step used, and the ones it drew but
        dropped (dynamic sampling): a resumed run can be checked for replayed data."""
        record: dict[str, Any] = {"step": step, "epoch": epoch, "rows": rows}
        if dropped:
            record["dropped"] = dropped
        self._prompts.write(json.dumps(record) + "\n")
        self._prompts.flush()

    def event(self, kind: str, message: str, step: int | None = None, echo: bool = True,
              **details: Any) -> None:
        """Records a notable event (a fault, a restart, masked samples) and, with echo, says it
        on screen."""
        row = {"time": time.time(), "step": step, "kind": kind, "message": message, **details}
        with (self.run_dir / EVENTS_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(json_value(row)) + "\n")
        if echo:
            where = f"step {step}: " if step is not None else ""
            self.console.print(f"[yellow]{kind}[/]: {where}{message}")

    def write_summary(
        self, initial: Mapping[str, Any], final: Mapping[str, Any], steps: int, wall_s: float,
        **extra: Any,
    ) -> Path:
        """summary.json: initial and final eval metrics, steps done, wall-clock seconds."""
        summary = {"initial": dict(initial), "final": dict(final), "steps": steps, "wall_s": wall_s}
        summary.update(extra)
        path = self.run_dir / SUMMARY_FILE
        path.write_text(json.dumps(json_value(summary), indent=2) + "\n")
        if self._wandb is not None:
            self._wandb.summary.update({f"final/{k}": v for k, v in json_value(dict(final)).items()})
        return path

    def close(self) -> None:
        self.progress.close()
        self._metrics.close()
        self._prompts.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _start_wandb(run_dir: Path, config: LoggerConfig, resolved_config: Mapping[str, Any],
                 run_name: str, run_id: str | None):
    """A wandb run whose files all live in run_dir/wandb; offline unless a key is configured."""
    import wandb

    wandb_dir = run_dir / WANDB_SUBDIR
    wandb_dir.mkdir(parents=True, exist_ok=True)
    for variable, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", ".cache"),
                          ("WANDB_CONFIG_DIR", ".config"), ("WANDB_DATA_DIR", ".data"),
                          ("WANDB_ARTIFACT_DIR", ".artifacts")):
        os.environ[variable] = str(wandb_dir / sub) if sub else str(run_dir)
    online = config.online if config.online is not None else bool(os.environ.get("WANDB_API_KEY"))
    return wandb.init(
        project=config.project,
        entity=config.entity,
        name=run_name,
        id=run_id,
        resume="allow" if run_id else None,
        dir=str(run_dir),
        mode="online" if online else "offline",
        config=json_value(dict(resolved_config)),
        settings=wandb.Settings(silent=True, disable_git=True, save_code=False,
                                x_disable_stats=True, console="off"),
    )


def format_step(row: Mapping[str, Any]) -> str:
    """The one-line summary of a step: reward, avg@k (when evaluated), entropy, phase times."""
    parts = [f"step {row['step']}"]
    if row.get("train/reward_mean") is not None:
        parts.append(f"reward {row['train/reward_mean']:.3f}")
    parts += [f"{key[5:]} {value:.3f}" for key, value in row.items()
              if key.startswith("eval/avg@") and value is not None]
    if row.get("actor/entropy") is not None:
        parts.append(f"entropy {row['actor/entropy']:.3f}")
    times = [f"{phase[:3]} {row[f'time/{phase}']:.2f}" for phase in PROGRESS_PHASES
             if row.get(f"time/{phase}") is not None]
    if row.get("time/step") is not None:
        times.append(f"step {row['time/step']:.2f}s")
    return " | ".join(parts) + ("  [" + " ".join(times) + "]" if times else "")


class ProgressLine:
    """A live progress line: a rich or tqdm bar on a terminal, one printed line per step
    otherwise (style `plain`, or any style when output is not a terminal); `none` is silent."""

    def __init__(self, style: str, total_steps: int, console: Console, start_step: int = 0) -> None:
        self.style, self.console = style, console
        if style in ("rich", "tqdm") and not console.is_terminal:
            self.style = "plain"
        self._bar: Any = None
        if self.style == "rich":
            self._bar = Progress(TextColumn("[bold]RL"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[line]}"),
                                 console=console)
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step, line="")
            self._bar.start()
        elif self.style == "tqdm":
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, file=sys.stderr, unit="step")

    def update(self, row: Mapping[str, Any]) -> None:
        line = format_step(row)
        if self.style == "rich":
            self._bar.update(self._task, completed=int(row["step"]), line=line)
        elif self.style == "tqdm":
            self._bar.n = int(row["step"])
            self._bar.set_postfix_str(line, refresh=True)
        elif self.style == "plain":
            self.console.print(line, highlight=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop() if self.style == "rich" else self._bar.close()
            self._bar = None
