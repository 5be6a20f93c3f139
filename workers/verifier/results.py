"""Verifier result rows: one constructor every verifier uses. The status vocabulary is the
step's (riskpo.messages); the verifiers read it from here as R.OK, R.WRONG_ANSWER, ..."""

from __future__ import annotations

from typing import Any

from riskpo.messages import (
    BAD_INPUT,
    COMPILE_ERROR,
    CRASH,
    INFRA_ERROR,
    INVALID_ANSWER,
    MASKED_STATUSES,
    MEMORY,
    MODEL_STATUSES,
    NO_ANSWER,
    OK,
    OUTPUT_LIMIT,
    RUNTIME_ERROR,
    TIMEOUT,
    WRONG_ANSWER,
    is_masked,
)

__all__ = [
    "BAD_INPUT", "COMPILE_ERROR", "CRASH", "INFRA_ERROR", "INVALID_ANSWER", "MASKED_STATUSES",
    "MEMORY", "MESSAGE_LIMIT", "MODEL_STATUSES", "NO_ANSWER", "OK", "OUTPUT_LIMIT",
    "RUNTIME_ERROR", "TIMEOUT", "WRONG_ANSWER", "is_masked", "make_result",
]

MESSAGE_LIMIT = 500


def make_result(
    row_id: Any,
    status: str,
    *,
    passed: int = 0,
    total: int = 1,
    layers: dict[str, Any] | None = None,
    message: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """Build one result row; reward is 1.0 only for status ok with every test passed."""
    if status not in MODEL_STATUSES and status not in MASKED_STATUSES:
        raise ValueError(f"unknown verifier status {status!r}")
    reward = 1.0 if status == OK and passed == total and total > 0 else 0.0
    row = {
        "id": row_id,
        "reward": reward,
        "status": status,
        "passed": passed,
        "total": total,
        "layers": layers or {},
        "message": message[:MESSAGE_LIMIT],
    }
    row.update(extra)
    return row
