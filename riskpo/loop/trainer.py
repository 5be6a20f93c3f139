"""The single-controller training loop. A step is a short sequence of named phases, each a
call into a worker group; no phase knows which engine, transport or estimator is behind it:

    rollouts (sample prompts, roll out, verify) -> advantages -> log-probs -> learn -> sync
    weights -> log; every K steps evaluate and checkpoint.

What differs between modes is chosen once, at start-up: whether rollouts are made when a step
starts or ahead of it (riskpo/loop/rollouts.py, pipeline.py), and whether the engines give up
their devices while the learner works (riskpo/loop/colocation.py). The weight-sync object owns
the version the engines hold (riskpo/loop/contracts.py). A checkpoint's contents and the stop
policy for training that is no longer finite live in riskpo/run/.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from riskpo.algo.config import AlgorithmConfig
from riskpo.algo.registry import AdvantageState, get_advantage_estimator
from riskpo.batch import TrainBatch
from riskpo.data.loaders import DataConfig
from riskpo.data.rows import Row
from riskpo.data.sampler import PromptSampler
from riskpo.loop.colocation import device_sharing
from riskpo.loop.contracts import Workers
from riskpo.loop.evaluation import evaluate
from riskpo.loop.pipeline import PipelinedRollouts
from riskpo.loop.rollouts import (
    InlineRollouts,
    PhaseTimer,
    RolloutBatch,
    RolloutCollector,
    Rollouts,
    RolloutSource,
    staleness,
)
from riskpo.messages import SamplingConfig
from riskpo.options import require
from riskpo.run.checkpoints import DriverState, RunCheckpoints, RunClock, capture_rng, restore_rng
from riskpo.run.record import RunLogger
from riskpo.run.stops import StopPolicy

LEARNER_PHASES = ("logprobs", "train")  # the learner's share of a step, as the loop waits on it


@dataclass
class TrainerConfig:
    """The loop's shape: how long, how many prompts and samples a step, when to evaluate and
    save."""

    total_steps: int = 60
    prompts_per_step: int = 10  # P: a multiple of algorithm.options.bundle_size for riskpo
    samples_per_prompt: int = 8  # n: responses sampled per prompt
    eval_every: int = 20  # steps between evaluations; 0: only before and after training
    eval_before_training: bool = True
    save_every: int = 20  # steps between checkpoints; 0: only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept on disk; 0 keeps all
    # Optimizer updates in a row that were skipped or not finite (loss or gradient norm) before
    # the run stops with exit status 1; 0: never stop (each new streak is still an event).
    max_skipped_updates: int = 3
    # Generation of the next k batches overlaps training (riskpo/loop/pipeline.py): a step trains on
    # rollouts k weight versions old. 0: generate, then train, in turn.
    off_policy_steps: int = 0

    def check(self, key: str) -> None:
        for name in ("total_steps", "eval_every", "save_every", "keep_checkpoints",
                     "max_skipped_updates", "off_policy_steps"):
            require(getattr(self, name) >= 0, f"{key}.{name}", f"{getattr(self, name)} is negative",
                    "use >= 0")
        require(self.prompts_per_step >= 1, f"{key}.prompts_per_step", "must be >= 1")
        require(self.samples_per_prompt >= 1, f"{key}.samples_per_prompt", "must be >= 1")


class TrainingRun(Protocol):
    """The parts of a run config the loop reads (launch/config.py's RunConfig has them)."""

    seed: int
    trainer: TrainerConfig
    algorithm: AlgorithmConfig
    data: DataConfig
    rollout: SamplingConfig


def prompts_per_step(algorithm: AlgorithmConfig, prompts: int) -> int:
    """The prompts a step really uses: with drop_last_bundle, whole estimator groups only."""
    size = algorithm.prompts_per_group()
    return prompts - prompts % size if size > 1 and algorithm.options.drop_last_bundle else prompts


def describe_step_shape(algorithm: AlgorithmConfig, trainer: TrainerConfig) -> str:
    """What a step really uses, in one line: prompts (and what happens to the ones that do not
    fill a last bundle), samples per prompt, responses."""
    asked, size, samples = trainer.prompts_per_step, algorithm.prompts_per_group(), trainer.samples_per_prompt
    used = prompts_per_step(algorithm, asked)
    groups = f" in bundles of {size}" if size > 1 else ""
    if used < asked:
        groups += (f"; algorithm.options.drop_last_bundle drops {asked - used} of the "
                   f"trainer.prompts_per_step={asked} prompts every step")
    elif size > 1 and asked % size:
        groups += (f", the last bundle ragged: {asked % size} prompts "
                   "(algorithm.options.ragged_last_bundle)")
    line = f"each step: {used} prompts{groups}; {samples} samples each = {used * samples} responses"
    if algorithm.dynamic_sampling.enabled:
        line += " (dynamic sampling refills prompts without a reward signal)"
    return line


class Trainer:
    """fit() runs the steps with their evaluations and checkpoints; train_step() is one step."""

    def __init__(self, run: TrainingRun, workers: Workers, train_rows: Sequence[Row],
                 eval_rows: Sequence[Row], logger: RunLogger, run_dir: Path,
                 checkpoint_bytes: int = 0, colocate: bool = False) -> None:
        """checkpoint_bytes: about what the first checkpoint takes (later ones: the last).
        colocate: the engines share the learner's devices, so they sleep while it works."""
        self.run, self.workers, self.logger, self.eval_rows = run, workers, logger, list(eval_rows)
        t = run.trainer
        self.sampler = PromptSampler(train_rows, prompts_per_step(run.algorithm, t.prompts_per_step),
                                     shuffle=run.data.shuffle, seed=run.seed)
        self.estimator = get_advantage_estimator(run.algorithm.name)
        self.advantage_state = AdvantageState(seed=run.seed)
        self.step, self.initial_eval, self.clock = 0, {}, RunClock()
        self.checkpoints = RunCheckpoints(Path(run_dir), t.keep_checkpoints, checkpoint_bytes)
        self.stops = StopPolicy(t.max_skipped_updates, self.checkpoints)
        collector = RolloutCollector(run.algorithm, run.data, run.rollout, run.seed, t.samples_per_prompt,
                                     self.sampler, workers.rollout, workers.verifiers, workers.weight_sync)
        self.rollouts: RolloutSource = (
            PipelinedRollouts(collector, workers.weight_sync, workers.learner, t.off_policy_steps,
                              t.total_steps, self._note) if t.off_policy_steps else
            InlineRollouts(collector, workers.weight_sync, workers.learner, self._note))
        self.devices = device_sharing(colocate, workers.rollout)

    def fit(self) -> dict[str, Any]:
        """Trains from the current step to trainer.total_steps, evaluating and saving on their
        cadence; returns the summary written to summary.json. Raises RunStopped (riskpo/run/
        stops.py) when training stops being finite or the disk fills up: an engine's
        NonFiniteSampling stops the run wherever it surfaces (a step's rollouts, an evaluation,
        the batches made ahead that a checkpoint waits for); any other error propagates."""
        self.clock.start()
        if self.step == 0 and self.run.trainer.eval_before_training:
            self.initial_eval = self.evaluate()
            self.logger.console.print(f"[bold]before RL[/]: {_format_eval(self.initial_eval)}")
        try:
            final = self._train_until_done()
        except Exception as error:
            stop = self.stops.sampling_stop(error, self.step)
            if stop is not None:
                raise stop from error
            raise
        finally:
            self.rollouts.close()
        self.logger.console.print(f"[bold]after RL[/]: {_format_eval(final)}")
        wall_s = self.clock.seconds
        self.logger.write_summary(self.initial_eval, final, self.step, wall_s,
                                  algorithm=self.run.algorithm.name, seed=self.run.seed)
        return {"initial": self.initial_eval, "final": final, "steps": self.step, "wall_s": wall_s}

    def _train_until_done(self) -> dict[str, float]:
        """The steps, their evaluations and checkpoints; returns the final evaluation."""
        cadence = self.run.trainer
        last_eval: dict[str, float] = {}
        save_pending = False  # a scheduled save waits for a step whose updates were finite
        while self.step < cadence.total_steps:
            self.step += 1
            metrics, healthy = self.checked_train_step()
            stopping = self.stops.must_stop()
            last_eval = self.evaluate() if not stopping and self._due(cadence.eval_every) else {}
            self.logger.log_step({**metrics, **last_eval})
            if stopping:
                raise self.stops.updates_stop(self.step)
            if save_pending or self._due(cadence.save_every):
                save_pending = not self._save_if_healthy(healthy, self._due(cadence.save_every))
        return last_eval or self.evaluate()

    def checked_train_step(self) -> tuple[dict[str, float], bool]:
        """train_step, then the stop policy's look at its updates: returns (metrics, healthy).
        The first of a streak of non-finite updates is an event."""
        metrics = self.train_step()
        healthy, news = self.stops.observe(metrics)
        if news:
            self.logger.event("train/non_finite", news, step=self.step)
        return metrics, healthy

    def train_step(self) -> dict[str, float]:
        """One step: its rollouts (made now or ahead), advantages, log-probs, the learner's
        update, the engines' new weights."""
        timer, started, learner = PhaseTimer(), time.perf_counter(), self.workers.learner
        made = self._take_rollouts(timer)
        with self.devices.learner_turn(timer):
            with timer("advantage"):
                batch, advantage_metrics = self.compute_advantages(made.rollouts)
            with timer("logprobs"):
                learner_metrics = learner.compute_logprobs(batch)
            with timer("train"):
                learner_metrics.update(learner.train_step(batch))
        sync_metrics = self.rollouts.after_update(learner.weight_version, timer)
        metrics: dict[str, float] = {"step": self.step, **made.metrics, **advantage_metrics,
                                     **staleness(made.rollouts, self.step - 1)}
        metrics.update({f"actor/{key}": value for key, value in learner_metrics.items()})
        metrics.update(sync_metrics)
        metrics.update({f"time/{phase}": seconds for phase, seconds in timer.seconds.items()})
        metrics["time/step"] = time.perf_counter() - started
        waited = (*self.rollouts.waits_on, *LEARNER_PHASES, *self.devices.phases)
        metrics["time/orchestration_fraction"] = 1.0 - sum(
            timer.seconds.get(phase, 0.0) for phase in waited) / metrics["time/step"]
        metrics.update(self._worker_events())
        if metrics["train/masked_samples"]:
            self.logger.event("verifier/masked", f"{metrics['train/masked_samples']:.0f} samples had "
                              "no verdict (infrastructure failure) and were masked out of the loss",
                              step=self.step)
        return metrics

    def _take_rollouts(self, timer: PhaseTimer) -> RolloutBatch:
        """This step's rollouts; the rows it drew, what making it had to say and its phase
        times are recorded on this step."""
        made = self.rollouts.batch_for(self.step, timer)
        self.logger.log_prompts(self.step, made.epoch, made.rollouts.row_indices, made.dropped)
        for kind, message in made.events:
            self._note(kind, message)
        for phase, seconds in made.seconds.items():
            timer.add(phase, seconds)
        return made

    def compute_advantages(self, rollouts: Rollouts) -> tuple[TrainBatch, dict[str, float]]:
        """Rewards -> advantages with the configured estimator (which groups the responses
        itself: by question, or RiskPO's bundles of consecutive questions)."""
        verdicts = rollouts.verdicts
        rewards, valid = verdicts.rewards.flatten(), verdicts.valid.flatten()
        question_ids = torch.arange(len(verdicts)).repeat_interleave(verdicts.rewards.shape[1])
        result = self.estimator(rewards, question_ids, None, self.run.algorithm.options,
                                self.advantage_state, valid)
        return rollouts.train_batch(result.advantages.float(), result.loss_weights), result.metrics

    def _worker_events(self) -> dict[str, float]:
        """Faults the worker groups recovered from this step, as events and metrics."""
        counts: dict[str, float] = {}
        for name, group in (("rollout", self.workers.rollout), ("verifier", self.workers.verifiers)):
            for event in group.drain_events():
                kind = str(event.get("kind", "event"))
                self.logger.event(f"{name}/{kind}", str(event.get("message", "")), step=self.step,
                                  **{k: v for k, v in event.items() if k not in ("kind", "message")})
                counts[f"faults/{name}_{kind}"] = counts.get(f"faults/{name}_{kind}", 0.0) + 1.0
        return counts

    def evaluate(self) -> dict[str, float]:
        start = time.perf_counter()
        metrics = evaluate(self.workers.rollout, self.workers.verifiers, self.eval_rows,
                           self.run.data, self.run.rollout, seed=self.run.seed + 12345)
        metrics["time/eval"] = time.perf_counter() - start
        return metrics

    def _due(self, every: int) -> bool:
        """Whether a cadence of `every` steps (0: none) falls on this step; the last step always."""
        return bool(every and self.step % every == 0) or self.step == self.run.trainer.total_steps

    def _save_if_healthy(self, healthy: bool, scheduled: bool) -> bool:
        """Saves unless the step's updates were not finite (then the next healthy step saves;
        on a scheduled step an event says so). Returns whether it saved."""
        if healthy:
            self.save_checkpoint()
        elif scheduled:
            self.logger.event("checkpoint/deferred", "not saving a model whose last update was "
                              "not finite; the next step with finite updates saves", step=self.step)
        return healthy

    def save_checkpoint(self) -> Path:
        """A complete checkpoint of the learner and the driver's state (riskpo/run/checkpoints.py
        checks the space first and removes a save cut short)."""
        state = DriverState(step=self.step, sampler=self.sampler.state_dict(),
                            advantage_state=self.advantage_state.state_dict(), rng=capture_rng(),
                            initial_eval=self.initial_eval, wandb_run_id=self.logger.wandb_run_id,
                            wall_s=self.clock.seconds, rollouts=self.rollouts.state())
        return self.checkpoints.save(self.workers.learner, state)

    def load_checkpoint(self, path: Path) -> None:
        """Restores learner, optimizer, sampler, RNG, quantile tracker, the run's wall time and
        the batches made ahead, then pushes the restored weights to the rollout engines."""
        state = self.checkpoints.load(self.workers.learner, path)
        self.step = state.step
        self.rollouts.restore(state.rollouts, state.step, path)
        self.sampler.load_state_dict(state.sampler)
        self.advantage_state.load_state_dict(state.advantage_state)
        restore_rng(state.rng)
        self.initial_eval, self.clock = state.initial_eval, RunClock(state.wall_s)
        self.workers.weight_sync.sync(self.workers.learner.weight_version)

    def _note(self, kind: str, message: str) -> None:
        self.logger.event(kind, message, step=self.step)


def _format_eval(metrics: dict[str, float]) -> str:
    shown = [f"{key[5:]} {value:.3f}" for key, value in metrics.items()
             if key.startswith("eval/") and isinstance(value, float) and math.isfinite(value)
             and ("avg@" in key or "pass@" in key or "greedy" in key)]
    return ", ".join(shown)
