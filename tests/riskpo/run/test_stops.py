"""The loop's stops and records in-process, with fake worker groups (no Ray, milliseconds a step):
non-finite training (events, the skipped-updates metric, the stop naming the step, the metric and
the last good checkpoint, no checkpoint of the broken model), a full disk while saving (checked
before writing, ENOSPC caught, the partial checkpoint removed), the prompts each step used,
the wall time across a resume, and what a step really uses, said at start-up."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from launch.config import compose_config, validate
from riskpo.algo.losses import TOKEN_WEIGHTED_METRICS
from riskpo.loop.trainer import describe_step_shape
from riskpo.messages import NonFiniteSampling
from riskpo.run import checkpoints
from riskpo.run.checkpoints import complete_checkpoints, write_checkpoint
from riskpo.run.record import PROMPTS_FILE, read_jsonl, read_metrics
from riskpo.run.stops import NonFiniteTraining, NoSpaceLeft, UpdateHealth, non_finite_sampling
from tests.riskpo.loop import fakes
from tests.riskpo.loop.fakes import FakeLearner, FakeRollout, FakeVerifiers, fit
from workers.learner.group import _combine_mini_batch_metrics

STOPS = ["data.eval.size=4", "data.eval_samples=2", "data.eval_greedy=false",
         "trainer.eval_every=0", "trainer.eval_before_training=false"]


def make_trainer(run_dir: Path, overrides: list[str], resume_step: int | None = None,
                 rollout: FakeRollout | None = None, **learner_options: Any):
    """fakes.make_trainer without evaluations; learner_options go to the FakeLearner."""
    rollout = rollout or FakeRollout()
    return fakes.make_trainer(run_dir, [*STOPS, *overrides], learner=FakeLearner(rollout, **learner_options),
                              resume_step=resume_step)


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
    rollout = FakeRollout(broken_from=3)  # the weights of step 3 sample inf/nan (in step 4)
    trainer, _, logger = make_trainer(
        tmp_path, ["trainer.total_steps=10", "trainer.save_every=1", "trainer.keep_checkpoints=0"],
        rollout=rollout)
    with pytest.raises(NonFiniteTraining) as stop:
        fit(trainer, logger)
    message = str(stop.value)
    assert stop.value.step == 4 and "step 4" in message
    assert "sampling probabilities are not finite (the weights of step 3 sampled" in message
    assert "removed step_000003" in message and message.endswith("step_000002")
    assert checkpoint_names(tmp_path) == ["step_000001", "step_000002"]


@pytest.mark.parametrize(("depth", "save_every", "broken"), [(1, 2, 4), (2, 2, 4), (1, 1, 3), (2, 2, 5)])
def test_a_pipelined_sampling_failure_removes_every_checkpoint_of_the_broken_weights(
        tmp_path, depth, save_every, broken):
    """trainer.off_policy_steps = k: step s trains on a batch of version s - 1 - k, so weights
    that sample inf/nan are found up to k steps late (in the step that takes the batch, or in
    a checkpoint, which waits for the batches made ahead); their checkpoint and the later ones
    (descended from them) go, and the newest one before them is the last good one."""
    rollout = FakeRollout(seconds=0.002, broken_from=broken)
    trainer, _, logger = make_trainer(
        tmp_path, ["trainer.total_steps=12", f"trainer.save_every={save_every}",
                   "trainer.keep_checkpoints=0", f"trainer.off_policy_steps={depth}"], rollout=rollout)
    with pytest.raises(NonFiniteTraining) as stop:
        fit(trainer, logger)
    message = str(stop.value)
    assert broken < stop.value.step <= broken + 1 + depth
    assert f"the weights of step {broken} sampled" in message
    last_good = max(step for step in range(1, broken) if step % save_every == 0)
    assert message.endswith(f"last good checkpoint: {tmp_path / 'checkpoints' / f'step_{last_good:06d}'}")
    assert checkpoint_names(tmp_path) == [f"step_{s:06d}" for s in range(1, broken) if s % save_every == 0]


def test_an_error_that_only_mentions_nan_is_not_a_sampling_stop(tmp_path, monkeypatch):
    """A verifier that returns a NaN reward makes the advantage check raise ("reward of row ..
    is nan"): a plain error of that step, which keeps every checkpoint."""
    trainer, _, logger = make_trainer(tmp_path, ["trainer.total_steps=5", "trainer.save_every=1",
                                                 "trainer.keep_checkpoints=0"])
    verify, calls = FakeVerifiers.verify_batch, []

    def nan_in_step_3(self: FakeVerifiers, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        calls.append(len(rows))
        results = verify(self, rows)
        if len(calls) == 3:
            results[3] = {"reward": float("nan"), "status": "ok"}
        return results

    monkeypatch.setattr(FakeVerifiers, "verify_batch", nan_in_step_3)
    with pytest.raises(ValueError, match=r"reward of row 3 .* is nan") as error:
        fit(trainer, logger)
    assert not isinstance(error.value, NonFiniteTraining)
    assert checkpoint_names(tmp_path) == ["step_000001", "step_000002"]


def test_non_finite_sampling_is_found_by_type_also_inside_ray_errors():
    from ray.exceptions import RayTaskError

    sampling = NonFiniteSampling("HFEngine: probability tensor contains either `inf`...", 7)
    wrapped = RayTaskError("RolloutActor.generate", "Traceback ...", sampling)
    assert non_finite_sampling(sampling) is sampling
    assert non_finite_sampling(wrapped).weight_version == 7
    assert non_finite_sampling(wrapped.as_instanceof_cause()).weight_version == 7
    assert non_finite_sampling(ValueError("reward of row 3 (question id 0) is nan")) is None
    assert non_finite_sampling(RuntimeError("probability tensor contains either `inf`, `nan`")) is None


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
                                    seconds=0.2)
    fit(first, logger)
    resumed, _, logger = make_trainer(tmp_path, ["trainer.total_steps=4"], resume_step=2,
                                      seconds=0.2)
    resumed.load_checkpoint(complete_checkpoints(tmp_path)[-1])
    assert resumed.clock.seconds >= 0.4  # the time before the checkpoint
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
