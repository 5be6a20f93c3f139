"""Shared verifier fixtures: one code executor and one math verifier for the whole session."""

from __future__ import annotations

import os

import pytest

# Set before any zygote starts: no sandboxed program may ever see it.
os.environ["VERIFIER_TEST_SECRET"] = "hunter2-do-not-leak"


@pytest.fixture(scope="session")
def code_executor():
    from workers.verifier.executor import CodeExecutor, ExecLimits

    executor = CodeExecutor(num_slots=2, limits=ExecLimits(max_timeout_s=10.0, memory_mb=512))
    yield executor
    executor.close()


@pytest.fixture(scope="session")
def code_verifier(code_executor):
    from workers.verifier.code import CodeLimits, CodeVerifier

    return CodeVerifier(code_executor, CodeLimits(test_timeout_s=3.0, request_timeout_s=30.0))


@pytest.fixture(scope="session")
def patient_code_verifier(code_executor):
    """Same sandbox, 10 s per check: a busy CI machine must not fail honest HumanEval solutions."""
    from workers.verifier.code import CodeLimits, CodeVerifier

    return CodeVerifier(code_executor, CodeLimits(test_timeout_s=10.0, request_timeout_s=60.0))


@pytest.fixture(scope="session")
def math_verifier():
    from workers.verifier.math_verifier import MathLimits, MathVerifier

    verifier = MathVerifier(MathLimits(timeout_s=2, hard_timeout_s=6.0, memory_mb=1536))
    yield verifier
    verifier.close()


@pytest.fixture(scope="session")
def patient_math_verifier():
    """Generous timeouts: equivalences that need sympy's simplify must not fail on a busy CI box."""
    from workers.verifier.math_verifier import MathLimits, MathVerifier

    verifier = MathVerifier(MathLimits(timeout_s=8, hard_timeout_s=30.0, workers=2))
    yield verifier
    verifier.close()
