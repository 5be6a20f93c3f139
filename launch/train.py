"""`riskpo-train`: the Hydra main over conf/. Validates the config once, checks the run
directory and the environment, prepares the model and data, starts (or joins) a Ray cluster,
builds the worker groups and runs the training loop.

    riskpo-train                                   # the embedded default (tiny model, CPU)
    riskpo-train algorithm=grpo trainer.total_steps=3 run_dir=runs/grpo
    riskpo-train -m algorithm=riskpo,grpo seed=0,1 # a sweep: one run after another
    riskpo-train experiment=qwen2.5-1.5b-math rehearse=true  # a GPU recipe, 2 steps on CPUs

Exit status: 0 done (or a resume with nothing left to train); 1 the run stopped on a failure
(non-finite training, a full disk, a step that failed); 2 refused before anything started (the
config, the data, the run directory or an unreachable cluster; one line naming the key);
130 interrupted (Ctrl-C), 143 stopped by SIGTERM. A stop is one line, never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from launch.config import CONF_DIR, RunConfig, resolve_run_dir, validate
from launch.run_dir import RunFinished, RunPlan
from riskpo.data.rows import RowError
from riskpo.options import ConfigError
from riskpo.run.record import message_console
from riskpo.run.stops import (
    INTERRUPTED,
    NoSpaceLeft,
    RunStopped,
    checkpoint_note,
    error_line,
    interrupt_status,
    raise_interrupt,
)

STOP_LIMIT_S = 60.0  # an interrupted run's process is gone within this (cleanup takes seconds)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Console entry point: runs one training run and exits with the status the module
    docstring lists, saying in one line why a run did not finish."""
    console = message_console()
    try:
        if cfg.get("rehearse"):  # the recipe for 2 steps on this machine's CPUs (launch/rehearse)
            from launch.rehearse.rehearsal import rehearse

            rehearse(cfg, train, console, stop_limit_s=STOP_LIMIT_S, command_line=sys.argv[1:])
            return
        run = validate(cfg)
        train(run, OmegaConf.to_container(cfg, resolve=True), resolve_run_dir(run),
              stop_limit_s=STOP_LIMIT_S)
    except ConfigError as error:
        _stop(console, 2, f"[bold red]config error[/]: {error}")
    except RowError as error:
        _stop(console, 2, f"[bold red]data error[/]: {error}")
    except RunFinished as error:
        _stop(console, 0, f"[bold yellow]resume[/]: {error}")
    except RunStopped as error:
        interrupted = error.exit_status in INTERRUPTED.values()
        _stop(console, error.exit_status, str(error) if interrupted else f"[bold red]stopped[/]: {error}")
    except KeyboardInterrupt as error:  # before the run started
        _stop(console, interrupt_status(error), "[bold yellow]interrupted[/] before the run started")


def train(run: RunConfig, resolved: dict[str, Any], run_dir: Path,
          console: Console | None = None, stop_limit_s: float | None = None) -> dict[str, Any]:
    """One run, end to end; returns the summary also written to run_dir/summary.json. Raises
    ConfigError/RowError before anything starts, RunFinished when a resume has nothing to do,
    RunStopped when the run stops early (an interrupt is RunStopped with status 130/143).
    stop_limit_s (the command line's): after an interrupt the process exits within it."""
    from launch.factory import check_reachable, prepare_model
    from launch.run_dir import apply_plan, check_output_paths, plan_run
    from riskpo.data.loaders import load_checked_data
    from riskpo.loop.trainer import describe_step_shape
    from riskpo.models.loading import prompt_length_counter, prompt_tokenizer
    from riskpo.run.checkpoints import (
        CHECKPOINTS_SUBDIR,
        checkpoint_bytes_needed,
        model_checkpoint_bytes,
        space_problem,
    )
    from riskpo.run.plots import plot_run

    console = console or message_console()
    plan = plan_run(run, resolved, Path(run_dir))  # reads only: a refusal leaves run_dir as it was
    console.print(f"[bold]RiskPO-RL[/]: {run.algorithm.name} on {run.data.train.source}, "
                  f"{run.trainer.total_steps} steps -> {plan.run_dir}")
    train_rows, eval_rows = load_checked_data(run.data, prompt_length_counter(prompt_tokenizer(run.model)))
    console.print(f"data: {len(train_rows)} training rows, {len(eval_rows)} held-out rows; "
                  f"{describe_step_shape(run.algorithm, run.trainer)}", soft_wrap=True, highlight=False)
    check_reachable(run)
    check_output_paths(run, plan.run_dir)
    if plan.note:
        console.print(plan.note, soft_wrap=True, highlight=False)
    changes = apply_plan(plan)
    try:
        model_path = prepare_model(run, console)
    except KeyboardInterrupt as error:
        raise _interrupted(error, 0, plan) from None
    checkpoint_bytes = model_checkpoint_bytes(model_path)
    problem = space_problem(plan.run_dir / CHECKPOINTS_SUBDIR,
                            checkpoint_bytes_needed(plan.run_dir, checkpoint_bytes))
    if problem and run.trainer.total_steps:
        raise ConfigError("run_dir", problem, "free some space or choose a run_dir on another disk")
    summary = _run_on_ray(run, resolved, plan, (train_rows, eval_rows), model_path,
                          checkpoint_bytes, changes, console, stop_limit_s)
    if run.logger.plots:
        plots = plot_run(plan.run_dir)
        console.print(f"plots: {', '.join(str(p) for p in plots)}")
    console.print(f"[bold green]done[/]: summary in {plan.run_dir / 'summary.json'}")
    return summary


def _run_on_ray(run: RunConfig, resolved: dict[str, Any], plan: RunPlan, rows: tuple[list, list],
                model_path: str, checkpoint_bytes: int, changes: list[str],
                console: Console, stop_limit_s: float | None) -> dict[str, Any]:
    """Connects to Ray, builds the workers, trains; whatever happens, the workers stop and a
    local cluster started here is shut down and its temp directory removed."""
    from launch.factory import build_workers, connect_ray, shutdown_ray
    from riskpo.loop.trainer import Trainer
    from riskpo.run.checkpoints import checkpoint_meta
    from riskpo.run.record import RunLogger

    meta = checkpoint_meta(plan.checkpoint) if plan.checkpoint else {}
    started_ray, workers, trainer, logger, sigterm = False, None, None, None, None
    try:
        started_ray = connect_ray(run, console)
        sigterm = _set_handler(signal.SIGTERM, raise_interrupt)  # after ray.init, which sets one
        logger = RunLogger(plan.run_dir, run.logger, resolved, run.trainer.total_steps, run.name,
                           wandb_run_id=meta.get("wandb_run_id"), resume_step=plan.resume_step,
                           console=console)
        for change in changes + [f"changed on resume: {c}" for c in plan.changed]:
            logger.event("run_dir", change)
        start = time.perf_counter()
        workers = build_workers(run, model_path, console)
        logger.event("startup", f"workers ready in {time.perf_counter() - start:.1f}s")
        trainer = Trainer(run, workers, *rows, logger, plan.run_dir, checkpoint_bytes=checkpoint_bytes,
                          colocate=run.cluster.colocate)
        if plan.checkpoint:
            trainer.load_checkpoint(plan.checkpoint)
            logger.event("resume", f"resumed from {plan.checkpoint} at step {trainer.step}",
                         step=trainer.step)
        return trainer.fit()
    except KeyboardInterrupt as error:
        stop: RunStopped = _interrupted(error, trainer.step if trainer else 0, plan)
        _record(logger, "interrupted", stop)
        if stop_limit_s is not None:
            _exit_within(stop_limit_s, stop, plan.run_dir)
        raise stop from None
    except RunStopped as error:
        _record(logger, "stopped", error)
        raise
    except (ConfigError, RowError):  # found before anything ran (e.g. the cluster is too small)
        raise
    except Exception as error:  # a step (or the start) failed: one line; the traceback is kept
        stop = _failed(error, trainer.step if trainer else 0, plan)
        _record(logger, "error", stop, traceback="".join(traceback.format_exception(error)))
        raise stop from error
    finally:
        _close(logger, workers, started_ray, shutdown_ray)
        _set_handler(signal.SIGTERM, sigterm)


def _exit_within(limit_s: float, stop: RunStopped, run_dir: Path) -> None:
    """An interrupted run is gone within limit_s, however its cleanup goes: if the process is
    still here then (a worker or Ray's shutdown stuck), where each thread was goes to
    events.jsonl, the local cluster's temp directory is removed, the stop line is said and the
    process exits with the interrupt's status (Ray's own processes die with it)."""
    def watchdog() -> None:
        time.sleep(limit_s)
        from launch.factory import remove_started_dirs
        from riskpo.run.record import EVENTS_FILE

        stacks = "".join(f"thread {ident}:\n{''.join(traceback.format_stack(frame))}"
                         for ident, frame in sys._current_frames().items())
        event = {"time": time.time(), "step": stop.step or None, "kind": "stop/slow_cleanup",
                 "message": f"still cleaning up {limit_s:.0f} s after the interrupt; exited",
                 "traceback": stacks}
        with contextlib.suppress(OSError), open(run_dir / EVENTS_FILE, "a") as events:
            events.write(json.dumps(event) + "\n")
        with contextlib.suppress(Exception):
            remove_started_dirs()
        print(str(stop), file=sys.stderr, flush=True)
        os._exit(stop.exit_status)

    threading.Thread(target=watchdog, name="stop-watchdog", daemon=True).start()


def _interrupted(error: KeyboardInterrupt, step: int, plan: RunPlan) -> RunStopped:
    from riskpo.run.checkpoints import last_complete_checkpoint

    where = f"at step {step}" if step else "before the first step"
    stop = RunStopped(f"interrupted {where}; last complete checkpoint: "
                      f"{checkpoint_note(last_complete_checkpoint(plan.run_dir))}; continue with "
                      f"resume=auto run_dir={plan.run_dir}", step)
    stop.exit_status = interrupt_status(error)
    return stop


def _failed(error: Exception, step: int, plan: RunPlan) -> RunStopped:
    """One line for a failure nothing else named: a full disk where the run writes its
    records, or an error in a step (its traceback goes to events.jsonl)."""
    from riskpo.run.checkpoints import last_complete_checkpoint
    from riskpo.run.record import EVENTS_FILE

    kept = f"last complete checkpoint: {checkpoint_note(last_complete_checkpoint(plan.run_dir))}"
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return NoSpaceLeft(f"no space left on {error.filename or plan.run_dir}; {kept}", step)
    where = f"step {step} failed" if step else "the run failed to start"
    return RunStopped(f"{where}: {error_line(error)} (traceback in {plan.run_dir / EVENTS_FILE}); "
                      f"{kept}", step)


def _record(logger: Any, kind: str, stop: RunStopped, **details: Any) -> None:
    """Writes the stop to events.jsonl when it can (not on a full disk)."""
    if logger is None:
        return
    with contextlib.suppress(OSError):
        logger.event(kind, str(stop), step=stop.step or None, echo=False, **details)


def _close(logger: Any, workers: Any, started_ray: bool, shutdown_ray: Any) -> None:
    """Closes the run directory, stops the workers and a cluster this run started. A second
    interrupt while closing does not stop the cleanup."""
    previous = [_set_handler(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)]
    try:
        for close in (logger.close if logger else None, workers.shutdown if workers else None,
                      shutdown_ray if started_ray else None):
            if close is None:
                continue
            with contextlib.suppress(Exception):  # the run's own error is the one to report
                close()
    finally:
        for sig, handler in zip((signal.SIGINT, signal.SIGTERM), previous, strict=True):
            _set_handler(sig, handler)


def _set_handler(sig: signal.Signals, handler: Any) -> Any:
    """Installs a signal handler (main thread only; elsewhere, and for None, nothing);
    returns the one it replaced."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(sig, handler)


def _stop(console: Console, status: int, line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True)
    sys.exit(status)


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
