"""Reward verifiers: sandboxed code execution and symbolic math, locally or as Ray actors.

Names are imported lazily, so that the sandbox zygote and the math workers (which import
submodules of this package) stay small and never load Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CodeExecutor": "executor", "ExecLimits": "executor", "SandboxUnavailable": "executor",
    "CodeLimits": "code", "CodeVerifier": "code", "extract_code": "code",
    "MathLimits": "math_verifier", "MathVerifier": "math_verifier",
    "extract_answer": "math_extract", "make_result": "results",
    "VerifierLimits": "ray_pool", "VerifierPool": "ray_pool",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'workers.verifier' has no attribute {name!r}")
    return getattr(importlib.import_module(f"workers.verifier.{_EXPORTS[name]}"), name)
