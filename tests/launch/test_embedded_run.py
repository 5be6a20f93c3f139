"""The README's run command (`make train`) with a few steps: the CI smoke test of the embedded
default — warm start (from the cache when a run made it before), local Ray cluster, hf rollout
actor, math verifier actor, DeepSpeed learner, gloo weight sync — and its run directory."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from riskpo.run.record import REQUIRED_STEP_KEYS, read_metrics

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_make_train_with_three_steps(tmp_path):
    run_dir = tmp_path / "embedded"
    result = subprocess.run(
        ["make", "train", f"ARGS=trainer.total_steps=3 run_dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=1500, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Warm start" in result.stderr  # says what it is doing (trained now, or cached)
    rows = read_metrics(run_dir)
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert all(set(REQUIRED_STEP_KEYS) <= row.keys() for row in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3
    assert summary["initial"]["eval/avg@8"] > 0.0, "the warm start left the model unable to add"
    assert {"eval/avg@8", "eval/pass@8", "eval/greedy_accuracy"} <= summary["final"].keys()
    assert (run_dir / "plots" / "pass_at_k_vs_k.png").is_file()
    assert list((run_dir / "checkpoints").glob("step_*/COMPLETE"))
