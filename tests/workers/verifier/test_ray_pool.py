"""VerifierPool on a local Ray cluster: order, mixed kinds (a row's kind names the actor kind, its
grader what that actor runs), deadlines, actor death → infra_error."""

from __future__ import annotations

import threading
import time

import pytest

from workers.verifier import results as R

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pool(ray_cluster):
    from workers.verifier.code import CodeLimits
    from workers.verifier.executor import ExecLimits
    from workers.verifier.math_verifier import MathLimits
    from workers.verifier.ray_pool import VerifierLimits, VerifierPool

    limits = VerifierLimits(code=CodeLimits(test_timeout_s=2.0), sandbox=ExecLimits(4.0, 512),
                            math=MathLimits(workers=1, hard_timeout_s=6.0), chunk_size=2,
                            max_in_flight_per_actor=1, actor_num_cpus=0.5)
    verifier_pool = VerifierPool({"math": 1, "code": 1}, limits)
    yield verifier_pool
    verifier_pool.shutdown()


def code_row(row_id: str, body: str, kind: str = "code") -> dict:
    response = f"Here it is:\n```python\n{body}\n```\n"
    return {"kind": kind, "id": row_id, "response": response,
            "tests": {"style": "call", "fn_name": "f", "cases": [{"args": [3], "expected": 9}]}}


def test_mixed_batch_in_input_order(pool):
    rows = [
        {"kind": "math", "id": "m1", "response": "\\boxed{9}", "ground_truth": "9"},
        code_row("c1", "def f(x): return x * x"),
        {"kind": "math", "id": "m2", "response": "\\boxed{8}", "ground_truth": "9"},
        code_row("c2", "def f(x): return x + x"),
        code_row("c3", "def f(x):\n    while True: pass"),
        {"kind": "poetry", "id": "p"},
        {"kind": "countdown", "id": "k", "response": "1", "ground_truth": {"target": 1, "numbers": [1]}},
        {"kind": "math", "grader": "haiku", "id": "g1", "response": "9", "ground_truth": "9"},
        dict(code_row("g2", "def f(x): return x * x"), grader="countdown"),
    ]
    results = pool.verify_batch(rows, deadline_s=60)
    assert [r["id"] for r in results] == ["m1", "c1", "m2", "c2", "c3", "p", "k", "g1", "g2"]
    assert [r["status"] for r in results] == [R.OK, R.OK, R.WRONG_ANSWER, R.WRONG_ANSWER,
                                              R.TIMEOUT] + [R.BAD_INPUT] * 4
    assert results[7]["message"] == "no verifier for kind 'math' with grader 'haiku'"
    assert results[1]["layers"]["rlimits"] is True
    assert pool.layers["code"]["rlimits"] is True


def test_batch_deadline_masks_unfinished_rows(pool):
    rows = [code_row(f"slow{i}", "def f(x):\n    while True: pass") for i in range(4)]
    start = time.monotonic()
    results = pool.verify_batch(rows, deadline_s=1.0)
    assert time.monotonic() - start < 4.0
    assert any(r["status"] == R.INFRA_ERROR for r in results)
    assert all(r["reward"] == 0.0 for r in results)


def test_dead_actor_gives_infra_error_without_retry_and_restarts(pool):
    import ray

    rows = [code_row(f"s{i}", "import time\ndef f(x):\n    time.sleep(1.5)\n    return 9")
            for i in range(2)]
    holder = {}
    worker = threading.Thread(target=lambda: holder.update(out=pool.verify_batch(rows, 60)))
    worker.start()
    time.sleep(0.7)
    ray.kill(pool.actors["code"][0], no_restart=False)
    worker.join(timeout=60)
    assert [r["status"] for r in holder["out"]] == [R.INFRA_ERROR, R.INFRA_ERROR]
    again = pool.verify_batch([code_row("after", "def f(x): return x * x")], deadline_s=60)
    assert again[0]["status"] == R.OK, again[0]["message"]
