"""Updates of a real learner (the tiny model, DeepSpeed ZeRO 1 over gloo on a local Ray cluster):
the logged learning rate is the one each update used under warm-up, and KL-Cov's gradient does
not depend on how the memory budget cuts its mini-batches into micro-batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from riskpo.algo.losses import LossConfig
from riskpo.batch import TrainBatch
from riskpo.models.tiny import build_tiny_model
from workers.learner.config import LearnerConfig, LearnerSpec
from workers.learner.group import LearnerGroup
from workers.learner.microbatch import plan_micro_batches, row_lengths, split_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


def make_batch(rows: int = 16) -> TrainBatch:
    generator = torch.Generator().manual_seed(4)
    prompts = [[1, *torch.randint(4, 60, (4,), generator=generator).tolist()] for _ in range(rows)]
    lengths = torch.randint(3, 10, (rows,), generator=generator).tolist()
    responses = [torch.randint(4, 60, (n,), generator=generator).tolist() for n in lengths]
    advantages = 2 * torch.randn(rows, generator=generator)
    return TrainBatch(prompts, responses, [[-4.0] * n for n in lengths], advantages,
                      torch.ones(rows, dtype=torch.bool))


def test_the_logged_learning_rate_is_the_one_each_update_used(ray_cluster, tiny_model_path):
    """Warm-up 4, lr 1e-3: update u uses (u + 1) / 4 * lr and logs it (it logged the next
    update's, 5e-4 for the first). Adam's first step moves every parameter with a gradient by
    about the rate itself (no weight decay): 2.5e-4."""
    config = LearnerConfig(num_ranks=1, zero_stage=1, dtype="float32", lr=1e-3, warmup_steps=4, weight_decay=0.0)
    group = LearnerGroup(str(tiny_model_path), LearnerSpec(config))
    try:
        before = group.state_dict()
        rates = [group.train_step(make_batch())["lr"]]
        after = group.state_dict()
        rates += [group.train_step(make_batch())["lr"] for _ in range(4)]
        assert rates == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3], rel=1e-9)
        moved = max(float((after[name] - tensor).abs().max()) for name, tensor in before.items())
        assert moved == pytest.approx(2.5e-4, rel=1e-3)
    finally:
        group.shutdown()


def test_kl_cov_gradient_is_the_same_for_one_and_many_micro_batches(ray_cluster, tiny_model_path, tmp_path):
    """Two mini-batches of KL-Cov (the second after an update, so the penalty bites) with every
    mini-batch in one micro-batch, then from the same checkpoint in one micro-batch per row:
    the same selection (the penalised share) and the same gradient norms and weights."""
    loss = LossConfig(name="kl_cov", options={"fraction": 0.05})
    config = LearnerConfig(num_ranks=1, zero_stage=1, dtype="float32", lr=1e-3, num_mini_batches=2, micro_batch_token_budget=4096)
    group = LearnerGroup(str(tiny_model_path), LearnerSpec(config, loss))
    try:
        batch = make_batch()
        group.save(str(tmp_path / "start"))
        whole = group.train_step(batch)
        whole_state = group.state_dict()
        group.load(str(tmp_path / "start"))
        group.spec.config.micro_batch_token_budget = max(row_lengths(batch))  # a row per micro-batch
        halves = split_rows(list(range(len(batch))), 2)
        assert all(len(plan_micro_batches([half], row_lengths(batch), max(row_lengths(batch)))[0]) == 8
                   for half in halves)
        split = group.train_step(batch)
        assert split["cov_detached_fraction"] == pytest.approx(whole["cov_detached_fraction"], rel=1e-9)
        assert split["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-5)
        assert split["loss"] == pytest.approx(whole["loss"], rel=1e-5, abs=1e-7)
        for name, tensor in group.state_dict().items():
            torch.testing.assert_close(tensor, whole_state[name], rtol=1e-5, atol=1e-7, msg=name)
    finally:
        group.shutdown()
