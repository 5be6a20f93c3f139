"""The single-controller training loop. A step is a short sequence of named phases, each a
call into a worker group; no phase knows which engine, transport or estimator is behind it:

    sample prompts -> roll out -> verify -> advantages (+ quantile tracker) -> learn -> sync weights
    -> log; every K steps evaluate and checkpoint.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from riskpo.advantages import AdvantageConfig, AdvantageState, get_advantage_estimator
from riskpo.batch import TrainBatch
from riskpo.config import RunConfig
from riskpo.data.rows import Row
from riskpo.data.sampler import PromptBatch, PromptSampler
from riskpo.data.templates import build_prompt
from riskpo.evaluation import eval_settings, evaluate, grade
from riskpo.logging import RunLogger
from riskpo.messages import Completion, SamplingParams, is_masked
from riskpo.metrics import reward_statistics

CHECKPOINTS_SUBDIR = "checkpoints"
COMPLETE_MARKER = "COMPLETE"  # written last: a checkpoint without it was cut short
HF_EXPORT_SUBDIR = "hf"  # the policy as a HF directory, for riskpo-eval and vLLM
DRIVER_META = "driver_meta.json"  # step and wandb run id, readable without the learner


class Learner(Protocol):
    def train_step(self, batch: TrainBatch) -> dict[str, float]: ...
    def sync_weights(self, rollout: Any) -> dict[str, float]: ...
    def save(self, path: str, extra: dict[str, Any] | None = None) -> None: ...
    def load(self, path: str) -> dict[str, Any]: ...
    def export_hf(self, path: str) -> None: ...
    @property
    def weight_version(self) -> int: ...


@dataclass
class Workers:
    """The worker groups the loop calls; built by launch/train.py from the cluster config."""

    rollout: Any  # generate(prompts, params), weight_versions(), drain_events()
    verifiers: Any  # verify_batch(rows) -> one result per row, in order; drain_events()
    learner: Learner  # train_step, sync_weights, save, load


@dataclass
class Rollouts:
    """One step's sampled prompts with their completions and verifier results."""

    rows: list[Row] = field(default_factory=list)
    bundle_ids: list[int] = field(default_factory=list)
    completions: list[list[Completion]] = field(default_factory=list)
    results: list[list[dict[str, Any]]] = field(default_factory=list)

    def extend(self, other: Rollouts, keep: Sequence[int]) -> None:
        for i in keep:
            self.rows.append(other.rows[i])
            self.bundle_ids.append(other.bundle_ids[i])
            self.completions.append(other.completions[i])
            self.results.append(other.results[i])


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


def advantage_config(run: RunConfig) -> AdvantageConfig:
    a = run.algorithm
    return AdvantageConfig(
        alpha=a.alpha, beta=a.beta, w_mix=a.w_mix, natural_baseline=a.natural_baseline,
        mix_cvar=a.mix_cvar, risk_seeking=a.risk_seeking, risk_seeking_u=a.risk_seeking_u,
        std_normalize=a.std_normalize, credit=a.credit, pairing=a.pairing, seed=run.seed,
        quantile_source=a.quantile_source, tracker_lr=a.tracker_lr,
        tracker_update=a.tracker_update, allow_surplus=a.allow_surplus_responses)


class Trainer:
    def __init__(self, run: RunConfig, workers: Workers, train_rows: Sequence[Row],
                 eval_rows: Sequence[Row], logger: RunLogger, run_dir: Path) -> None:
        self.run, self.workers, self.logger, self.run_dir = run, workers, logger, Path(run_dir)
        self.eval_rows = list(eval_rows)
        uses_bundles = run.algorithm.name == "riskpo"
        self.sampler = PromptSampler(
            train_rows, run.trainer.prompts_per_step,
            bundle_size=run.algorithm.bundle_size if uses_bundles else 1,
            drop_last_bundle=uses_bundles and run.algorithm.drop_last_bundle,
            shuffle=run.data.shuffle, seed=run.seed)
        self.estimator = get_advantage_estimator(run.algorithm.name)
        self.advantage_config = advantage_config(run)
        self.advantage_state = AdvantageState()
        self.step = 0
        self.initial_eval: dict[str, float] = {}
        self.wall_s_before = 0.0  # wall time of the run before a resume

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict[str, Any]:
        """Trains for trainer.total_steps (from the resumed step), evaluating and saving on the
        configured steps; returns the summary written to summary.json."""
        t = self.run.trainer
        started = time.perf_counter()
        if self.step == 0 and t.eval_before_training:
            self.initial_eval = self.evaluate()
            self.logger.console.print(f"[bold]before RL[/]: {_format_eval(self.initial_eval)}")
        last_eval: dict[str, float] = {}
        while self.step < t.total_steps:
            self.step += 1
            metrics = self.train_step()
            last_eval = {}
            if t.eval_every and self.step % t.eval_every == 0 or self.step == t.total_steps:
                last_eval = self.evaluate()
                metrics.update(last_eval)
            self.logger.log_step(metrics)
            if t.save_every and self.step % t.save_every == 0 or self.step == t.total_steps:
                self.save_checkpoint()
        final = last_eval or self.evaluate()
        self.logger.console.print(f"[bold]after RL[/]: {_format_eval(final)}")
        wall_s = self.wall_s_before + time.perf_counter() - started
        self.logger.write_summary(self.initial_eval, final, self.step, wall_s,
                                  algorithm=self.run.algorithm.name, seed=self.run.seed)
        return {"initial": self.initial_eval, "final": final, "steps": self.step, "wall_s": wall_s}

    def train_step(self) -> dict[str, float]:
        timer = PhaseTimer()
        step_start = time.perf_counter()
        with timer("sync"):
            self.ensure_rollout_weights()
        rollouts, rollout_metrics = self.collect_rollouts(timer)
        with timer("advantage"):
            batch, advantage_metrics = self.compute_advantages(rollouts)
        with timer("train"):
            learner_metrics = self.workers.learner.train_step(batch)
        with timer("sync"):
            sync_metrics = self.workers.learner.sync_weights(self.workers.rollout)
        metrics: dict[str, float] = {"step": self.step, **rollout_metrics, **advantage_metrics,
                                     **self.workers.rollout.metrics()}
        metrics.update({f"actor/{key}": value for key, value in learner_metrics.items()})
        metrics.update(sync_metrics)
        metrics.update({f"time/{phase}": seconds for phase, seconds in timer.seconds.items()})
        metrics["time/step"] = time.perf_counter() - step_start
        phases = sum(timer.seconds.get(p, 0.0) for p in ("generate", "verify", "train", "sync"))
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
        (DAPO), prompts whose valid rewards are all equal are dropped and refilled, whole
        bundles at a time, for up to max_refill_rounds extra rounds."""
        dynamic = self.run.algorithm.dynamic_sampling
        wanted = self.sampler.prompts_per_step
        kept, dropped, rounds = Rollouts(), 0, 0
        while True:
            with timer("sample"):
                prompts = self.sampler.next_batch()
            fresh = self._roll_out(prompts, timer)
            keep = list(range(len(prompts)))
            if dynamic.enabled:
                keep = [i for i in keep if _has_signal(fresh.results[i])]
                dropped += len(prompts) - len(keep)
            kept.extend(fresh, keep[: wanted - len(kept.rows)])
            if not dynamic.enabled or len(kept.rows) >= wanted or rounds >= dynamic.max_refill_rounds:
                break
            rounds += 1
        if dynamic.enabled:
            kept = self._whole_bundles(kept)
            if not kept.rows:
                raise RuntimeError(
                    f"step {self.step}: dynamic sampling kept no prompt with a reward signal after "
                    f"{rounds} refill rounds -> raise algorithm.dynamic_sampling.max_refill_rounds "
                    "or turn dynamic sampling off")
        metrics = self._rollout_metrics(kept)
        if dynamic.enabled:
            metrics.update({"dynamic/dropped_prompts": float(dropped),
                            "dynamic/refill_rounds": float(rounds),
                            "dynamic/kept_prompts": float(len(kept.rows))})
        return kept, metrics

    def _roll_out(self, prompts: PromptBatch, timer: PhaseTimer) -> Rollouts:
        d, r = self.run.data, self.run.rollout
        engine_prompts = [build_prompt(row, d.template, d.system_prompt, d.instruction)
                          for row in prompts.rows]
        params = SamplingParams(
            n=self.run.trainer.samples_per_prompt, temperature=r.temperature, top_p=r.top_p,
            top_k=r.top_k, max_new_tokens=r.max_new_tokens, stop=list(r.stop),
            seed=self._step_seed(salt=prompts.row_indices[0] if prompts.row_indices else 0))
        with timer("generate"):
            completions = self.workers.rollout.generate(engine_prompts, params)
        with timer("verify"):
            results = grade(self.workers.verifiers, prompts.rows, completions)
        return Rollouts(prompts.rows, list(prompts.bundle_ids), completions, results)

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

    def _whole_bundles(self, rollouts: Rollouts) -> Rollouts:
        """Renumbers bundles of the kept prompts: consecutive groups of bundle_size."""
        size = self.sampler.bundle_size
        usable = len(rollouts.rows) - len(rollouts.rows) % size if size > 1 else len(rollouts.rows)
        trimmed = Rollouts()
        trimmed.extend(rollouts, range(usable))
        trimmed.bundle_ids = [i // size for i in range(usable)]
        return trimmed

    def compute_advantages(self, rollouts: Rollouts) -> tuple[TrainBatch, dict[str, float]]:
        """Rewards -> advantages with the configured estimator (and its quantile tracker)."""
        rewards, valid, question_ids, bundle_ids = [], [], [], []
        for question, (results, bundle) in enumerate(
                zip(rollouts.results, rollouts.bundle_ids, strict=True)):
            for result in results:
                masked = is_masked(result)
                rewards.append(0.0 if masked else float(result["reward"]))
                valid.append(not masked)
                question_ids.append(question)
                bundle_ids.append(bundle)
        rewards_t = torch.tensor(rewards, dtype=torch.float32)
        valid_t = torch.tensor(valid, dtype=torch.bool)
        question_t = torch.tensor(question_ids, dtype=torch.long)
        bundle_t = torch.tensor(bundle_ids, dtype=torch.long)
        if self.run.algorithm.name != "riskpo":
            bundle_t = question_t  # bundles mean nothing to the group baselines
        result = self.estimator(rewards_t, question_t, bundle_t, self.advantage_config,
                                self.advantage_state, valid_t)
        samples = [s for per_prompt in rollouts.completions for s in per_prompt]
        batch = TrainBatch(
            prompt_ids=[s.prompt_token_ids for s in samples],
            response_ids=[s.token_ids for s in samples],
            rollout_logprobs=[s.logprobs for s in samples],
            advantages=result.advantages.float(),
            loss_mask=valid_t & torch.tensor([len(s.token_ids) > 0 for s in samples]))
        return batch, result.metrics

    def _rollout_metrics(self, rollouts: Rollouts) -> dict[str, float]:
        flat = [r for per_prompt in rollouts.results for r in per_prompt]
        samples = [s for per_prompt in rollouts.completions for s in per_prompt]
        valid = torch.tensor([not is_masked(r) for r in flat], dtype=torch.bool)
        rewards = torch.tensor([float(r["reward"]) if v else 0.0 for r, v in zip(flat, valid.tolist(), strict=True)])
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
        for r in flat:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
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
        settings = eval_settings(self.run, seed=self.run.seed + 12345)
        start = time.perf_counter()
        metrics = evaluate(self.workers.rollout, self.workers.verifiers, self.eval_rows, settings)
        metrics["time/eval"] = time.perf_counter() - start
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        path = self.run_dir / CHECKPOINTS_SUBDIR / f"step_{self.step:06d}"
        extra = {
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "advantage_state": self.advantage_state.state_dict(),
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                    "torch": torch.get_rng_state()},
            "initial_eval": self.initial_eval,
            "wandb_run_id": self.logger.wandb_run_id,
        }
        self.workers.learner.save(str(path), extra)
        self.workers.learner.export_hf(str(path / HF_EXPORT_SUBDIR))
        meta = {"step": self.step, "wandb_run_id": self.logger.wandb_run_id}
        (path / DRIVER_META).write_text(json.dumps(meta))
        (path / COMPLETE_MARKER).write_text(str(self.step))
        self._prune_checkpoints()
        return path

    def load_checkpoint(self, path: Path) -> None:
        """Restores learner, optimizer, sampler, RNG and quantile tracker, then pushes the
        restored weights to the rollout engines."""
        extra = self.workers.learner.load(str(path))
        self.step = int(extra["step"])
        self.sampler.load_state_dict(extra["sampler"])
        self.advantage_state.load_state_dict(extra["advantage_state"])
        random.setstate(extra["rng"]["python"])
        np.random.set_state(extra["rng"]["numpy"])
        torch.set_rng_state(extra["rng"]["torch"])
        self.initial_eval = dict(extra.get("initial_eval") or {})
        self.workers.learner.sync_weights(self.workers.rollout)

    def _prune_checkpoints(self) -> None:
        keep = self.run.trainer.keep_checkpoints
        if keep:
            for old in complete_checkpoints(self.run_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints of a run directory, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_SUBDIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / COMPLETE_MARKER).is_file())


def checkpoint_meta(path: Path) -> dict[str, Any]:
    """Step and wandb run id of a checkpoint, readable before any worker starts."""
    return json.loads((Path(path) / DRIVER_META).read_text())


def _has_signal(results: Sequence[dict[str, Any]]) -> bool:
    rewards = {float(r["reward"]) for r in results if not is_masked(r)}
    return len(rewards) > 1


def _format_eval(metrics: dict[str, float]) -> str:
    shown = [f"{key[5:]} {value:.3f}" for key, value in metrics.items()
             if key.startswith("eval/") and isinstance(value, float) and math.isfinite(value)
             and ("avg@" in key or "pass@" in key or "greedy" in key)]
    return ", ".join(shown)
