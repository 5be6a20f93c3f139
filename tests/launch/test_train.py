"""The training driver end to end on a local Ray cluster with every real component: the run
directory contract, exact resume, recovery from killed workers, config errors at start-up.

These runs use the tiny model without its warm start (a random policy): they pin the plumbing,
not learning. tests/launch/test_embedded_run.py runs the README's command itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from rich.console import Console
from safetensors.torch import load_file

from launch.config import compose_config, validate
from launch.train import train
from riskpo.run.record import REQUIRED_STEP_KEYS, RunLogger, read_metrics

pytestmark = pytest.mark.slow

FAST = [
    "model.warmstart.enabled=false",
    "trainer.prompts_per_step=5",
    "trainer.samples_per_prompt=4",
    "trainer.eval_every=0",
    "trainer.eval_before_training=false",
    "data.eval.size=5",
    "data.eval_samples=2",
    "data.eval_greedy=false",
    "logger.backend=none",
    "logger.progress=none",
    "logger.plots=false",
]

# Metrics that depend on the sampled tokens and the trained parameters, not on timing.
DETERMINISTIC_KEYS = ("train/reward_mean", "train/response_length", "adv/mean", "adv/abs_mean",
                      "actor/loss", "actor/grad_norm", "actor/entropy", "riskpo/tracked_q_alpha",
                      "riskpo/tracked_q_beta")


def run_training(overrides: list[str], run_dir: Path) -> dict:
    cfg = compose_config([*FAST, *overrides, f"run_dir={run_dir}"])
    run = validate(cfg)
    return train(run, OmegaConf.to_container(cfg, resolve=True), run_dir,
                 console=Console(stderr=True, quiet=True))


def final_parameters(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step_{step:06d}" / "hf" / "model.safetensors")


def test_resume_continues_the_same_run(ray_cluster, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_training(["trainer.total_steps=4", "trainer.save_every=2"], straight)
    run_training(["trainer.total_steps=2", "trainer.save_every=2"], split)
    run_training(["trainer.total_steps=4", "trainer.save_every=2", "resume=auto"], split)

    rows_straight, rows_split = read_metrics(straight), read_metrics(split)
    assert [row["step"] for row in rows_split] == [1, 2, 3, 4]  # no duplicated or lost steps
    for a, b in zip(rows_straight, rows_split, strict=True):
        for key in DETERMINISTIC_KEYS:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["step"], key)
    params_straight, params_split = final_parameters(straight, 4), final_parameters(split, 4)
    assert params_straight.keys() == params_split.keys()
    for name, tensor in params_straight.items():
        torch.testing.assert_close(tensor, params_split[name], rtol=0, atol=0, msg=name)
    events = [json.loads(line) for line in (split / "events.jsonl").read_text().splitlines()]
    assert any(e["kind"] == "resume" and e["step"] == 2 for e in events)


def test_run_directory_contract(ray_cluster, tmp_path):
    run_dir = tmp_path / "run"
    summary = run_training(["trainer.total_steps=2", "logger.backend=wandb", "logger.plots=true",
                            "trainer.eval_before_training=true"], run_dir)
    rows = read_metrics(run_dir)
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        assert set(REQUIRED_STEP_KEYS) <= row.keys()
        assert row["train/samples"] == 5 * 4  # nothing silently dropped
    assert "eval/avg@2" in rows[-1] and "eval/pass@2" in rows[-1] and "eval/pass@1" in rows[-1]
    written = json.loads((run_dir / "summary.json").read_text())
    assert written["steps"] == 2 and written["wall_s"] > 0
    assert "eval/avg@2" in written["initial"] and "eval/avg@2" in written["final"]
    assert summary["steps"] == 2
    assert OmegaConf.load(run_dir / "config.yaml").trainer.total_steps == 2
    assert (run_dir / "plots" / "reward.png").is_file()
    assert list((run_dir / "wandb").glob("**/*.wandb")), "no offline wandb files"
    assert (run_dir / "checkpoints" / "step_000002" / "hf" / "config.json").is_file()


def test_riskpo_eval_on_a_run_directory(ray_cluster, tmp_path, capsys):
    from launch.evaluate import main as riskpo_eval

    run_dir = tmp_path / "run"
    run_training(["trainer.total_steps=1"], run_dir)
    output = tmp_path / "eval.json"
    overrides = ["data.eval.size=4", "data.eval_samples=4", "logger.backend=none"]
    assert riskpo_eval([str(run_dir), "--output", str(output), *overrides]) == 0
    report = json.loads(output.read_text())
    assert report["model"].endswith("checkpoints/step_000001/hf")
    assert report["rows"] == 4 and report["sampling"]["samples"] == 4
    assert {"eval/avg@4", "eval/pass@1", "eval/pass@2", "eval/pass@4",
            "eval/greedy_accuracy"} <= report["metrics"].keys()
    assert json.loads(capsys.readouterr().out) == report


@pytest.mark.parametrize("depth", [0, 1])  # trainer.off_policy_steps
def test_killed_workers_do_not_stop_the_run(ray_cluster, tmp_path, depth):
    from launch.factory import build_workers, prepare_model
    from riskpo.data.loaders import load_train_and_eval
    from riskpo.loop.trainer import Trainer

    run_dir = tmp_path / "faults"
    cfg = compose_config([*FAST, "trainer.total_steps=3", f"trainer.off_policy_steps={depth}",
                          f"run_dir={run_dir}"])
    run = validate(cfg)
    console = Console(stderr=True, quiet=True)
    train_rows, eval_rows = load_train_and_eval(run.data)
    workers = build_workers(run, prepare_model(run, console), console)
    logger = RunLogger(run_dir, run.logger, OmegaConf.to_container(cfg, resolve=True), 3, "faults",
                       console=console)
    trainer = Trainer(run, workers, train_rows, eval_rows, logger, run_dir)
    try:
        for step in (1, 2, 3):
            if step == 2:  # both kinds of actor die (pipelined: under step 3's generation)
                ray_cluster.kill(workers.verifiers.actors["math"][0], no_restart=False)
                ray_cluster.kill(workers.rollout.actors[0], no_restart=False)
            trainer.step = step
            metrics = trainer.train_step()
            logger.log_step(metrics)
            assert metrics["train/samples"] == 5 * 4
            assert metrics["train/masked_samples"] + metrics["train/reward_count"] == 5 * 4
            assert metrics["rollout/staleness_max"] <= depth
        versions = workers.rollout.weight_versions()
        assert versions == [workers.weight_sync.version] * len(versions)
        assert versions[0] == workers.learner.weight_version == 3
    finally:
        trainer.rollouts.close()
        logger.close()
        workers.shutdown()
    kinds = [json.loads(line)["kind"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    rows = read_metrics(run_dir)
    # The kill lands during a generate (the chunk is resubmitted, and what the restarted engine
    # sampled with its initial weights is rolled out again) or before it (the stale engine is
    # found before rolling out); either way the restarted engine is re-synced.
    assert "rollout/actor_died" in kinds or "rollout/resync" in kinds
    assert "rollout/resync" in kinds or rows[1]["sync/reopened"] == 1.0
    assert "verifier/actor_restarted" in kinds
    assert sum(row.get("faults/verifier_actor_restarted", 0.0) for row in rows) == 1.0


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.prompts_per_step=7", "trainer.prompts_per_step"),
        ("trainer.samples_per_prompt=1", "trainer.samples_per_prompt"),
        ("model.path=/does/not/exist", "model.path"),
        ("algorithm.options.alpha=0.9", "algorithm.options.alpha"),
        ("algorithm.alpha=0.3", "algorithm.alpha: moved to algorithm.options.alpha"),
    ],
)
def test_config_errors_stop_before_any_actor_starts(tmp_path, override, key):
    result = subprocess.run(
        [sys.executable, "-m", "launch.train", override, f"run_dir={tmp_path}"],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert key in result.stderr
    assert "starting a local cluster" not in result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()
