"""The learner's skipped-update signal with real DeepSpeed ranks: a mini-batch whose gradients
are not finite is skipped by DeepSpeed (the parameters stay as they were) and reported as
skipped_updates, the count the driver stops a diverging run on (riskpo/run/stops.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from riskpo.batch import TrainBatch
from riskpo.models.tiny import build_tiny_model
from workers.learner.config import LearnerConfig, LearnerSpec
from workers.learner.group import LearnerGroup

pytestmark = pytest.mark.slow


def batch(advantage: float, rows: int = 8) -> TrainBatch:
    generator = torch.Generator().manual_seed(0)
    prompts = [[1, *torch.randint(4, 60, (4,), generator=generator).tolist()] for _ in range(rows)]
    responses = [torch.randint(4, 60, (5,), generator=generator).tolist() for _ in range(rows)]
    advantages = torch.tensor([advantage if i % 2 else -1.0 for i in range(rows)])
    return TrainBatch(prompts, responses, [[-4.0] * 5 for _ in range(rows)], advantages,
                      torch.ones(rows, dtype=torch.bool))


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.mark.parametrize(("zero_stage", "dtype"), [(0, "float32"), (0, "bfloat16"), (1, "float32"),
                                                   (2, "float32")])
def test_non_finite_gradients_are_a_skipped_update(ray_cluster, tiny_model_path, zero_stage, dtype):
    """Stage 0 in float32 (the torch optimizer as it is) skips by the learner's own check."""
    config = LearnerConfig(num_ranks=1, zero_stage=zero_stage, dtype=dtype, lr=1e-3, num_mini_batches=1)
    group = LearnerGroup(str(tiny_model_path), LearnerSpec(config))
    try:
        before = group.state_dict()
        broken = group.train_step(batch(float("nan")))
        assert broken["skipped_updates"] == 1 and broken["trailing_skipped_updates"] == 1
        assert not math.isfinite(broken["grad_norm"])
        after = group.state_dict()
        for name, tensor in before.items():  # DeepSpeed skipped the update
            torch.testing.assert_close(after[name], tensor, rtol=0, atol=0, msg=name)
        healthy = group.train_step(batch(1.0))
        assert healthy["skipped_updates"] == 0 and math.isfinite(healthy["grad_norm"])
        assert any(not torch.equal(group.state_dict()[name], tensor) for name, tensor in before.items())
    finally:
        group.shutdown()
