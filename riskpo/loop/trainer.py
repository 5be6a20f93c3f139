"""The single-controller training loop. A step is a short sequence of named phases, each a
call into a worker group; no phase knows which engine, transport or estimator is behind it:

    sample prompts -> roll out -> verify -> advantages (+ quantile tracker) -> log-probs ->
    learn -> sync weights -> log; every K steps evaluate and checkpoint.

After each step the learner's updates are checked (riskpo/run/stops.py): a run whose loss or
gradient norm stays non-finite stops, and a model whose last update was not finite is never
checkpointed. Checkpoints are complete or absent (riskpo/run/checkpoints.py).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from riskpo.algo.config import AlgorithmConfig
from riskpo.algo.registry import AdvantageState, get_advantage_estimator
from riskpo.batch import TrainBatch
from riskpo.data.loaders import DataConfig
from riskpo.data.rows import Row
from riskpo.data.sampler import PromptSampler
from riskpo.loop.evaluation import evaluate
from riskpo.loop.pipeline import RolloutPipeline
from riskpo.loop.rollouts import PhaseTimer, RolloutBatch, RolloutCollector, Rollouts, staleness
from riskpo.messages import Completion, SamplingConfig
from riskpo.options import require
from riskpo.run.checkpoints import (
    COMPLETE_MARKER,
    HF_EXPORT_SUBDIR,
    checkpoint_meta,
    complete_checkpoints,
    last_complete_checkpoint,
    remove_checkpoints_after,
    write_checkpoint,
)
from riskpo.run.record import RunLogger
from riskpo.run.stops import (
    NonFiniteTraining,
    UpdateHealth,
    checkpoint_note,
    error_line,
    mentions_non_finite,
)

__all__ = ["COMPLETE_MARKER", "HF_EXPORT_SUBDIR", "Trainer", "TrainerConfig", "checkpoint_meta",
           "complete_checkpoints"]
# the worker groups' share of a step, as the loop's thread waits on them
PHASES = ("generate", "verify", "logprobs", "train", "sync", "sleep", "wake")
PIPELINED_PHASES = ("wait_rollouts", "logprobs", "train", "sync")  # generation is in the background


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


class RolloutWorkers(Protocol):
    def generate(self, prompts: Sequence[Any], params: Any) -> list[list[Completion]]: ...
    def weight_versions(self) -> list[int | None]: ...
    def metrics(self) -> dict[str, float]: ...
    def drain_events(self) -> list[dict[str, Any]]: ...
    def sleep(self) -> None: ...  # colocated: frees the accelerator for the learner
    def wake_up(self) -> None: ...


class VerifierWorkers(Protocol):
    def verify_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]: ...
    def drain_events(self) -> list[dict[str, Any]]: ...


class Learner(Protocol):
    def compute_logprobs(self, batch: TrainBatch) -> dict[str, float]: ...
    def train_step(self, batch: TrainBatch) -> dict[str, float]: ...
    def sync_weights(self, rollout: Any, version: int | None = None) -> dict[str, float]: ...
    def save(self, path: str, extra: dict[str, Any] | None = None) -> None: ...
    def load(self, path: str) -> dict[str, Any]: ...
    def export_hf(self, path: str) -> None: ...
    @property
    def weight_version(self) -> int: ...


@dataclass
class Workers:
    """The worker groups the loop calls; built by launch/factory.py from the run config."""

    rollout: RolloutWorkers
    verifiers: VerifierWorkers
    learner: Learner


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
    def __init__(self, run: TrainingRun, workers: Workers, train_rows: Sequence[Row],
                 eval_rows: Sequence[Row], logger: RunLogger, run_dir: Path,
                 checkpoint_bytes: int = 0, colocate: bool = False) -> None:
        """checkpoint_bytes: about what the first checkpoint takes (later ones: the last).
        colocate: the engines share the learner's devices, so they sleep while it works."""
        self.run, self.workers, self.logger, self.run_dir = run, workers, logger, Path(run_dir)
        self.eval_rows, self.colocate = list(eval_rows), colocate
        self.sampler = PromptSampler(
            train_rows, prompts_per_step(run.algorithm, run.trainer.prompts_per_step),
            shuffle=run.data.shuffle, seed=run.seed)
        self.estimator = get_advantage_estimator(run.algorithm.name)
        self.advantage_state = AdvantageState(seed=run.seed)
        # weight versions count the learner's updates: the engines hold engine_version (None:
        # the weights at model_path, never synced), the learner learner_version
        self.engine_version: int | None = None
        self.learner_version = 0
        self.pipeline: RolloutPipeline[RolloutBatch] | None = None
        self._restored_batches: tuple[list[tuple[int, RolloutBatch]], int] | None = None
        self.collector = RolloutCollector(
            run.algorithm, run.data, run.rollout, run.seed, run.trainer.samples_per_prompt,
            self.sampler, workers.rollout, workers.verifiers, lambda: self.engine_version,
            self._resync)
        self.step = 0
        self.initial_eval: dict[str, float] = {}
        self.wall_s_before = 0.0  # wall time of the run before a resume (kept in checkpoints)
        self._fit_started: float | None = None
        self.checkpoint_bytes = checkpoint_bytes
        self.health = UpdateHealth(run.trainer.max_skipped_updates)

    @property
    def wall_s(self) -> float:
        """Seconds the run has trained, across resumes."""
        since = 0.0 if self._fit_started is None else time.perf_counter() - self._fit_started
        return self.wall_s_before + since

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict[str, Any]:
        """Trains for trainer.total_steps (from the resumed step), evaluating and saving on the
        configured steps; returns the summary written to summary.json. Raises RunStopped
        (riskpo/run/stops.py) when training stops being finite or the disk fills up."""
        self._fit_started = time.perf_counter()
        if self.step == 0 and self.run.trainer.eval_before_training:
            self.initial_eval = self.evaluate()
            self.logger.console.print(f"[bold]before RL[/]: {_format_eval(self.initial_eval)}")
        self._open_pipeline()
        try:
            final = self._train_until_done()
        finally:
            self._close_pipeline()
        self.logger.console.print(f"[bold]after RL[/]: {_format_eval(final)}")
        wall_s = self.wall_s
        self.logger.write_summary(self.initial_eval, final, self.step, wall_s,
                                  algorithm=self.run.algorithm.name, seed=self.run.seed)
        return {"initial": self.initial_eval, "final": final, "steps": self.step, "wall_s": wall_s}

    def _train_until_done(self) -> dict[str, float]:
        """The steps, their evaluations and checkpoints; returns the final evaluation."""
        t = self.run.trainer
        last_eval: dict[str, float] = {}
        save_due = False
        while self.step < t.total_steps:
            self.step += 1
            metrics, healthy = self.checked_train_step()
            last_eval = {}
            stopping = self.health.must_stop()
            if not stopping and (t.eval_every and self.step % t.eval_every == 0
                                 or self.step == t.total_steps):
                last_eval = self.evaluate()
                metrics.update(last_eval)
            self.logger.log_step(metrics)
            if stopping:
                raise self.non_finite_stop(self.health.problem(), self.health.first_bad_step)
            scheduled = bool(t.save_every and self.step % t.save_every == 0
                             or self.step == t.total_steps)
            if save_due or scheduled:
                save_due = not self._save_if_healthy(healthy, say_so=scheduled)
        return last_eval or self.evaluate()

    def _open_pipeline(self) -> None:
        """With trainer.off_policy_steps = k > 0, generation runs ahead on a background thread
        (riskpo/loop/pipeline.py), starting from the batches a checkpoint saved, if any."""
        depth = self.run.trainer.off_policy_steps
        if depth == 0:
            return
        self.pipeline = RolloutPipeline(self.collector.collect, depth, self.run.trainer.total_steps,
                                        synced_version=self.learner_version)
        if self._restored_batches is not None:
            self.pipeline.restore(*self._restored_batches)
            self._restored_batches = None

    def _close_pipeline(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
            self.pipeline = None

    def checked_train_step(self) -> tuple[dict[str, float], bool]:
        """train_step, then the check of its updates: returns (metrics, healthy). The first of a
        streak of non-finite updates is an event; a policy that samples from non-finite
        probabilities stops the run at once."""
        try:
            metrics = self.train_step()
        except Exception as error:
            if mentions_non_finite(error):
                raise self.non_finite_stop(f"the policy's sampling probabilities are not finite "
                                           f"({error_line(error)})", self.step) from error
            raise
        healthy, news = self.health.observe(metrics)
        metrics.pop("actor/trailing_skipped_updates", None)
        if news:
            self.logger.event("train/non_finite", news, step=self.step)
        return metrics, healthy

    def non_finite_stop(self, problem: str, first_bad_step: int) -> NonFiniteTraining:
        """The stop for training that went non-finite at first_bad_step: the weights it started
        from (trained up to the step before) are broken, so their checkpoints are removed and
        the newest one before them is named as the last good one."""
        removed = remove_checkpoints_after(self.run_dir, first_bad_step - 2)
        note = (f"; removed {', '.join(path.name for path in removed)} (the weights that went "
                "non-finite)" if removed else "")
        return NonFiniteTraining(
            f"training stopped at step {self.step}: {problem}{note}; last good checkpoint: "
            f"{checkpoint_note(last_complete_checkpoint(self.run_dir))}", self.step)

    def _save_if_healthy(self, healthy: bool, say_so: bool = True) -> bool:
        """Saves unless the step's updates were not finite (then the next healthy step saves;
        say_so: an event says it)."""
        if healthy:
            self.save_checkpoint()
            return True
        if say_so:
            self.logger.event("checkpoint/deferred", "not saving a model whose last update was "
                              "not finite; the next step with finite updates saves", step=self.step)
        return False

    def train_step(self) -> dict[str, float]:
        """One step: its batch of rollouts (made now, or taken from the pipeline), advantages,
        log-probs, the learner's update, and the engines' new weights."""
        timer = PhaseTimer()
        step_start = time.perf_counter()
        learner = self.workers.learner
        made = self._rollout_batch(timer)
        for phase, seconds in made.seconds.items():
            timer.add(phase, seconds)
        if self.colocate:
            with timer("sleep"):
                self.workers.rollout.sleep()  # the learner's phases have the devices
        with timer("advantage"):
            batch, advantage_metrics = self.compute_advantages(made.rollouts)
        with timer("logprobs"):
            learner_metrics = learner.compute_logprobs(batch)
        with timer("train"):
            learner_metrics.update(learner.train_step(batch))
        self.learner_version = self.step
        if self.colocate:
            with timer("wake"):
                self.workers.rollout.wake_up()
        sync_metrics = self._sync_after_step(timer)
        metrics: dict[str, float] = {"step": self.step, **made.metrics, **advantage_metrics,
                                     **staleness(made.rollouts, self.step - 1)}
        metrics.update({f"actor/{key}": value for key, value in learner_metrics.items()})
        metrics.update(sync_metrics)
        metrics.update({f"time/{phase}": seconds for phase, seconds in timer.seconds.items()})
        metrics["time/step"] = time.perf_counter() - step_start
        phases = sum(timer.seconds.get(p, 0.0) for p in (PIPELINED_PHASES if self.pipeline else PHASES))
        metrics["time/orchestration_fraction"] = 1.0 - phases / metrics["time/step"]
        metrics.update(self._worker_events())
        if metrics["train/masked_samples"]:
            self.logger.event("verifier/masked", f"{metrics['train/masked_samples']:.0f} samples had "
                              "no verdict (infrastructure failure) and were masked out of the loss",
                              step=self.step)
        return metrics

    # ------------------------------------------------------------------ phases

    def _rollout_batch(self, timer: PhaseTimer) -> RolloutBatch:
        """This step's rollouts: made now, or (pipelined) taken from the ones made ahead; the
        rows it drew and what making it had to say are logged on this step."""
        if self.pipeline is None:
            with timer("sync"):
                self.ensure_rollout_weights()
            made = self.collector.collect(self.step)
        else:
            with timer("wait_rollouts"):
                made = self.pipeline.take(self.step)
        self.logger.log_prompts(self.step, made.epoch, made.rollouts.row_indices, made.dropped)
        for kind, message in made.events:
            self.logger.event(kind, message, step=self.step)
        return made

    def _sync_after_step(self, timer: PhaseTimer) -> dict[str, float]:
        """The engines take the weights of this step (pipelined: once the batches due from
        older weights are made; the wait counts as wait_rollouts)."""
        if self.pipeline is None:
            with timer("sync"):
                return self._sync_engines()
        seconds: list[float] = []

        def sync() -> dict[str, float]:
            begin = time.perf_counter()
            try:
                return self._sync_engines()
            finally:
                seconds.append(time.perf_counter() - begin)

        begin = time.perf_counter()
        metrics = self.pipeline.sync(self.step, sync)
        timer.add("sync", seconds[0])
        timer.add("wait_rollouts", time.perf_counter() - begin - seconds[0])
        return metrics

    def _sync_engines(self) -> dict[str, float]:
        """Gives the rollout engines the learner's current weights, numbered by its updates."""
        metrics = self.workers.learner.sync_weights(self.workers.rollout, version=self.learner_version)
        self.engine_version = self.learner_version
        return metrics

    def _resync(self) -> None:
        """What the collector asks for when a completion came from other weights than the
        engines should hold: a sync of the learner's current weights (pipelined: run by the
        loop's thread, which owns the learner)."""
        if self.pipeline is None:
            self._sync_engines()
        else:
            self.pipeline.request_sync(lambda: (self._sync_engines(), self.learner_version)[1])

    def ensure_rollout_weights(self) -> None:
        """Every rollout engine must hold the weights it was last given: an engine that came
        back from a restart holds the ones at model_path and is re-synced."""
        versions = self.workers.rollout.weight_versions()
        if any(version != self.engine_version for version in versions):
            self.logger.event("rollout/resync", f"engine weight versions {versions}, expected "
                              f"{self.engine_version} (an actor restarted): syncing weights again "
                              "before rolling out", step=self.step)
            self._sync_engines()

    def compute_advantages(self, rollouts: Rollouts) -> tuple[TrainBatch, dict[str, float]]:
        """Rewards -> advantages with the configured estimator (which groups the responses
        itself: by question, or RiskPO's bundles of consecutive questions)."""
        verdicts = rollouts.verdicts
        rewards, valid = verdicts.rewards.flatten(), verdicts.valid.flatten()
        question_ids = torch.arange(len(verdicts)).repeat_interleave(verdicts.rewards.shape[1])
        result = self.estimator(rewards, question_ids, None, self.run.algorithm.options,
                                self.advantage_state, valid)
        samples = [s for per_prompt in rollouts.completions for s in per_prompt]
        # image rows: every sample of a prompt shares the prompt's list of encoded images
        row_images = [list(row.images) for row in rollouts.rows]
        images = [row_images[p] for p, per_prompt in enumerate(rollouts.completions)
                  for _ in per_prompt] if any(row_images) else None
        batch = TrainBatch(
            prompt_ids=[s.prompt_token_ids for s in samples],
            response_ids=[s.token_ids for s in samples],
            rollout_logprobs=[s.logprobs for s in samples],
            advantages=result.advantages.float(),
            loss_mask=valid & torch.tensor([len(s.token_ids) > 0 for s in samples]),
            loss_weights=result.loss_weights, images=images)
        return batch, result.metrics

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

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> dict[str, float]:
        start = time.perf_counter()
        metrics = evaluate(self.workers.rollout, self.workers.verifiers, self.eval_rows,
                           self.run.data, self.run.rollout, seed=self.run.seed + 12345)
        metrics["time/eval"] = time.perf_counter() - start
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """A complete checkpoint of the learner and the driver's state (riskpo/run/checkpoints.py
        checks the space first and removes a save cut short)."""
        extra = {
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "advantage_state": self.advantage_state.state_dict(),
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                    "torch": torch.get_rng_state()},
            "initial_eval": self.initial_eval,
            "wandb_run_id": self.logger.wandb_run_id,
            "wall_s": self.wall_s,
        }
        if self.pipeline is not None:  # the batches made ahead are trained on after a resume
            extra["pipeline"] = {"depth": self.pipeline.depth, "batches": self.pipeline.drain(),
                                 "generated": self.pipeline.generated}
        return write_checkpoint(self.run_dir, self.workers.learner, extra,
                                self.run.trainer.keep_checkpoints, self.checkpoint_bytes)

    def load_checkpoint(self, path: Path) -> None:
        """Restores learner, optimizer, sampler, RNG, quantile tracker, the run's wall time and
        the batches made ahead, then pushes the restored weights to the rollout engines."""
        extra = self.workers.learner.load(str(path))
        pipelined = extra.get("pipeline") or {"depth": 0}
        if pipelined["depth"] != self.run.trainer.off_policy_steps:
            raise ValueError(f"{path} was saved with trainer.off_policy_steps={pipelined['depth']}, "
                             f"this run has {self.run.trainer.off_policy_steps}: resume with "
                             f"trainer.off_policy_steps={pipelined['depth']}")
        self.step = self.learner_version = int(extra["step"])
        if pipelined["depth"]:
            self._restored_batches = (pipelined["batches"], pipelined["generated"])
            if len(pipelined["batches"]) < pipelined["depth"] and self.step < self.run.trainer.total_steps:
                self.logger.event("pipeline/restart", f"the checkpoint holds "
                                  f"{len(pipelined['batches'])} of the {pipelined['depth']} batches "
                                  "made ahead (its run ended there): the next ones come from the "
                                  "restored weights, fresher than an uninterrupted run's",
                                  step=self.step)
        self.sampler.load_state_dict(extra["sampler"])
        self.advantage_state.load_state_dict(extra["advantage_state"])
        random.setstate(extra["rng"]["python"])
        np.random.set_state(extra["rng"]["numpy"])
        torch.set_rng_state(extra["rng"]["torch"])
        self.initial_eval = dict(extra.get("initial_eval") or {})
        self.wall_s_before = float(extra.get("wall_s", 0.0))
        self._sync_engines()


def _format_eval(metrics: dict[str, float]) -> str:
    shown = [f"{key[5:]} {value:.3f}" for key, value in metrics.items()
             if key.startswith("eval/") and isinstance(value, float) and math.isfinite(value)
             and ("avg@" in key or "pass@" in key or "greedy" in key)]
    return ", ".join(shown)
