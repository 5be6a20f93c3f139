"""Which engines the rollout tests run against here, and how they are built for tests."""

from __future__ import annotations

import importlib.util

import pytest

VLLM_AVAILABLE = importlib.util.find_spec("vllm") is not None
ENGINE_KINDS = [pytest.param("hf")] + (
    [pytest.param("vllm", marks=pytest.mark.vllm)] if VLLM_AVAILABLE else []
)
# Small and eager, so the CPU backend starts in seconds rather than compiling for a minute.
ENGINE_KWARGS = {
    "hf": {"num_threads": 1},
    "vllm": {"dtype": "float32", "enforce_eager": True, "max_model_len": 256},
}
