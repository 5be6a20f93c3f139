"""The training loop in-process, with fake worker groups behind the Trainer's Protocols: no
Ray, no model, milliseconds a step. Pins what the Ray end-to-end tests cannot reach cheaply:
dynamic sampling, the evaluation and checkpoint cadence, and the bookkeeping a resume
restores (step, sampler position, quantile tracker, RNG, initial evaluation)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from launch.config import compose_config, validate
from riskpo.batch import TrainBatch
from riskpo.data.loaders import load_train_and_eval
from riskpo.logging import RunLogger, read_metrics
from riskpo.messages import Completion, SamplingParams
from riskpo.trainer import Trainer, Workers, checkpoint_meta, complete_checkpoints

QUIET = ["logger.backend=none", "logger.progress=none", "logger.plots=false",
         "model.warmstart.enabled=false", "data.train.size=200", "data.eval.size=6",
         "data.eval_samples=4", "trainer.samples_per_prompt=4"]


def _draw(*key: object) -> float:
    """A deterministic number in [0, 1) from a key (the fake policy's coin)."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class FakeRollout:
    """Answers "a+b=" right with a per-prompt skill: prompts ending in 0-2 are always right,
    3-5 always wrong, the rest right half of the time (so some groups carry no signal)."""

    def __init__(self) -> None:
        self.version, self.calls = 0, []

    def generate(self, prompts: list[Any], params: SamplingParams) -> list[list[Completion]]:
        self.calls.append((len(prompts), params))
        out = []
        for prompt in prompts:
            a, b = prompt.text.rstrip("=").split("+")
            truth, last = int(a) + int(b), int(b) % 10
            samples = []
            for j in range(params.n):
                right = last <= 2 or (last > 5 and _draw(prompt.text, j, params.seed) < 0.5)
                text = str(truth if right else truth + 1)
                samples.append(Completion([5] * len(text), [-0.5] * len(text), "stop", text, [1, 2]))
            out.append(samples)
        return out

    def weight_versions(self) -> list[int]:
        return [self.version]

    def metrics(self) -> dict[str, float]:
        return {"rollout/calls": float(len(self.calls))}

    def drain_events(self) -> list[dict[str, Any]]:
        return []


class FakeVerifiers:
    def verify_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"reward": float(r["response"] == r["ground_truth"]),
                 "status": "ok" if r["response"] == r["ground_truth"] else "wrong_answer"}
                for r in rows]

    def drain_events(self) -> list[dict[str, Any]]:
        return []


class FakeLearner:
    """Keeps the batches it was given; a checkpoint is the driver's `extra`, pickled."""

    def __init__(self, rollout: FakeRollout) -> None:
        self.rollout, self.batches, self.weight_version = rollout, [], 0

    def compute_logprobs(self, batch: TrainBatch) -> dict[str, float]:
        return {"rollout_learner_logprob_gap": 0.0}

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        self.batches.append(batch)
        return {"loss": float(batch.advantages.abs().mean()), "entropy": 0.5}

    def sync_weights(self, rollout: Any) -> dict[str, float]:
        self.weight_version += 1
        rollout.version = self.weight_version
        return {"sync/weight_version": float(self.weight_version)}

    def save(self, path: str, extra: dict[str, Any] | None = None) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        torch.save({"extra": extra, "version": self.weight_version}, Path(path) / "learner.pt")

    def load(self, path: str) -> dict[str, Any]:
        state = torch.load(Path(path) / "learner.pt", weights_only=False)
        self.weight_version = state["version"]
        return state["extra"]

    def export_hf(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)


def make_trainer(run_dir: Path, overrides: list[str]) -> tuple[Trainer, FakeLearner, RunLogger]:
    cfg = compose_config([*QUIET, *overrides, f"run_dir={run_dir}"])
    run = validate(cfg)
    train_rows, eval_rows = load_train_and_eval(run.data)
    rollout = FakeRollout()
    learner = FakeLearner(rollout)
    logger = RunLogger(run_dir, run.logger, {}, run.trainer.total_steps, "fake",
                       console=Console(stderr=True, quiet=True))
    trainer = Trainer(run, Workers(rollout, FakeVerifiers(), learner), train_rows, eval_rows,
                      logger, run_dir)
    return trainer, learner, logger


def fit(trainer: Trainer, logger: RunLogger) -> dict[str, Any]:
    try:
        return trainer.fit()
    finally:
        logger.close()


def test_dynamic_sampling_keeps_whole_bundles_of_prompts_with_a_signal(tmp_path):
    trainer, learner, logger = make_trainer(tmp_path, [
        "algorithm.dynamic_sampling.enabled=true", "algorithm.dynamic_sampling.max_refill_rounds=5",
        "trainer.prompts_per_step=10", "trainer.total_steps=3", "trainer.eval_before_training=false"])
    seen = []
    advantages = trainer.compute_advantages
    trainer.compute_advantages = lambda rollouts: (seen.append(rollouts), advantages(rollouts))[1]
    fit(trainer, logger)
    rows = read_metrics(tmp_path)
    for row, batch, rollouts in zip(rows, learner.batches, seen, strict=True):
        kept = row["dynamic/kept_prompts"]
        assert kept % 5 == 0 and 0 < kept <= 10  # whole bundles of 5
        assert row["dynamic/dropped_prompts"] > 0 and row["dynamic/refill_rounds"] >= 1
        assert len(batch) == kept * 4 == row["train/samples"] == rollouts.verdicts.rewards.numel()
        assert bool(rollouts.verdicts.has_signal().all())  # right and wrong answers in each


def test_dynamic_sampling_that_finds_no_signal_says_what_to_change(tmp_path, monkeypatch):
    trainer, _, logger = make_trainer(tmp_path, [
        "algorithm.dynamic_sampling.enabled=true", "algorithm.dynamic_sampling.max_refill_rounds=1",
        "trainer.total_steps=1", "trainer.eval_before_training=false"])
    monkeypatch.setattr(FakeVerifiers, "verify_batch",
                        lambda self, rows: [{"reward": 0.0, "status": "wrong_answer"} for _ in rows])
    with pytest.raises(RuntimeError, match="max_refill_rounds"):
        fit(trainer, logger)


def test_evaluation_and_checkpoint_cadence(tmp_path):
    trainer, learner, logger = make_trainer(tmp_path, [
        "trainer.total_steps=5", "trainer.eval_every=2", "trainer.save_every=2",
        "trainer.keep_checkpoints=2"])
    summary = fit(trainer, logger)
    rows = read_metrics(tmp_path)
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]
    assert [row["step"] for row in rows if "eval/avg@4" in row] == [2, 4, 5]  # and the last
    assert "eval/avg@4" in summary["initial"] and summary["final"] == {
        k: v for k, v in rows[-1].items() if k.startswith("eval/") or k == "time/eval"}
    kept = [path.name for path in complete_checkpoints(tmp_path)]
    assert kept == ["step_000004", "step_000005"]  # step 2 pruned: keep_checkpoints=2
    assert checkpoint_meta(tmp_path / "checkpoints" / "step_000005")["step"] == 5
    assert learner.weight_version == 5


def test_resume_restores_the_loop_bookkeeping(tmp_path):
    straight, _, logger = make_trainer(tmp_path / "straight", ["trainer.total_steps=4",
                                                                "trainer.save_every=1"])
    fit(straight, logger)
    first, _, logger = make_trainer(tmp_path / "split", ["trainer.total_steps=2", "trainer.save_every=1"])
    fit(first, logger)
    resumed, learner, logger = make_trainer(tmp_path / "split", ["trainer.total_steps=4",
                                                                 "trainer.save_every=1"])
    resumed.load_checkpoint(complete_checkpoints(tmp_path / "split")[-1])
    assert resumed.step == 2
    # the restored weights (saved at version 2) are pushed to the engines once more
    assert learner.weight_version == 3 == learner.rollout.version
    assert resumed.initial_eval == first.initial_eval  # before-RL figures survive the resume
    tracker = resumed.advantage_state.quantile_tracker
    assert torch.equal(tracker.values, first.advantage_state.quantile_tracker.values)
    assert resumed.sampler.state_dict() == first.sampler.state_dict()
    fit(resumed, logger)
    by_step = {row["step"]: row for row in read_metrics(tmp_path / "straight")}
    for row in read_metrics(tmp_path / "split")[2:]:  # steps 3 and 4 as in the straight run
        for key in ("train/reward_mean", "adv/mean", "riskpo/tracked_q_alpha", "riskpo/tracked_q_beta"):
            assert row[key] == by_step[row["step"]][key], (row["step"], key)
    assert json.loads((tmp_path / "split" / "summary.json").read_text())["steps"] == 4
