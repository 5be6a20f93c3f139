"""The single-controller training loop. A step is a short sequence of named phases, each a
call into a worker group; no phase knows which engine, transport or estimator is behind it:

    sample prompts -> roll out -> verify -> advantages (+ quantile tracker) -> log-probs ->
    learn -> sync weights -> log; every K steps evaluate and checkpoint.

After each step the learner's updates are checked (riskpo/stops.py): a run whose loss or
gradient norm stays non-finite stops, and a model whose last update was not finite is never
checkpointed. Checkpoints are complete or absent (riskpo/checkpoints.py).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from riskpo.advantages import AdvantageState, get_advantage_estimator
from riskpo.algorithm import AlgorithmConfig
from riskpo.batch import TrainBatch, Verdicts
from riskpo.checkpoints import (
    COMPLETE_MARKER,
    HF_EXPORT_SUBDIR,
    checkpoint_meta,
    complete_checkpoints,
    last_complete_checkpoint,
    remove_checkpoints_after,
    write_checkpoint,
)
from riskpo.data.loaders import DataConfig
from riskpo.data.rows import Row
from riskpo.data.sampler import PromptSampler
from riskpo.evaluation import evaluate, grade, prompts_of
from riskpo.logging import RunLogger
from riskpo.messages import Completion, SamplingConfig
from riskpo.metrics import reward_statistics
from riskpo.options import require
from riskpo.stops import (
    NonFiniteTraining,
    UpdateHealth,
    checkpoint_note,
    error_line,
    mentions_non_finite,
)

__all__ = ["COMPLETE_MARKER", "HF_EXPORT_SUBDIR", "Trainer", "TrainerConfig", "checkpoint_meta",
           "complete_checkpoints"]
PHASES = ("generate", "verify", "logprobs", "train", "sync")  # the worker groups' share of a step


@dataclass
class TrainerConfig:
    """The loop's shape: how long, how many prompts and samples a step, when to evaluate and
    save."""

    total_steps: int = 60
    prompts_per_step: int = 10  # P: a multiple of algorithm.bundle_size for riskpo
    samples_per_prompt: int = 8  # n: responses sampled per prompt
    eval_every: int = 20  # steps between evaluations; 0: only before and after training
    eval_before_training: bool = True
    save_every: int = 20  # steps between checkpoints; 0: only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept on disk; 0 keeps all
    # Optimizer updates in a row that were skipped or not finite (loss or gradient norm) before
    # the run stops with exit status 1; 0: never stop (each new streak is still an event).
    max_skipped_updates: int = 3

    def check(self, key: str) -> None:
        for name in ("total_steps", "eval_every", "save_every", "keep_checkpoints",
                     "max_skipped_updates"):
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
    def weight_versions(self) -> list[int]: ...
    def metrics(self) -> dict[str, float]: ...
    def drain_events(self) -> list[dict[str, Any]]: ...


class VerifierWorkers(Protocol):
    def verify_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]: ...
    def drain_events(self) -> list[dict[str, Any]]: ...


class Learner(Protocol):
    def compute_logprobs(self, batch: TrainBatch) -> dict[str, float]: ...
    def train_step(self, batch: TrainBatch) -> dict[str, float]: ...
    def sync_weights(self, rollout: Any) -> dict[str, float]: ...
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


@dataclass
class Rollouts:
    """One step's sampled prompts with their completions and verdicts, in group order."""

    rows: list[Row]
    completions: list[list[Completion]]
    verdicts: Verdicts
    row_indices: list[int]  # each prompt's position in the training set

    @classmethod
    def empty(cls, samples: int) -> Rollouts:
        return cls([], [], Verdicts.empty(samples), [])

    def extend(self, other: Rollouts, keep: Sequence[int]) -> None:
        self.rows.extend(other.rows[i] for i in keep)
        self.completions.extend(other.completions[i] for i in keep)
        self.verdicts = Verdicts.concat([self.verdicts, other.verdicts.select(keep)])
        self.row_indices.extend(other.row_indices[i] for i in keep)

    def head(self, count: int) -> Rollouts:
        """The first `count` prompts."""
        return Rollouts(self.rows[:count], self.completions[:count],
                        self.verdicts.select(range(count)), self.row_indices[:count])


class PhaseTimer:
    """Wall-clock seconds per named phase of a step (time/<phase>)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


def prompts_per_step(algorithm: AlgorithmConfig, prompts: int) -> int:
    """The prompts a step really uses: with drop_last_bundle, whole estimator groups only."""
    size = algorithm.prompts_per_group()
    return prompts - prompts % size if algorithm.drop_last_bundle and size > 1 else prompts


def describe_step_shape(algorithm: AlgorithmConfig, trainer: TrainerConfig) -> str:
    """What a step really uses, in one line: prompts (and what happens to the ones that do not
    fill a last bundle), samples per prompt, responses."""
    asked, size, samples = trainer.prompts_per_step, algorithm.prompts_per_group(), trainer.samples_per_prompt
    used = prompts_per_step(algorithm, asked)
    groups = f" in bundles of {size}" if size > 1 else ""
    if used < asked:
        groups += (f"; algorithm.drop_last_bundle drops {asked - used} of the "
                   f"trainer.prompts_per_step={asked} prompts every step")
    elif size > 1 and asked % size:
        groups += (f", the last bundle ragged: {asked % size} prompts "
                   "(algorithm.ragged_last_bundle)")
    line = f"each step: {used} prompts{groups}; {samples} samples each = {used * samples} responses"
    if algorithm.dynamic_sampling.enabled:
        line += " (dynamic sampling refills prompts without a reward signal)"
    return line


class Trainer:
    def __init__(self, run: TrainingRun, workers: Workers, train_rows: Sequence[Row],
                 eval_rows: Sequence[Row], logger: RunLogger, run_dir: Path,
                 checkpoint_bytes: int = 0) -> None:
        """checkpoint_bytes: about what the first checkpoint takes (later ones: the last)."""
        self.run, self.workers, self.logger, self.run_dir = run, workers, logger, Path(run_dir)
        self.eval_rows = list(eval_rows)
        self.sampler = PromptSampler(
            train_rows, prompts_per_step(run.algorithm, run.trainer.prompts_per_step),
            shuffle=run.data.shuffle, seed=run.seed)
        self.estimator = get_advantage_estimator(run.algorithm.name)
        self.group_size = run.algorithm.prompts_per_group()
        self.advantage_state = AdvantageState(seed=run.seed)
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
        (riskpo/stops.py) when training stops being finite or the disk fills up."""
        t = self.run.trainer
        self._fit_started = time.perf_counter()
        if self.step == 0 and t.eval_before_training:
            self.initial_eval = self.evaluate()
            self.logger.console.print(f"[bold]before RL[/]: {_format_eval(self.initial_eval)}")
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
        final = last_eval or self.evaluate()
        self.logger.console.print(f"[bold]after RL[/]: {_format_eval(final)}")
        wall_s = self.wall_s
        self.logger.write_summary(self.initial_eval, final, self.step, wall_s,
                                  algorithm=self.run.algorithm.name, seed=self.run.seed)
        return {"initial": self.initial_eval, "final": final, "steps": self.step, "wall_s": wall_s}

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
        timer = PhaseTimer()
        step_start = time.perf_counter()
        learner = self.workers.learner
        with timer("sync"):
            self.ensure_rollout_weights()
        rollouts, rollout_metrics = self.collect_rollouts(timer)
        with timer("advantage"):
            batch, advantage_metrics = self.compute_advantages(rollouts)
        with timer("logprobs"):
            learner_metrics = learner.compute_logprobs(batch)
        with timer("train"):
            learner_metrics.update(learner.train_step(batch))
        with timer("sync"):
            sync_metrics = learner.sync_weights(self.workers.rollout)
        metrics: dict[str, float] = {"step": self.step, **rollout_metrics, **advantage_metrics,
                                     **self.workers.rollout.metrics()}
        metrics.update({f"actor/{key}": value for key, value in learner_metrics.items()})
        metrics.update(sync_metrics)
        metrics.update({f"time/{phase}": seconds for phase, seconds in timer.seconds.items()})
        metrics["time/step"] = time.perf_counter() - step_start
        phases = sum(timer.seconds.get(p, 0.0) for p in PHASES)
        metrics["time/orchestration_fraction"] = 1.0 - phases / metrics["time/step"]
        metrics.update(self._worker_events())
        if metrics["train/masked_samples"]:
            self.logger.event("verifier/masked", f"{metrics['train/masked_samples']:.0f} samples had "
                              "no verdict (infrastructure failure) and were masked out of the loss",
                              step=self.step)
        return metrics

    # ------------------------------------------------------------------ phases

    def collect_rollouts(self, timer: PhaseTimer) -> tuple[Rollouts, dict[str, float]]:
        """Samples prompts, rolls them out and verifies the responses. With dynamic sampling
        (DAPO), prompts whose valid rewards are all equal are dropped and refilled, and the
        kept prompts are cut to whole estimator groups, for up to max_refill_rounds rounds."""
        dynamic = self.run.algorithm.dynamic_sampling
        wanted = self.sampler.prompts_per_step
        kept, dropped, rounds = Rollouts.empty(self.samples), 0, 0
        sampled: list[int] = []  # every row index drawn this step (refills included)
        epoch: int | None = None  # of the step's first prompt
        while True:
            with timer("sample"):
                prompts = self.sampler.next_batch()
            sampled.extend(prompts.row_indices)
            epoch = prompts.epoch if epoch is None else epoch
            fresh = self._roll_out(prompts.rows, prompts.row_indices, timer)
            keep = list(range(len(prompts)))
            if dynamic.enabled:
                keep = fresh.verdicts.has_signal().nonzero().flatten().tolist()
                dropped += len(prompts) - len(keep)
            kept.extend(fresh, keep[: wanted - len(kept.rows)])
            if not dynamic.enabled or len(kept.rows) >= wanted or rounds >= dynamic.max_refill_rounds:
                break
            rounds += 1
        if dynamic.enabled:
            kept = kept.head(len(kept.rows) - len(kept.rows) % self.group_size)
            if not kept.rows:
                raise RuntimeError(
                    f"step {self.step}: dynamic sampling kept no prompt with a reward signal after "
                    f"{rounds} refill rounds -> raise algorithm.dynamic_sampling.max_refill_rounds "
                    "or turn dynamic sampling off")
        used = set(kept.row_indices)
        self.logger.log_prompts(self.step, epoch or 0, kept.row_indices,
                                [i for i in sampled if i not in used])
        metrics = self._rollout_metrics(kept)
        if dynamic.enabled:
            metrics.update({"dynamic/dropped_prompts": float(dropped),
                            "dynamic/refill_rounds": float(rounds),
                            "dynamic/kept_prompts": float(len(kept.rows))})
        return kept, metrics

    @property
    def samples(self) -> int:
        return self.run.trainer.samples_per_prompt

    def _roll_out(self, rows: list[Row], row_indices: list[int], timer: PhaseTimer) -> Rollouts:
        params = self.run.rollout.params(
            self.samples, self._step_seed(salt=row_indices[0] if row_indices else 0))
        with timer("generate"):
            completions = self.workers.rollout.generate(prompts_of(rows, self.run.data), params)
        with timer("verify"):
            verdicts = grade(self.workers.verifiers, rows, completions)
        return Rollouts(list(rows), completions, verdicts, list(row_indices))

    def ensure_rollout_weights(self) -> None:
        """Every rollout engine must hold the learner's current weights: an engine that came
        back from a restart holds the initial ones (a lower version) and is re-synced."""
        versions = self.workers.rollout.weight_versions()
        expected = self.workers.learner.weight_version
        if any(version != expected for version in versions):
            self.logger.event("rollout/resync", f"engine weight versions {versions}, learner's "
                              f"{expected} (an actor restarted): syncing weights again before "
                              "rolling out", step=self.step)
            self.workers.learner.sync_weights(self.workers.rollout)

    def compute_advantages(self, rollouts: Rollouts) -> tuple[TrainBatch, dict[str, float]]:
        """Rewards -> advantages with the configured estimator (which groups the responses
        itself: by question, or RiskPO's bundles of consecutive questions)."""
        verdicts = rollouts.verdicts
        rewards, valid = verdicts.rewards.flatten(), verdicts.valid.flatten()
        question_ids = torch.arange(len(verdicts)).repeat_interleave(verdicts.rewards.shape[1])
        result = self.estimator(rewards, question_ids, None, self.run.algorithm,
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

    def _rollout_metrics(self, rollouts: Rollouts) -> dict[str, float]:
        verdicts = rollouts.verdicts
        rewards, valid = verdicts.rewards.flatten(), verdicts.valid.flatten()
        samples = [s for per_prompt in rollouts.completions for s in per_prompt]
        stats = reward_statistics(rewards, valid)
        metrics = {f"train/{key.replace('/', '_')}": value for key, value in stats.items()}
        metrics["train/accuracy"] = float(((rewards >= 1.0) & valid).sum()) / max(1, int(valid.sum()))
        metrics["train/masked_samples"] = float((~valid).sum())
        metrics["train/prompts"] = float(len(rollouts.rows))
        metrics["train/samples"] = float(len(samples))
        metrics["train/response_length"] = sum(len(s.token_ids) for s in samples) / max(1, len(samples))
        metrics["train/truncated_fraction"] = sum(
            s.finish_reason == "length" for s in samples) / max(1, len(samples))
        statuses: dict[str, int] = {}
        for per_prompt in verdicts.statuses:
            for status in per_prompt:
                statuses[status] = statuses.get(status, 0) + 1
        metrics.update({f"verify/status_{k}": float(v) for k, v in statuses.items()})
        return metrics

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

    def _step_seed(self, salt: int = 0) -> int:
        return (self.run.seed * 1_000_003 + self.step * 7919 + salt) % (2**31 - 1)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> dict[str, float]:
        start = time.perf_counter()
        metrics = evaluate(self.workers.rollout, self.workers.verifiers, self.eval_rows,
                           self.run.data, self.run.rollout, seed=self.run.seed + 12345)
        metrics["time/eval"] = time.perf_counter() - start
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """A complete checkpoint of the learner and the driver's state (riskpo/checkpoints.py
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
        return write_checkpoint(self.run_dir, self.workers.learner, extra,
                                self.run.trainer.keep_checkpoints, self.checkpoint_bytes)

    def load_checkpoint(self, path: Path) -> None:
        """Restores learner, optimizer, sampler, RNG, quantile tracker and the run's wall time,
        then pushes the restored weights to the rollout engines."""
        extra = self.workers.learner.load(str(path))
        self.step = int(extra["step"])
        self.sampler.load_state_dict(extra["sampler"])
        self.advantage_state.load_state_dict(extra["advantage_state"])
        random.setstate(extra["rng"]["python"])
        np.random.set_state(extra["rng"]["numpy"])
        torch.set_rng_state(extra["rng"]["torch"])
        self.initial_eval = dict(extra.get("initial_eval") or {})
        self.wall_s_before = float(extra.get("wall_s", 0.0))
        self.workers.learner.sync_weights(self.workers.rollout)


def _format_eval(metrics: dict[str, float]) -> str:
    shown = [f"{key[5:]} {value:.3f}" for key, value in metrics.items()
             if key.startswith("eval/") and isinstance(value, float) and math.isfinite(value)
             and ("avg@" in key or "pass@" in key or "greedy" in key)]
    return ", ".join(shown)
