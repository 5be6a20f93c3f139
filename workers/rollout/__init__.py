"""Rollout workers: one engine interface (hf on CPU, vllm on GPU), the Ray rollout actor and
the rollout group that shards prompts over actors. `make_engine` is the one way to build an
engine; Ray is imported only by the actor and group modules. The messages engines take and
return (Prompt, SamplingParams, Completion) are the step's, in riskpo.messages."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.rollout.engine import RolloutEngine

__all__ = ["ENGINE_KINDS", "RolloutEngine", "make_engine"]

# kind -> "module:class"; vllm's module imports vllm only when an engine is built.
ENGINE_KINDS = {
    "hf": "workers.rollout.hf_engine:HFEngine",
    "vllm": "workers.rollout.vllm_engine:VLLMEngine",
}


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
