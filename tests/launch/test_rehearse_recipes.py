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
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TEXT_RECIPES = ("qwen2.5-1.5b-math", "r1-distill-1.5b-dapo", "qwen2.5-1.5b-math-grpo", "r1-distill-1.5b-dapo-grpo",
                "qwen2.5-7b-math-lora")
UNTIED_HEADS = ("r1-distill", "qwen2.5-7b")  # recipes whose model has its own lm_head.weight
# Rehearsals running at once (REHEARSALS_AT_ONCE; default 2): alone, one spends much of its time
# with a core idle (its driver's imports, Ray's start, the steps' turns), which a second fills;
# `make test` runs them beside the vLLM lane, which fills that core already, so it sets 1
CONCURRENT_REHEARSALS = int(os.environ.get("REHEARSALS_AT_ONCE", "2"))


def rehearse(recipe: str, run_dir: Path, cache: Path) -> tuple[subprocess.CompletedProcess, float]:
    """The recipe's rehearsal as a user runs it; returns its result and seconds."""
    env = {**os.environ, "RISKPO_CACHE": str(cache), "RAY_USAGE_STATS_ENABLED": "0"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "launch.train", f"experiment={recipe}", "rehearse=true",
                             f"run_dir={run_dir}", "logger=none", "logger.plots=false"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return result, time.perf_counter() - start


@pytest.fixture(scope="module")
def rehearsals(request, tmp_path_factory):
    """The selected recipes' rehearsals, CONCURRENT_REHEARSALS at a time in the module's order,
    started when the first test asks: recipe -> (future, run directory). One cache for the
    module: the scaled models and rows are built once and shared (each moved into place whole,
    so a rehearsal never reads one half written beside it)."""
    pytest.importorskip("vllm", reason="the text recipes sample with vLLM: run from .venv-vllm "
                        "(make test-rehearse-text; make test runs them there)")
    selected = [item.callspec.params["recipe"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")]
    cache = tmp_path_factory.mktemp("rehearsal-cache")
    runs = {recipe: tmp_path_factory.mktemp(recipe) / "run" for recipe in selected}
    with ThreadPoolExecutor(CONCURRENT_REHEARSALS) as pool:
        futures: dict[str, Future] = {recipe: pool.submit(rehearse, recipe, run, cache) for recipe, run in runs.items()}
        yield {recipe: (futures[recipe], runs[recipe]) for recipe in selected}
        for future in futures.values():  # a stopped session: the rehearsals not started yet stay so
            future.cancel()


@pytest.mark.parametrize("recipe", TEXT_RECIPES)
def test_the_recipe_rehearses_two_steps_and_prints_its_memory(recipe, rehearsals):
    future, run_dir = rehearsals[recipe]
    result, seconds = future.result()
    print(f"{recipe}: rehearsed in {seconds:.1f} s")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for line in ("kept      learner.zero_stage = 2", "kept      learner.gradient_checkpointing = True",
                 "kept      learner.micro_batch_token_budget = 16384", "kept      rollout.engine = vllm",
                 "kept      cluster.colocate = True", "scaled    learner.num_ranks", "replaced  cluster.device"):
        assert line in output
    steps = [json.loads(row) for row in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in steps] == [1, 2]
    assert all(row["time/sleep"] >= 0 and row["time/wake"] >= 0 for row in steps)  # colocated turns
    config = (run_dir / "config.yaml").read_text()
    assert "rehearse: true" in config and "zero_stage: 2" in config
    _check_export(run_dir, recipe)
    _check_memory(output)


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


def _check_memory(output: str) -> None:
    """The real recipe's memory per GPU, and the formula within 5% of the step measured here."""
    assert "memory per GPU of the real recipe" in output and "peak while training" in output
    checks = re.findall(r"^  (.+?)\s{2,}([\d.]+)\s+([\d.]+)\s+\(([+-][\d.]+)%", output, flags=re.MULTILINE)
    assert len(checks) == 4, output[-3000:]
    for name, _, _, error in checks:
        assert abs(float(error)) < 5.0, f"{name}: the formula is {error}% off the measured step"
