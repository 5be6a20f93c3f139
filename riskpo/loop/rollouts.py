"""A training step's batch of rollouts: sample prompts, roll them out, verify the responses
(with DAPO's dynamic sampling when it is on). The loop makes batches with a RolloutCollector,
in its own thread (InlineRollouts here, trainer.off_policy_steps = 0) or ahead of it
(PipelinedRollouts, riskpo/loop/pipeline.py): one RolloutSource interface, chosen at start-up.
Either way a batch is a value: what it needs from the loop (the step, the weights the engines
should hold) comes in as arguments, and what it has to say (metrics, phase times, events, the
rows it drew) goes out in the RolloutBatch, for the loop to log on the step that trains on it.

Every completion carries the version of the weights that sampled it (stamped by the rollout
actor). A completion from other weights than the engines should hold (an engine that restarted
under the generation comes back with the weights at model_path) is never trained on: its
prompt is rolled out again after the engines are synced once more.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from riskpo.algo.config import AlgorithmConfig
from riskpo.algo.metrics import reward_statistics
from riskpo.batch import TrainBatch, Verdicts
from riskpo.data.loaders import DataConfig
from riskpo.data.rows import Row
from riskpo.data.sampler import PromptSampler
from riskpo.loop.contracts import Learner, WeightSync
from riskpo.loop.evaluation import grade, prompts_of
from riskpo.messages import Completion, SamplingConfig

MAX_REGENERATIONS = 2  # rounds of rolling out again the prompts sampled by the wrong weights
# rollout/* figures of a generate call that add up over a step's calls (the rest are running
# totals: the latest call's); rollout/tokens_per_s is recomputed from the sums
ADDED_FIGURES = ("rollout/seconds", "rollout/response_tokens", "rollout/actor_failures",
                 "rollout/resubmitted_chunks")


class Generator(Protocol):
    def generate(self, prompts: Sequence[Any], params: Any) -> list[list[Completion]]: ...
    def metrics(self) -> dict[str, float]: ...


class Grader(Protocol):
    def verify_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


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
            self.add(phase, time.perf_counter() - start)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds


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

    def samples(self) -> list[Completion]:
        return [sample for per_prompt in self.completions for sample in per_prompt]

    def train_batch(self, advantages: torch.Tensor, loss_weights: torch.Tensor | None) -> TrainBatch:
        """The learner's batch of these samples with their advantages [samples] (and the
        estimator's per-response loss weights); samples without a verdict or without tokens
        are masked out of the loss."""
        samples = self.samples()
        # image rows: every sample of a prompt shares the prompt's list of encoded images
        row_images = [list(row.images) for row in self.rows]
        images = [row_images[p] for p, per_prompt in enumerate(self.completions)
                  for _ in per_prompt] if any(row_images) else None
        return TrainBatch(
            prompt_ids=[s.prompt_token_ids for s in samples],
            response_ids=[s.token_ids for s in samples],
            rollout_logprobs=[s.logprobs for s in samples],
            advantages=advantages,
            loss_mask=self.verdicts.valid.flatten() & torch.tensor([len(s.token_ids) > 0 for s in samples]),
            loss_weights=loss_weights, images=images)


@dataclass
class RolloutBatch:
    """What one step trains on, and what making it has to say."""

    step: int  # the training step it is for
    rollouts: Rollouts
    metrics: dict[str, float]  # train/*, verify/*, dynamic/*, rollout/* of its generation
    seconds: dict[str, float]  # sample, generate, verify
    epoch: int  # of the step's first prompt
    dropped: list[int]  # rows drawn but not kept (dynamic sampling)
    events: list[tuple[str, str]] = field(default_factory=list)  # (kind, message)


def staleness(rollouts: Rollouts, trained_version: int) -> dict[str, float]:
    """How many updates older than the learner's weights the samples' weights are (a sample
    from the weights at model_path counts as version 0)."""
    ages = [trained_version - (sample.weight_version or 0) for sample in rollouts.samples()]
    if not ages:
        return {}
    return {"rollout/staleness_mean": sum(ages) / len(ages), "rollout/staleness_max": float(max(ages))}


class GenerationFigures:
    """The rollout/* figures of every generate call a step made (refill rounds and the
    regenerations after a resync included): counts and seconds add up, tokens_per_s is
    recomputed from them, running totals are the latest call's."""

    def __init__(self) -> None:
        self.figures: dict[str, float] = {}

    def add(self, call: dict[str, float]) -> None:
        for key, value in call.items():
            self.figures[key] = self.figures.get(key, 0.0) + value if key in ADDED_FIGURES else value
        if "rollout/response_tokens" in self.figures and "rollout/seconds" in self.figures:
            tokens, seconds = self.figures["rollout/response_tokens"], self.figures["rollout/seconds"]
            self.figures["rollout/tokens_per_s"] = tokens / seconds if seconds > 0 else 0.0


class RolloutCollector:
    """Makes each step's RolloutBatch. weights.version is the version the engines should hold
    (None: never synced, the weights at model_path); the resync collect() is given syncs the
    learner's current weights (and moves weights.version) when a completion shows otherwise."""

    def __init__(self, algorithm: AlgorithmConfig, data: DataConfig, sampling: SamplingConfig,
                 seed: int, samples: int, sampler: PromptSampler, rollout: Generator,
                 verifiers: Grader, weights: WeightSync) -> None:
        self.algorithm, self.data, self.sampling = algorithm, data, sampling
        self.seed, self.samples, self.sampler = seed, samples, sampler
        self.rollout, self.verifiers, self.weights = rollout, verifiers, weights
        self.group_size = algorithm.prompts_per_group()

    def collect(self, step: int, resync: Callable[[], None]) -> RolloutBatch:
        """Samples prompts, rolls them out and verifies the responses. With dynamic sampling
        (DAPO), prompts whose valid rewards are all equal are dropped and refilled, and the
        kept prompts are cut to whole estimator groups, for up to max_refill_rounds rounds."""
        dynamic = self.algorithm.dynamic_sampling
        timer, events, figures = PhaseTimer(), [], GenerationFigures()
        wanted = self.sampler.prompts_per_step
        kept, dropped, rounds = Rollouts.empty(self.samples), 0, 0
        sampled: list[int] = []  # every row index drawn this step (refills included)
        epoch: int | None = None  # of the step's first prompt
        while True:
            with timer("sample"):
                prompts = self.sampler.next_batch()
            sampled.extend(prompts.row_indices)
            epoch = prompts.epoch if epoch is None else epoch
            fresh = self._roll_out(step, prompts.rows, prompts.row_indices, timer,
                                   _Collection(events, figures, resync))
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
                    f"step {step}: dynamic sampling kept no prompt with a reward signal after "
                    f"{rounds} refill rounds -> raise algorithm.dynamic_sampling.max_refill_rounds "
                    "or turn dynamic sampling off")
        used = set(kept.row_indices)
        metrics = {**rollout_metrics(kept), **figures.figures}
        if dynamic.enabled:
            metrics.update({"dynamic/dropped_prompts": float(dropped),
                            "dynamic/refill_rounds": float(rounds),
                            "dynamic/kept_prompts": float(len(kept.rows))})
        return RolloutBatch(step, kept, metrics, timer.seconds, epoch or 0,
                            [i for i in sampled if i not in used], events)

    def step_seed(self, step: int, salt: int = 0) -> int:
        return (self.seed * 1_000_003 + step * 7919 + salt) % (2**31 - 1)

    def _roll_out(self, step: int, rows: list[Row], row_indices: list[int], timer: PhaseTimer,
                  collection: _Collection) -> Rollouts:
        params = self.sampling.params(
            self.samples, self.step_seed(step, salt=row_indices[0] if row_indices else 0))
        with timer("generate"):
            completions = self._generate(rows, params, collection)
        with timer("verify"):
            verdicts = grade(self.verifiers, rows, completions)
        return Rollouts(list(rows), completions, verdicts, list(row_indices))

    def _generate(self, rows: list[Row], params: Any, collection: _Collection) -> list[list[Completion]]:
        """The completions of rows, every one sampled by the weights the engines should hold."""
        completions = self._call_engines(rows, params, collection)
        for _ in range(MAX_REGENERATIONS):
            expected = self.weights.version
            stale = [i for i, samples in enumerate(completions)
                     if any(sample.weight_version != expected for sample in samples)]
            if not stale:
                return completions
            versions = sorted({str(s.weight_version) for i in stale for s in completions[i]})
            collection.events.append(("rollout/resync", f"{len(stale)} prompts were sampled by weight "
                                  f"version(s) {', '.join(versions)}, not {expected} (an engine "
                                  "restarted under the generation): syncing the engines and rolling "
                                  "them out again"))
            collection.resync()
            again = self._call_engines([rows[i] for i in stale], params, collection)
            for i, samples in zip(stale, again, strict=True):
                completions[i] = samples
        expected = self.weights.version
        if any(sample.weight_version != expected for samples in completions for sample in samples):
            raise RuntimeError(f"rollout engines keep sampling with other weights than version "
                               f"{expected} after {MAX_REGENERATIONS} syncs")
        return completions

    def _call_engines(self, rows: list[Row], params: Any, collection: _Collection) -> list[list[Completion]]:
        completions = self.rollout.generate(prompts_of(rows, self.data), params)
        collection.figures.add(self.rollout.metrics())
        return completions


@dataclass
class _Collection:
    """One collect() in progress: its events, the figures of its generate calls, and the resync
    it may ask for."""

    events: list[tuple[str, str]]
    figures: GenerationFigures
    resync: Callable[[], None]


def rollout_metrics(rollouts: Rollouts) -> dict[str, float]:
    """train/* (rewards, accuracy, lengths, truncation) and verify/status_* of a batch."""
    verdicts = rollouts.verdicts
    rewards, valid = verdicts.rewards.flatten(), verdicts.valid.flatten()
    samples = rollouts.samples()
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


# ----------------------------------------------------------------------------- rollout modes


class RolloutSource(Protocol):
    """How a step gets its rollouts and the engines their new weights, chosen at start-up:
    InlineRollouts (made when the step starts) or PipelinedRollouts (made ahead, pipeline.py)."""

    waits_on: tuple[str, ...]  # phases in which the loop's thread waits for rollouts or a sync

    def batch_for(self, step: int, timer: PhaseTimer) -> RolloutBatch:
        """The batch training step `step` trains on."""
        ...

    def after_update(self, version: int, timer: PhaseTimer) -> dict[str, float]:
        """The engines take the learner's new weights (version `version`); sync/* metrics."""
        ...

    def state(self) -> dict[str, Any] | None:
        """What a checkpoint keeps of it (the batches made ahead), None when nothing."""
        ...

    def restore(self, saved: dict[str, Any] | None, step: int, source: Path) -> None:
        """Takes back what a checkpoint (at `source`, of step `step`) kept."""
        ...

    def close(self) -> None: ...


def pipeline_depth_mismatch(source: Path, saved: int, wanted: int) -> ValueError:
    """A checkpoint made ahead with another trainer.off_policy_steps cannot continue this run."""
    return ValueError(f"{source} was saved with trainer.off_policy_steps={saved}, this run has "
                      f"{wanted}: resume with trainer.off_policy_steps={saved}")


class InlineRollouts:
    """trainer.off_policy_steps = 0: a step's rollouts are made when it starts, by the weights
    of the step before (an engine that restarted is synced again first), and the engines take
    the new weights right after the update."""

    waits_on = ("generate", "verify", "sync")

    def __init__(self, collector: RolloutCollector, weights: WeightSync, learner: Learner,
                 note: Callable[[str, str], None]) -> None:
        """note(kind, message): an event on the current step."""
        self.collector, self.weights, self.learner, self.note = collector, weights, learner, note

    def batch_for(self, step: int, timer: PhaseTimer) -> RolloutBatch:
        with timer("sync"):
            lagging = self.weights.lagging_engines()
            if lagging:
                self.note("rollout/resync", f"engines {list(lagging)} hold weight versions "
                          f"{list(lagging.values())}, expected {self.weights.version} (an actor "
                          "restarted): syncing weights again before rolling out")
                self.resync()
        return self.collector.collect(step, self.resync)

    def after_update(self, version: int, timer: PhaseTimer) -> dict[str, float]:
        with timer("sync"):
            return self.weights.sync(version)

    def resync(self) -> None:
        """The learner's current weights to every engine."""
        self.weights.sync(self.learner.weight_version)

    def state(self) -> dict[str, Any] | None:
        return None

    def restore(self, saved: dict[str, Any] | None, step: int, source: Path) -> None:
        if saved is not None:
            raise pipeline_depth_mismatch(source, saved["depth"], 0)

    def close(self) -> None:
        pass
