"""The training loop in-process, with fake worker groups behind the Trainer's Protocols: no
Ray, no model, milliseconds a step. Pins what the Ray end-to-end tests cannot reach cheaply:
dynamic sampling, the evaluation and checkpoint cadence, the bookkeeping a resume restores
(step, sampler position, quantile tracker, RNG, initial evaluation), the off-policy pipeline's
order, versions and resume, and the colocated engines' sleep/wake order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from riskpo.batch import TrainBatch
from riskpo.messages import Completion, SamplingParams
from riskpo.run.checkpoints import checkpoint_meta, complete_checkpoints
from riskpo.run.record import read_metrics
from tests.riskpo.loop.fakes import FakeLearner, FakeRollout, FakeVerifiers, fit, make_trainer


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


def test_dynamic_sampling_counts_the_generation_of_every_refill_round(tmp_path):
    rollout = FakeRollout()  # each call: 0.5 s, its tokens, one actor failure
    rows = _run(tmp_path, "run", ["algorithm.dynamic_sampling.enabled=true",
                                  "algorithm.dynamic_sampling.max_refill_rounds=5",
                                  "trainer.total_steps=3"], rollout=rollout)
    calls = iter(rollout.figures[:-2])  # the last two: the final evaluation (sampled, greedy)
    for row in rows:
        made = [next(calls) for _ in range(int(row["dynamic/refill_rounds"]) + 1)]
        tokens = sum(call["rollout/response_tokens"] for call in made)
        assert row["rollout/seconds"] == 0.5 * len(made) and row["rollout/response_tokens"] == tokens
        assert row["rollout/actor_failures"] == len(made)
        assert row["rollout/tokens_per_s"] == pytest.approx(tokens / (0.5 * len(made)))
        assert row["rollout/calls"] == rollout.figures.index(made[-1]) + 1  # a running total
    assert next(calls, None) is None and len(rows) < len(rollout.figures) - 2


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
    # the restored weights (after 2 updates: version 2) are pushed to the engines once more
    assert learner.weight_version == 2 == learner.rollout.version
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


# ----------------------------------------------------------------------------- the pipeline

TRAIN_KEYS = ("train/reward_mean", "adv/mean", "riskpo/tracked_q_alpha", "riskpo/tracked_q_beta")


def _run(tmp_path: Path, name: str, overrides: list[str], rollout: FakeRollout | None = None,
         learner_seconds: float = 0.0, colocate: bool = False) -> list[dict[str, Any]]:
    rollout = rollout or FakeRollout()
    trainer, _, logger = make_trainer(tmp_path / name, [
        "trainer.eval_before_training=false", "trainer.eval_every=0", *overrides], rollout=rollout,
        learner=FakeLearner(rollout, seconds=learner_seconds), colocate=colocate)
    fit(trainer, logger)
    return read_metrics(tmp_path / name)


def _prompts(run_dir: Path) -> dict[int, list[int]]:
    """Each step's rows (a resumed step's second record wins, as riskpo-train's resume keeps)."""
    records = map(json.loads, (run_dir / "prompts.jsonl").read_text().splitlines())
    return {record["step"]: record["rows"] for record in records}


@pytest.mark.parametrize("depth", [1, 2])
def test_pipelined_batches_are_k_versions_old_and_the_same_whatever_the_timing(tmp_path, depth):
    steps = ["trainer.total_steps=6"]
    synchronous = _run(tmp_path, "k0", steps)
    assert [row["rollout/staleness_max"] for row in synchronous] == [0.0] * 6
    slow_rollouts = _run(tmp_path, "slow_rollouts", [*steps, f"trainer.off_policy_steps={depth}"],
                         rollout=FakeRollout(seconds=0.03))
    slow_learner = _run(tmp_path, "slow_learner", [*steps, f"trainer.off_policy_steps={depth}"],
                        learner_seconds=0.03)
    ages = [float(min(step - 1, depth)) for step in range(1, 7)]  # version max(0, s-1-k)
    for rows in (slow_rollouts, slow_learner):
        assert [row["rollout/staleness_max"] for row in rows] == ages
        assert [row["rollout/staleness_mean"] for row in rows] == ages
        assert "time/wait_rollouts" in rows[0] and rows[0]["time/generate"] > 0
    for key in TRAIN_KEYS:  # the timing changes nothing
        assert [row[key] for row in slow_rollouts] == [row[key] for row in slow_learner], key
    # the same prompts in the same steps as the synchronous loop
    assert _prompts(tmp_path / "slow_rollouts") == _prompts(tmp_path / "k0")


def test_a_generation_never_mixes_versions_and_follows_the_fixed_order(tmp_path):
    rollout = FakeRollout(seconds=0.01)
    _run(tmp_path, "run", ["trainer.total_steps=5", "trainer.off_policy_steps=1"], rollout=rollout,
         learner_seconds=0.01)
    generations = [version for kind, version in rollout.log if kind == "generate"]
    # steps 1 and 2 from the initial weights, step s from version s - 2; then the final eval
    assert generations[:5] == [None, None, 1, 2, 3] and set(generations[5:]) == {5}
    syncs = [version for kind, version in rollout.log if kind == "sync"]
    assert syncs == [1, 2, 3, 4, 5]


class Interrupted(FakeLearner):
    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        if len(self.batches) == 2:
            raise KeyboardInterrupt  # Ctrl-C in step 3, with step 3's batch made ahead
        return super().train_step(batch)


def test_a_pipelined_resume_trains_on_the_saved_batches_exactly(tmp_path):
    overrides = ["trainer.save_every=1", "trainer.off_policy_steps=1", "trainer.total_steps=4",
                 "trainer.eval_before_training=false", "trainer.eval_every=0"]
    straight = _run(tmp_path, "straight", overrides[:3])
    first, learner, logger = make_trainer(tmp_path / "split", overrides)
    first.workers.learner.__class__ = Interrupted
    with pytest.raises(KeyboardInterrupt):
        fit(first, logger)
    resumed, learner, logger = make_trainer(tmp_path / "split", overrides)
    resumed.load_checkpoint(complete_checkpoints(tmp_path / "split")[-1])
    generations = len(resumed.workers.rollout.calls)
    fit(resumed, logger)
    split = read_metrics(tmp_path / "split")
    assert [row["step"] for row in split] == [1, 2, 3, 4]
    for key in (*TRAIN_KEYS, "rollout/staleness_mean"):  # step 3's batch came from the checkpoint
        assert [row[key] for row in split] == [row[key] for row in straight], key
    assert _prompts(tmp_path / "split") == _prompts(tmp_path / "straight")
    assert len(resumed.workers.rollout.calls) - generations == 1 + 2  # step 4, the final eval


def test_a_run_extended_after_it_ended_says_its_next_batches_are_fresher(tmp_path):
    _run(tmp_path, "run", ["trainer.save_every=1", "trainer.off_policy_steps=1", "trainer.total_steps=2"])
    resumed, _, logger = make_trainer(tmp_path / "run", ["trainer.off_policy_steps=1", "trainer.total_steps=4",
                                                         "trainer.eval_every=0"])
    resumed.load_checkpoint(complete_checkpoints(tmp_path / "run")[-1])
    fit(resumed, logger)
    assert [row["rollout/staleness_max"] for row in read_metrics(tmp_path / "run")] == [0, 1, 0, 1]
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert "pipeline/restart" in kinds


def test_a_resume_with_another_pipeline_depth_is_refused_naming_the_key(tmp_path):
    _run(tmp_path, "run", ["trainer.save_every=1", "trainer.off_policy_steps=1", "trainer.total_steps=2"])
    resumed, _, logger = make_trainer(tmp_path / "run", ["trainer.total_steps=4"])
    with pytest.raises(ValueError, match="trainer.off_policy_steps=1"):
        resumed.load_checkpoint(complete_checkpoints(tmp_path / "run")[-1])
    logger.close()


class RestartingRollout(FakeRollout):
    """The engine restarts under the generation of call `at`: it comes back with the weights
    at model_path (version None) and samples with them until synced again."""

    def __init__(self, at: int) -> None:
        super().__init__(seconds=0.005)
        self.at, self.generations = at, 0

    def generate(self, prompts: list[Any], params: SamplingParams) -> list[list[Completion]]:
        self.generations += 1
        if self.generations == self.at:
            self.version = None
        return super().generate(prompts, params)


@pytest.mark.parametrize("depth", [0, 1])
def test_samples_from_a_restarted_engine_are_rolled_out_again_after_a_sync(tmp_path, depth):
    overrides = ["trainer.total_steps=5", f"trainer.off_policy_steps={depth}"]
    undisturbed = _run(tmp_path, "undisturbed", overrides)
    rollout = RestartingRollout(at=4)
    disturbed = _run(tmp_path, "disturbed", overrides, rollout=rollout)
    for key in TRAIN_KEYS:  # the fake's answers do not depend on the weights
        assert [row[key] for row in disturbed] == [row[key] for row in undisturbed], key
    resyncs = [e for e in map(json.loads, (tmp_path / "disturbed" / "events.jsonl").read_text().splitlines())
               if e["kind"] == "rollout/resync"]
    # generation 4 is step 4's, due from version 3 - k
    assert len(resyncs) == 1 and f"version(s) None, not {3 - depth}" in resyncs[0]["message"]
    assert all(row["rollout/staleness_max"] <= depth for row in disturbed)
    # the rolled-out-again prompts' generation counts in the step's figures with the first one
    trained = len(rollout.figures) - 2  # the last two: the final evaluation (sampled, greedy)
    assert sum(row["rollout/actor_failures"] for row in disturbed) == trained == 6
    bad = [i for i, (kind, version) in enumerate(rollout.log) if kind == "generate" and version is None][-1]
    after = rollout.log[bad + 1:]
    synced = next(i for i, (kind, _) in enumerate(after) if kind == "sync")
    again = next(i for i, (kind, _) in enumerate(after) if kind == "generate")
    assert synced < again and after[again][1] == after[synced][1]  # synced, then rolled out again


def test_colocated_engines_sleep_through_the_learners_phases(tmp_path):
    rollout = FakeRollout()
    _run(tmp_path, "run", ["trainer.total_steps=2", "trainer.eval_every=1"], rollout=rollout,
         colocate=True)
    # each step, then its evaluation (sampled and greedy), all with the engines awake
    step = ["generate", "sleep", "logprobs", "train", "wake", "sync", "generate", "generate"]
    assert [kind for kind, _ in rollout.log] == step + step
