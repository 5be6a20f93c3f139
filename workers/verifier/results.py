"""Verifier result rows: the status vocabulary and one constructor every verifier uses."""

from __future__ import annotations

from typing import Any

# Model failures: the trainer scores them (reward 0 unless the status says otherwise).
OK = "ok"
WRONG_ANSWER = "wrong_answer"
RUNTIME_ERROR = "runtime_error"
TIMEOUT = "timeout"
MEMORY = "memory"
OUTPUT_LIMIT = "output_limit"
CRASH = "crash"
COMPILE_ERROR = "compile_error"
NO_ANSWER = "no_answer"
INVALID_ANSWER = "invalid_answer"
# Not the model's fault: the trainer should mask these rows instead of scoring them.
BAD_INPUT = "bad_input"
INFRA_ERROR = "infra_error"

MODEL_STATUSES = frozenset(
    {OK, WRONG_ANSWER, RUNTIME_ERROR, TIMEOUT, MEMORY, OUTPUT_LIMIT, CRASH, COMPILE_ERROR,
     NO_ANSWER, INVALID_ANSWER}
)
MASKED_STATUSES = frozenset({BAD_INPUT, INFRA_ERROR})

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


def is_masked(result: dict[str, Any]) -> bool:
    """True when a result reflects an infrastructure or input failure, not the model's answer."""
    return result.get("status") in MASKED_STATUSES
