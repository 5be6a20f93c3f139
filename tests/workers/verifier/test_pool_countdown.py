"""The verifier pool grades Countdown rows (kind math, grader countdown: what the Countdown task
asks for) on its math actors (in-process, bounded), mixed in one batch with math answers, in
input order."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_countdown_and_math_rows_share_the_math_actors(ray_cluster):
    from workers.verifier.config import VerifierConfig
    from workers.verifier.ray_pool import VerifierPool

    pool = VerifierPool({"math": 1}, VerifierConfig(workers_per_actor=1).limits(actor_num_cpus=0.5))
    truth = {"target": 26, "numbers": [3, 5, 7]}
    try:
        countdown = {"kind": "math", "grader": "countdown", "ground_truth": truth}
        rows = [{**countdown, "id": "c1", "response": "3*7+5"},
                {"kind": "math", "id": "m1", "response": "\\boxed{9}", "ground_truth": "9"},
                {**countdown, "id": "c2", "response": "3*7+7"},
                {**countdown, "id": "c3", "response": "(5+" * 5000},
                {"kind": "code", "id": "x1", "response": "print(1)", "tests": {}}]
        results = pool.verify_batch(rows, deadline_s=120)
    finally:
        pool.shutdown()
    assert [r["id"] for r in results] == ["c1", "m1", "c2", "c3", "x1"]
    assert [r["reward"] for r in results] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert results[0]["expression"] == "3*7+5"
    assert results[2]["status"] == "wrong_answer" and results[3]["status"] == "invalid_answer"
    assert results[4]["status"] == "bad_input"  # no code actor in this pool
