"""`riskpo-train experiment=embedded_vlm` with three steps: the CI smoke test of the multimodal
default on the one loop -- the tiny LLaVA built and warm-started (30 steps here: the full run's
warm start and figures are in the README), image prompts through the hf rollout actor, the math
verifier, the DeepSpeed learner with pixel inputs, gloo weight sync of every parameter -- and its
run directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from riskpo.run.record import REQUIRED_STEP_KEYS, read_metrics

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_embedded_vlm_with_three_steps(tmp_path):
    run_dir = tmp_path / "embedded_vlm"
    command = [sys.executable, "-m", "launch.train", "experiment=embedded_vlm",
               "trainer.total_steps=3", f"run_dir={run_dir}", "logger=none",
               "model.warmstart.max_steps=30", f"model.warmstart.cache_dir={tmp_path / 'cache'}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1500,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Warm start" in result.stderr
    rows = read_metrics(run_dir)
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert all(set(REQUIRED_STEP_KEYS) <= row.keys() for row in rows)
    assert all(row["train/samples"] == 80 and row["sync/bytes"] > 0 for row in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3
    assert {"eval/avg@8", "eval/pass@8", "eval/greedy_accuracy"} <= summary["final"].keys()
    assert summary["final"]["eval/infra_errors"] == 0
    (checkpoint,) = [path for path in (run_dir / "checkpoints").glob("step_*")
                     if (path / "COMPLETE").is_file()]
    assert (checkpoint / "hf" / "processor_config.json").is_file()  # the export is a whole VLM
