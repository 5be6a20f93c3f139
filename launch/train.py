"""`riskpo-train`: the Hydra main over conf/. Validates the config once, prepares the model and
data, starts (or joins) a Ray cluster, builds the worker groups and runs the training loop.

    riskpo-train                                   # the embedded default (tiny model, CPU)
    riskpo-train algorithm=grpo trainer.total_steps=3 run_dir=runs/grpo
    riskpo-train -m algorithm=riskpo,grpo seed=0,1 # a sweep: one run after another
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from launch.config import CONF_DIR, RunConfig, resolve_run_dir, validate
from riskpo.data.rows import RowError
from riskpo.options import ConfigError


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Console entry point. A config or data error is one clear line naming the key (or the
    file, row and field), exit status 2; both are found before the warm start and any actor."""
    try:
        run = validate(cfg)
        train(run, OmegaConf.to_container(cfg, resolve=True), resolve_run_dir(run))
    except ConfigError as error:
        Console(stderr=True).print(f"[bold red]config error[/]: {error}", highlight=False)
        sys.exit(2)
    except RowError as error:
        Console(stderr=True).print(f"[bold red]data error[/]: {error}", highlight=False)
        sys.exit(2)


def train(run: RunConfig, resolved: dict[str, Any], run_dir: Path,
          console: Console | None = None) -> dict[str, Any]:
    """One run, end to end; returns the summary also written to run_dir/summary.json."""
    from launch.factory import build_workers, connect_ray, prepare_model
    from riskpo.data.loaders import load_checked_data
    from riskpo.logging import RunLogger
    from riskpo.modeling import prompt_tokenizer
    from riskpo.plots import plot_run
    from riskpo.trainer import Trainer, checkpoint_meta

    console = console or Console(stderr=True)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]RiskPO-RL[/]: {run.algorithm.name} on {run.data.train.source}, "
                  f"{run.trainer.total_steps} steps -> {run_dir}")
    checkpoint = find_resume_checkpoint(run, run_dir)
    train_rows, eval_rows = load_checked_data(run.data, prompt_tokenizer(run.model))
    console.print(f"data: {len(train_rows)} training rows, {len(eval_rows)} held-out rows")
    model_path = prepare_model(run, console)
    meta = checkpoint_meta(checkpoint) if checkpoint else {}
    started_ray = connect_ray(run, console)
    workers = None
    logger = RunLogger(run_dir, run.logger, resolved, run.trainer.total_steps,
                       run.name, wandb_run_id=meta.get("wandb_run_id"),
                       resume_step=meta.get("step"), console=console)
    try:
        start = time.perf_counter()
        workers = build_workers(run, model_path, console)
        logger.event("startup", f"workers ready in {time.perf_counter() - start:.1f}s")
        trainer = Trainer(run, workers, train_rows, eval_rows, logger, run_dir)
        if checkpoint:
            trainer.load_checkpoint(checkpoint)
            logger.event("resume", f"resumed from {checkpoint} at step {trainer.step}",
                         step=trainer.step)
        summary = trainer.fit()
    finally:
        logger.close()
        if workers is not None:
            workers.shutdown()
        if started_ray:
            import ray

            ray.shutdown()
    if run.logger.plots:
        plots = plot_run(run_dir)
        console.print(f"plots: {', '.join(str(p) for p in plots)}")
    console.print(f"[bold green]done[/]: summary in {run_dir / 'summary.json'}")
    return summary


def find_resume_checkpoint(run: RunConfig, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: resume=auto takes the newest complete one in run_dir."""
    from riskpo.trainer import COMPLETE_MARKER, complete_checkpoints

    if run.resume == "never":
        return None
    if run.resume == "auto":
        found = complete_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(run.resume).expanduser()
    if not (path / COMPLETE_MARKER).is_file():
        raise ConfigError("resume", f"{path} is not a complete checkpoint",
                          "name a run_dir/checkpoints/step_N directory, or resume=auto")
    return path


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
