"""Reward verifiers: sandboxed code execution and symbolic math, locally or as Ray actors."""

from __future__ import annotations

from typing import Any

from workers.verifier.code import CodeLimits, CodeVerifier, extract_code
from workers.verifier.executor import CodeExecutor, ExecLimits, SandboxUnavailable
from workers.verifier.math_extract import extract_answer
from workers.verifier.math_verifier import MathLimits, MathVerifier
from workers.verifier.results import is_masked, make_result

__all__ = [
    "CodeExecutor", "CodeLimits", "CodeVerifier", "ExecLimits", "MathLimits", "MathVerifier",
    "SandboxUnavailable", "VerifierLimits", "VerifierPool", "extract_answer", "extract_code",
    "is_masked", "make_result",
]


def __getattr__(name: str) -> Any:
    """Import the Ray layer only when asked for (ray is slow to import)."""
    if name in ("VerifierPool", "VerifierLimits"):
        from workers.verifier import ray_pool

        return getattr(ray_pool, name)
    raise AttributeError(name)
