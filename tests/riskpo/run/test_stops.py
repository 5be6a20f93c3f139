"""The loop's stops and records in-process, with fake worker groups (no Ray, milliseconds a step):
non-finite training (events, the skipped-updates metric, the stop naming the step, the metric and
the last good checkpoint, no checkpoint of the broken model), a full disk while saving (checked
before writing, ENOSPC caught, the partial checkpoint removed), the prompts each step used,
the wall time across a resume, and what a step really uses, said at start-up."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from launch.config import compose_config, validate
from riskpo.algo.losses import TOKEN_WEIGHTED_METRICS
from riskpo.batch import TrainBatch
from riskpo.data.loaders import load_train_and_eval
from riskpo.loop.trainer import Trainer, Workers, describe_step_shape
from riskpo.messages import Completion, SamplingParams
from riskpo.run import checkpoints
from riskpo.run.checkpoints import complete_checkpoints, write_checkpoint
from riskpo.run.record import PROMPTS_FILE, RunLogger, read_jsonl, read_metrics
from riskpo.run.stops import NonFiniteTraining, NoSpaceLeft, UpdateHealth
from workers.learner.group import _combine_mini_batch_metrics

QUIET = ["logger.backend=none", "logger.progress=none", "logger.plots=false",
         "model.warmstart.enabled=false", "data.train.size=200", "data.eval.size=4",
         "data.eval_samples=2", "data.eval_greedy=false", "trainer.samples_per_prompt=4",
         "trainer.eval_every=0", "trainer.eval_before_training=false"]
SAMPLING_ERROR = "probability tensor contains either `inf`, `nan` or element < 0"


class FakeRollout:
    """Answers every prompt with '0' (so rewards vary with the question); can be told to fail
    the way torch's sampler fails on a policy whose logits are not finite."""

    def __init__(self) -> None:
        self.version, self.fail_from_step, self.step = None, None, 0

    def generate(self, prompts: list[Any], params: SamplingParams) -> list[list[Completion]]:
        if self.fail_from_step is not None and self.step >= self.fail_from_step:
            raise RuntimeError(SAMPLING_ERROR)
        return [[Completion([5], [-0.5], "stop", str(j % 3), [1, 2], self.version)
                 for j in range(params.n)] for _ in prompts]

    def weight_versions(self) -> list[int | None]:
        return [self.version]

    def metrics(self) -> dict[str, float]:
        return {}

    def drain_events(self) -> list[dict[str, Any]]:
        return []


class FakeVerifiers:
    def verify_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"reward": float(r["response"] == r["ground_truth"][-1:]), "status": "ok"} for r in rows]

    def drain_events(self) -> list[dict[str, Any]]:
        return []


class FakeLearner:
    """Reports skipped (non-finite) updates on the steps in `bad_steps`; a checkpoint is the
    driver's `extra` plus a padding file of `checkpoint_bytes`."""

    def __init__(self, rollout: FakeRollout, bad_steps: set[int] = frozenset(),
                 step_seconds: float = 0.0) -> None:
        self.rollout, self.bad_steps, self.step_seconds = rollout, set(bad_steps), step_seconds
        self.weight_version, self.steps, self.saves = 0, 0, []
        self.checkpoint_bytes, self.fail_save = 1000, None

    def compute_logprobs(self, batch: TrainBatch) -> dict[str, float]:
        return {"rollout_learner_logprob_gap": 0.0}

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        self.steps += 1
        time.sleep(self.step_seconds)
        bad = self.steps in self.bad_steps
        return {"loss": float("nan") if bad else 0.5, "grad_norm": float("inf") if bad else 1.0,
                "entropy": 0.5, "mini_batches": 1.0, "skipped_updates": float(bad),
                "trailing_skipped_updates": float(bad)}

    def sync_weights(self, rollout: Any, version: int | None = None) -> dict[str, float]:
        self.weight_version = self.weight_version + 1 if version is None else version
        rollout.version = self.weight_version
        rollout.step = self.steps + 1
        return {"sync/weight_version": float(self.weight_version)}

    def save(self, path: str, extra: dict[str, Any] | None = None) -> None:
        self.saves.append(extra["step"])
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "padding.bin").write_bytes(b"x" * self.checkpoint_bytes)
        if self.fail_save is not None:
            raise self.fail_save
        torch.save({"extra": extra, "version": self.weight_version}, Path(path) / "learner.pt")

    def load(self, path: str) -> dict[str, Any]:
        state = torch.load(Path(path) / "learner.pt", weights_only=False)
        self.weight_version = state["version"]
        self.steps = state["extra"]["step"]
        return state["extra"]

    def export_hf(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)


def make_trainer(run_dir: Path, overrides: list[str], resume_step: int | None = None,
                 **learner_options: Any) -> tuple[Trainer, FakeLearner, RunLogger]:
    cfg = compose_config([*QUIET, *overrides, f"run_dir={run_dir}"])
    run = validate(cfg)
    train_rows, eval_rows = load_train_and_eval(run.data)
    rollout = FakeRollout()
    learner = FakeLearner(rollout, **learner_options)
    logger = RunLogger(run_dir, run.logger, {}, run.trainer.total_steps, "fake",
                       resume_step=resume_step, console=Console(stderr=True, quiet=True))
    trainer = Trainer(run, Workers(rollout, FakeVerifiers(), learner), train_rows, eval_rows,
                      logger, run_dir)
    return trainer, learner, logger


def fit(trainer: Trainer, logger: RunLogger) -> dict[str, Any]:
    try:
        return trainer.fit()
    finally:
        logger.close()


def events(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(run_dir / "events.jsonl")


def checkpoint_names(run_dir: Path) -> list[str]:
    root = run_dir / "checkpoints"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


# ----------------------------------------------------------------------------- non-finite


def test_skipped_updates_stop_the_run_naming_step_metric_and_last_good_checkpoint(tmp_path):
    trainer, learner, logger = make_trainer(
        tmp_path, ["trainer.total_steps=20", "trainer.save_every=1", "trainer.keep_checkpoints=0"],
        bad_steps=set(range(4, 21)))
    with pytest.raises(NonFiniteTraining) as stop:
        fit(trainer, logger)
    message = str(stop.value)
    assert stop.value.exit_status == 1 and stop.value.step == 6  # 3 in a row: steps 4, 5, 6
    assert "step 6" in message and "actor/loss" in message and "actor/grad_norm" in message
    # the weights after step 3 made steps 4-6 non-finite: their checkpoint goes, 2 is the good one
    assert "removed step_000003" in message
    assert message.endswith(f"last good checkpoint: {tmp_path / 'checkpoints' / 'step_000002'}")
    assert checkpoint_names(tmp_path) == ["step_000001", "step_000002"]
    assert learner.saves == [1, 2, 3]  # nothing saved during the streak
    rows = read_metrics(tmp_path)
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]  # the stopping step is logged
    assert [row["actor/skipped_updates"] for row in rows] == [0, 0, 0, 1, 1, 1]
    assert all("actor/trailing_skipped_updates" not in row for row in rows)
    assert rows[3]["actor/grad_norm"] is None
    kinds = [(e["kind"], e["step"]) for e in events(tmp_path)]
    assert kinds.count(("train/non_finite", 4)) == 1
    assert [k for k in kinds if k[0] == "train/non_finite"] == [("train/non_finite", 4)]


def test_a_short_streak_is_an_event_and_defers_the_checkpoint(tmp_path):
    trainer, learner, logger = make_trainer(
        tmp_path, ["trainer.total_steps=5", "trainer.save_every=2", "trainer.keep_checkpoints=0"],
        bad_steps={2, 3})
    summary = fit(trainer, logger)
    assert summary["steps"] == 5
    assert learner.saves == [4, 5]  # step 2's checkpoint waited for a step with finite updates
    kinds = [e["kind"] for e in events(tmp_path)]
    assert kinds.count("train/non_finite") == 1 and kinds.count("checkpoint/deferred") == 1


def test_max_skipped_updates_zero_never_stops(tmp_path):
    trainer, _, logger = make_trainer(
        tmp_path, ["trainer.total_steps=6", "trainer.max_skipped_updates=0"], bad_steps={2, 3, 4, 5})
    assert fit(trainer, logger)["steps"] == 6


def test_sampling_from_non_finite_probabilities_stops_at_once(tmp_path):
    trainer, _, logger = make_trainer(
        tmp_path, ["trainer.total_steps=10", "trainer.save_every=1", "trainer.keep_checkpoints=0"])
    trainer.workers.rollout.fail_from_step = 4  # the weights of step 3 sample inf/nan
    with pytest.raises(NonFiniteTraining) as stop:
        fit(trainer, logger)
    message = str(stop.value)
    assert "step 4" in message and "sampling probabilities are not finite" in message
    assert "removed step_000003" in message and message.endswith("step_000002")
    assert checkpoint_names(tmp_path) == ["step_000001", "step_000002"]


@pytest.mark.parametrize(("per_mini_batch", "skipped", "trailing"), [
    ([0, 0, 0], 0, 0), ([1, 0, 1], 2, 1), ([0, 1, 1], 2, 2), ([1, 1, 1], 3, 3), ([1, 1, 0], 2, 0)])
def test_the_learner_group_counts_skipped_updates(per_mini_batch, skipped, trailing):
    result = {"loss": 1.0, "grad_norm": 1.0, "lr": 1e-3, "tokens": 4.0,
              **dict.fromkeys(TOKEN_WEIGHTED_METRICS, 0.0)}
    per_rank = [[{**result, "skipped": float(s)} for s in per_mini_batch]] * 2
    metrics = _combine_mini_batch_metrics(per_rank)
    assert metrics["skipped_updates"] == skipped and metrics["trailing_skipped_updates"] == trailing


def test_update_health_counts_updates_in_a_row_across_steps():
    health = UpdateHealth(max_skipped=3)
    def step(n, skipped, trailing, updates=2, grad_norm=1.0):
        return health.observe({"step": n, "actor/mini_batches": updates, "actor/grad_norm": grad_norm,
                               "actor/skipped_updates": skipped, "actor/trailing_skipped_updates": trailing})
    assert step(1, 0, 0) == (True, None)
    healthy, news = step(2, 1, 1, grad_norm=float("nan"))
    assert not healthy and "actor/grad_norm not finite" in news and "1 of 2 updates" in news
    assert step(3, 1, 0)[1] is None and health.consecutive == 0  # the streak broke inside step 3
    assert step(4, 1, 1)[1] is not None and not health.must_stop()  # a new streak: a new event
    assert step(5, 2, 2) == (False, None) and health.must_stop()  # 1 + 2 in a row
    assert "3 consecutive updates since step 4" in health.problem()
    # an update applied with a non-finite gradient norm (nothing skipped it) counts too
    fresh = UpdateHealth(max_skipped=1)
    assert fresh.observe({"step": 1, "actor/mini_batches": 1, "actor/loss": float("inf")})[0] is False
    assert fresh.must_stop()


# ----------------------------------------------------------------------------- full disk


def test_no_room_for_the_next_checkpoint_stops_before_writing(tmp_path, monkeypatch):
    trainer, learner, logger = make_trainer(tmp_path, ["trainer.total_steps=4", "trainer.save_every=1"])
    free = {"bytes": 10**9}
    monkeypatch.setattr(checkpoints, "free_bytes", lambda path: free["bytes"])
    trainer.workers.learner.checkpoint_bytes = 200_000
    original = trainer.save_checkpoint
    def save_then_fill() -> Path:
        path = original()
        free["bytes"] = 100_000  # less than the checkpoint just written
        return path
    trainer.save_checkpoint = save_then_fill
    with pytest.raises(NoSpaceLeft) as stop:
        fit(trainer, logger)
    assert str(stop.value).startswith(f"no space left on {tmp_path / 'checkpoints'}")
    assert "to save step 2" in str(stop.value) and str(stop.value).endswith("step_000001")
    assert learner.saves == [1]  # step 2 was never started
    assert checkpoint_names(tmp_path) == ["step_000001"]


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("basic_ios::clear: iostream error"),  # torch's writer; the disk is then full
])
def test_a_full_disk_while_saving_removes_the_partial_checkpoint(tmp_path, monkeypatch, error):
    trainer, learner, logger = make_trainer(tmp_path, ["trainer.total_steps=4", "trainer.save_every=1"])
    real_free = checkpoints.free_bytes
    full = {"now": False}
    monkeypatch.setattr(checkpoints, "free_bytes", lambda path: 0 if full["now"] else real_free(path))
    original = learner.save
    def save(path: str, extra: dict[str, Any] | None = None) -> None:
        if extra["step"] == 3:
            learner.fail_save, full["now"] = error, True
        original(path, extra)
    learner.save = save
    with pytest.raises(NoSpaceLeft) as stop:
        fit(trainer, logger)
    message = str(stop.value)
    assert message.startswith(f"no space left on {tmp_path / 'checkpoints'} while saving step 3")
    assert "removed the partial step_000003" in message and message.endswith("step_000002")
    assert checkpoint_names(tmp_path) == ["step_000001", "step_000002"]


def test_an_error_that_is_not_about_space_propagates_and_leaves_no_partial(tmp_path):
    trainer, learner, logger = make_trainer(tmp_path, ["trainer.total_steps=2", "trainer.save_every=1"])
    learner.fail_save = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        fit(trainer, logger)
    assert checkpoint_names(tmp_path) == []


def test_a_leftover_of_the_same_step_never_passes_for_complete(tmp_path):
    leftover = tmp_path / "checkpoints" / "step_000001"
    leftover.mkdir(parents=True)
    (leftover / "COMPLETE").write_text("1")
    (leftover / "stale.bin").write_text("old branch")
    learner = FakeLearner(FakeRollout())
    learner.fail_save = OSError(errno.EIO, "I/O error")
    with pytest.raises(OSError, match="I/O error"):
        write_checkpoint(tmp_path, learner, {"step": 1}, keep=2, first_estimate=0)
    assert not leftover.exists() and complete_checkpoints(tmp_path) == []


# ----------------------------------------------------------------------------- records


def test_prompts_are_recorded_per_step_and_a_resume_replays_none(tmp_path):
    straight, _, logger = make_trainer(tmp_path / "straight", ["trainer.total_steps=4"])
    fit(straight, logger)
    first, _, logger = make_trainer(tmp_path / "split", ["trainer.total_steps=2", "trainer.save_every=2"])
    fit(first, logger)
    with (tmp_path / "split" / PROMPTS_FILE).open("a") as handle:  # a step cut short before
        handle.write(json.dumps({"step": 3, "epoch": 0, "rows": [0]}) + "\n")
    resumed, _, logger = make_trainer(tmp_path / "split", ["trainer.total_steps=4"], resume_step=2)
    resumed.load_checkpoint(complete_checkpoints(tmp_path / "split")[-1])
    fit(resumed, logger)
    records = read_jsonl(tmp_path / "split" / PROMPTS_FILE)
    assert records == read_jsonl(tmp_path / "straight" / PROMPTS_FILE)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and {r["epoch"] for r in records} == {0}
    used = [row for record in records for row in record["rows"]]
    assert all(len(r["rows"]) == 10 for r in records) and len(set(used)) == len(used) == 40


def test_dynamic_sampling_records_the_dropped_prompts(tmp_path):
    trainer, _, logger = make_trainer(tmp_path, [
        "trainer.total_steps=2", "algorithm.dynamic_sampling.enabled=true",
        "algorithm.dynamic_sampling.max_refill_rounds=3"])
    fit(trainer, logger)
    for record in read_jsonl(tmp_path / PROMPTS_FILE):
        assert not set(record["rows"]) & set(record.get("dropped", []))


def test_wall_time_covers_the_run_across_a_resume(tmp_path):
    first, _, logger = make_trainer(tmp_path, ["trainer.total_steps=2", "trainer.save_every=2"],
                                    step_seconds=0.2)
    fit(first, logger)
    resumed, _, logger = make_trainer(tmp_path, ["trainer.total_steps=4"], resume_step=2,
                                      step_seconds=0.2)
    resumed.load_checkpoint(complete_checkpoints(tmp_path)[-1])
    assert resumed.wall_s_before >= 0.4
    summary = fit(resumed, logger)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["wall_s"] == summary["wall_s"] >= 4 * 0.2  # all four steps, not the last two


def test_start_up_says_how_many_prompts_a_step_really_uses():
    def shape(*overrides: str) -> str:
        run = validate(compose_config(list(overrides)))
        return describe_step_shape(run.algorithm, run.trainer)

    assert shape() == "each step: 10 prompts in bundles of 5; 8 samples each = 80 responses"
    dropped = shape("trainer.prompts_per_step=7", "algorithm.options.drop_last_bundle=true")
    assert dropped.startswith("each step: 5 prompts in bundles of 5; algorithm.options.drop_last_bundle "
                              "drops 2 of the trainer.prompts_per_step=7 prompts every step")
    assert "= 40 responses" in dropped
    ragged = shape("trainer.prompts_per_step=7", "algorithm.options.ragged_last_bundle=true")
    assert "7 prompts in bundles of 5, the last bundle ragged: 2 prompts" in ragged
    assert shape("algorithm=grpo", "trainer.prompts_per_step=7").startswith("each step: 7 prompts; 8")
