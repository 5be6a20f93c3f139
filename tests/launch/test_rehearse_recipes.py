"""Every GPU recipe rehearses: `riskpo-train experiment=<recipe> rehearse=true`, 2 steps on this
machine's CPUs with the recipe's learner (ZeRO-2, bf16, gradient checkpointing, 4 mini-batches,
its token budget), two ranks and two colocated vLLM engines (vLLM's CPU build: these run in the
vLLM lane, .venv-vllm), its estimator, loss, verifier and data format; the model scaled with its
real weight names, which the checkpoint's export holds. The VL recipe needs torchvision for its
processor (tests/launch/test_rehearse.py checks its refusal where torchvision is missing)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TEXT_RECIPES = ("qwen2.5-1.5b-math", "qwen2.5-1.5b-math-grpo", "r1-distill-1.5b-dapo", "r1-distill-1.5b-dapo-grpo",
                "qwen2.5-7b-math-lora")
UNTIED_HEADS = ("r1-distill", "qwen2.5-7b")  # recipes whose model has its own lm_head.weight


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module: the scaled models and rows are built once and shared."""
    return tmp_path_factory.mktemp("rehearsal-cache")


def rehearse(recipe: str, run_dir: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RISKPO_CACHE": str(cache), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "launch.train", f"experiment={recipe}", "rehearse=true",
                           f"run_dir={run_dir}", "logger=none", "logger.plots=false"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("recipe", TEXT_RECIPES)
def test_the_recipe_rehearses_two_steps_and_prints_its_memory(recipe, tmp_path, cache):
    pytest.importorskip("vllm")
    result = rehearse(recipe, tmp_path / "run", cache)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for line in ("kept      learner.zero_stage = 2", "kept      learner.gradient_checkpointing = True",
                 "kept      learner.micro_batch_token_budget = 16384", "kept      rollout.engine = vllm",
                 "kept      cluster.colocate = True", "scaled    learner.num_ranks", "replaced  cluster.device"):
        assert line in output
    steps = [json.loads(row) for row in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in steps] == [1, 2]
    assert all(row["time/sleep"] >= 0 and row["time/wake"] >= 0 for row in steps)  # colocated turns
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "rehearse: true" in config and "zero_stage: 2" in config
    _check_export(tmp_path / "run", recipe)
    _check_memory(output, lora=recipe.endswith("-lora"))


def _check_export(run_dir: Path, recipe: str) -> None:
    """The step-2 checkpoint's HF export holds the recipe model's weight names."""
    from safetensors import safe_open

    exported = sorted(run_dir.glob("checkpoints/*/hf/*.safetensors"))
    assert exported, sorted(str(p) for p in run_dir.rglob("*"))[:40]
    with safe_open(exported[-1], "pt") as weights:
        names = set(weights.keys())
    assert {"model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.bias",
            "model.layers.1.mlp.down_proj.weight", "model.norm.weight"} <= names
    assert ("lm_head.weight" in names) == recipe.startswith(UNTIED_HEADS)
    if recipe.endswith("-lora"):  # the merged model above, and the adapter directory PEFT loads
        assert (exported[-1].parent / "adapter" / "adapter_config.json").is_file()


# LoRA's step terms are not fitted yet (docs/cluster.md): at the rehearsal's scale the formula was
# 24% under the no-grad pass (PEFT's unmerged forward adds its outputs) and 11.5% over the train step
LORA_STEP_TOLERANCE = 30.0


def _check_memory(output: str, lora: bool = False) -> None:
    """The real recipe's memory per GPU, and the formula within 5% of the step measured here
    (with LoRA: the state within 5%, the passes' peaks within LORA_STEP_TOLERANCE)."""
    assert "memory per GPU of the real recipe" in output and "peak while training" in output
    checks = re.findall(r"^  (.+?)\s{2,}([\d.]+)\s+([\d.]+)\s+\(([+-][\d.]+)%", output, flags=re.MULTILINE)
    assert len(checks) == 4, output[-3000:]
    for name, _, _, error in checks:
        tolerance = LORA_STEP_TOLERANCE if lora and "peak above state" in name else 5.0
        assert abs(float(error)) < tolerance, f"{name}: the formula is {error}% off the measured step"
