"""The passes a learner rank runs are those the policy loss declares, and the covariance
controls select their tokens over the rank's whole mini-batch: the shared step of
workers/learner/base.py on a small torch module in this process (one rank, no DeepSpeed), with
every update's gradient kept."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from riskpo.algo.aggregation import get_aggregation
from riskpo.algo.losses import ClipCovLoss, KLCovLoss, LossConfig
from riskpo.batch import TrainBatch
from workers.learner.base import LearnerBackend
from workers.learner.config import LearnerConfig, LearnerSpec
from workers.learner.group import _loss_units, plan_step
from workers.learner.microbatch import MicroBatch, plan_micro_batches, row_lengths, split_rows
from workers.weight_sync import TensorSpec

VOCAB = 24
LEARNING_RATE = 0.5


class TorchBackend(LearnerBackend):
    """LearnerBackend's primitives on an embedding + linear policy: backward accumulates,
    optimizer_step keeps the accumulated gradient and takes an SGD step; forwards are counted
    by kind (policy with or without gradient, reference)."""

    def initialize(self, model_path: str, spec: LearnerSpec, rank: int, world_size: int) -> None:
        self.spec, self.rank, self.world_size = spec, rank, world_size
        self.pad_token_id, self.device, self.suppressed = 0, torch.device("cpu"), []
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Embedding(VOCAB, 8), torch.nn.Tanh(), torch.nn.Linear(8, VOCAB))
        self.reference = torch.nn.Sequential(torch.nn.Embedding(VOCAB, 8), torch.nn.Linear(8, VOCAB))
        self.gradients: list[torch.Tensor] = []
        self.forwards = {"grad": 0, "no_grad": 0, "reference": 0}

    def hidden_states(self, micro: MicroBatch, *, reference: bool = False) -> tuple[torch.Tensor, torch.nn.Module]:
        kind = "reference" if reference else "grad" if torch.is_grad_enabled() else "no_grad"
        self.forwards[kind] += 1
        model = self.reference if reference else self.model
        return model[:-1](micro.input_ids), model[-1]

    def backward(self, loss: torch.Tensor, *, last_micro_batch: bool) -> None:
        loss.backward()

    def optimizer_step(self) -> dict[str, float]:
        gradient = torch.cat([param.grad.flatten() for param in self.model.parameters()])
        self.gradients.append(gradient.clone())
        with torch.no_grad():
            for param in self.model.parameters():
                param -= LEARNING_RATE * param.grad
                param.grad = None
        return {"grad_norm": float(gradient.norm()), "lr": LEARNING_RATE, "skipped": 0.0}

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self.model.named_parameters()

    def parameter_specs(self) -> list[TensorSpec]:
        return [TensorSpec(name, tuple(param.shape), param.dtype) for name, param in self.named_parameters()]

    def save(self, path: str, extra: dict[str, Any]) -> None:
        torch.save({"model": self.model.state_dict(), "extra": extra}, path)

    def load(self, path: str) -> dict[str, Any]:
        state = torch.load(path)
        self.model.load_state_dict(state["model"])
        return state["extra"]

    def export_hf(self, path: str) -> None:
        raise NotImplementedError("the test policy is no Hugging Face model")


def make_batch(rows: int = 16) -> TrainBatch:
    """Prompts of 4 tokens, responses of 3-9, advantages of both signs, row 5 out of the loss."""
    generator = torch.Generator().manual_seed(1)
    prompts = [[1, *torch.randint(2, VOCAB, (3,), generator=generator).tolist()] for _ in range(rows)]
    lengths = torch.randint(3, 10, (rows,), generator=generator).tolist()
    responses = [torch.randint(2, VOCAB, (n,), generator=generator).tolist() for n in lengths]
    advantages = 2 * torch.randn(rows, generator=generator)
    loss_mask = torch.ones(rows, dtype=torch.bool)
    loss_mask[5] = False
    return TrainBatch(prompts, responses, [[-3.0] * n for n in lengths], advantages, loss_mask)


def train_one_step(loss: LossConfig, budget: int) -> TorchBackend:
    """prepare + train_step of one step in two mini-batches, each cut into micro-batches of at
    most `budget` padded tokens, as the learner group plans them."""
    backend = TorchBackend()
    backend.initialize("", LearnerSpec(LearnerConfig(dtype="float32", micro_batch_token_budget=budget), loss), 0, 1)
    batch = make_batch()
    lengths = row_lengths(batch)
    rows = list(range(len(batch)))
    backend.prepare(batch, plan_micro_batches([rows], lengths, budget)[0], loss.needs)
    mini_batches = split_rows(rows, 2)
    aggregation = get_aggregation(loss.aggregation)
    backend.train_step([plan_micro_batches([part], lengths, budget)[0] for part in mini_batches],
                       [_loss_units(batch, part, aggregation) for part in mini_batches], 3, loss.needs)
    return backend


CONTROLS = {
    "clip_cov": (ClipCovLoss, {"fraction": 0.05, "low": -100.0, "high": 100.0}),
    "kl_cov": (KLCovLoss, {"fraction": 0.05, "coef": 1.0}),
}


@pytest.mark.parametrize("name", list(CONTROLS))
def test_covariance_controls_select_over_the_mini_batch_whatever_the_micro_batch_split(name, monkeypatch):
    """With one micro-batch per mini-batch and with eight, the controls select the same tokens
    (max(1, floor(fraction x the mini-batch's loss tokens)) of them, not that many per
    micro-batch) and give the same gradient, the second mini-batch's (after an update) too."""
    loss_class, options = CONTROLS[name]
    selections: list[torch.Tensor] = []
    select = loss_class.select

    def recording_select(self, logprobs, old_logprobs, advantages, response_mask, generator):
        chosen = select(self, logprobs, old_logprobs, advantages, response_mask, generator)
        selections.append(chosen.clone())
        return chosen

    monkeypatch.setattr(loss_class, "select", recording_select)
    loss = LossConfig(name=name, options=options)
    batch = make_batch()
    lengths = row_lengths(batch)
    halves = split_rows(list(range(len(batch))), 2)
    assert [len(plan_micro_batches([part], lengths, 13)[0]) for part in halves] == [8, 8]
    assert [len(plan_micro_batches([part], lengths, 1000)[0]) for part in halves] == [1, 1]
    whole, split = train_one_step(loss, 1000), train_one_step(loss, 13)
    assert len(selections) == 4  # one selection per mini-batch and run
    for first, second in zip(selections[:2], selections[2:], strict=True):
        assert torch.equal(first, second)
    for part, chosen in zip(halves, selections[:2], strict=True):
        loss_tokens = sum(len(batch.response_ids[row]) for row in part if batch.loss_mask[row])
        assert int(chosen.sum()) == max(1, math.floor(0.05 * loss_tokens)) < 8
    assert len(whole.gradients) == len(split.gradients) == 2
    assert not torch.equal(whole.gradients[0], whole.gradients[1])
    for one, eight in zip(whole.gradients, split.gradients, strict=True):
        torch.testing.assert_close(eight, one, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("loss", "reference_pass", "pre_pass"), [
    (LossConfig(), False, False),
    (LossConfig(kl_coef=0.1), True, False),
    (LossConfig(name="kl_cov"), False, True),
    (LossConfig(name="clip_cov", kl_coef=0.1), True, True),
])
def test_a_rank_runs_the_passes_its_loss_declares(loss, reference_pass, pre_pass):
    """In a step of two mini-batches: old log-probs in a separate pass, the reference's only
    with the KL term, and a no-grad pre-pass over each mini-batch before its training forwards
    only for the losses that declare one: forwards counted per micro-batch of each plan."""
    budget = 40
    batch = make_batch()
    lengths = row_lengths(batch)
    logprob_micro_batches = len(plan_micro_batches([list(range(len(batch)))], lengths, budget)[0])
    training_micro_batches = sum(len(plan_micro_batches([part], lengths, budget)[0])
                                 for part in split_rows(list(range(len(batch))), 2))
    assert logprob_micro_batches > 1 and training_micro_batches > 2
    backend = train_one_step(loss, budget)
    assert backend.forwards["reference"] == (logprob_micro_batches if reference_pass else 0)
    assert backend.forwards["no_grad"] == logprob_micro_batches + (training_micro_batches if pre_pass else 0)
    assert backend.forwards["grad"] == training_micro_batches


def one_update(loss: LossConfig, *, old_logprobs_pass: bool, budget: int = 40) -> tuple[TorchBackend, list[dict]]:
    """One on-policy step of one update planned as the learner group plans it, with or without
    the separate old-log-prob pass."""
    spec = LearnerSpec(LearnerConfig(dtype="float32", micro_batch_token_budget=budget), loss)
    backend = TorchBackend()
    backend.initialize("", spec, 0, 1)
    batch = make_batch()
    plan = plan_step(batch, spec, step=0)
    prepared = backend.prepare(batch, plan.logprob_plans[0], loss.needs, old_logprobs_pass=old_logprobs_pass)
    results = backend.train_step(plan.mini_batch_plans[0], plan.loss_units, 0, loss.needs)
    return backend, [prepared, *results]


@pytest.mark.parametrize("loss", [
    LossConfig(),
    LossConfig(aggregation="seq_mean_token_sum", ratio="sequence", dual_clip=None),
    LossConfig(importance_correction="token", kl_coef=0.1, kl_kind="k1", entropy_coef=0.01),
], ids=["token_ppo", "sequence_ratio", "corrected_kl_entropy"])
def test_one_forward_less_gives_the_two_pass_loss_and_gradient(loss):
    """The old log-probs of an on-policy update taken from its own training forward (detached)
    give the loss, metrics, gradient and rollout-learner gap of the separate no-grad pass,
    with no no-grad forward; a second update on the batch starts from the same old log-probs."""
    two_pass, (gap, two_pass_metrics) = one_update(loss, old_logprobs_pass=True)
    one_pass, (none, one_pass_metrics) = one_update(loss, old_logprobs_pass=False)
    assert two_pass.forwards["no_grad"] > 0 and one_pass.forwards["no_grad"] == 0
    assert one_pass.forwards["grad"] == two_pass.forwards["grad"]
    assert torch.equal(one_pass.gradients[0], two_pass.gradients[0])
    assert none == {} and gap["gap_tokens"] > 0
    assert one_pass_metrics.pop("gap_sum") == pytest.approx(gap["gap_sum"], rel=1e-6)
    assert one_pass_metrics.pop("gap_tokens") == gap["gap_tokens"]
    assert one_pass_metrics == two_pass_metrics
    taken, computed = one_pass.prepared.old_logprobs, two_pass.prepared.old_logprobs
    assert all(torch.equal(taken[row], computed[row]) for row in computed if one_pass.prepared.batch.loss_mask[row])


@pytest.mark.parametrize(("changes", "separate_pass"), [
    ({}, False),
    ({"num_mini_batches": 2}, True),
    ({"loss": LossConfig(ppo_epochs=2)}, True),
    ({"loss": LossConfig(name="clip_cov")}, True),
    ({"loss": LossConfig(kl_coef=0.1)}, False),  # the reference's pass stays; the old one goes
])
def test_the_plan_takes_old_logprobs_from_training_only_for_one_on_policy_update(changes, separate_pass):
    loss = changes.pop("loss", LossConfig())
    spec = LearnerSpec(LearnerConfig(dtype="float32", micro_batch_token_budget=40, **changes), loss)
    assert plan_step(make_batch(), spec, step=0).old_logprobs_pass == separate_pass


def test_the_old_logprob_pass_runs_the_first_epochs_micro_batches():
    """Two ranks, two mini-batches, two epochs: each rank's log-prob plan is its first epoch's
    micro-batches in order (every row once), so the first mini-batch trains on exactly what the
    old log-probs were computed on: ratio 1 in any precision."""
    spec = LearnerSpec(LearnerConfig(dtype="float32", num_ranks=2, num_mini_batches=2,
                                     micro_batch_token_budget=30), LossConfig(ppo_epochs=2))
    plan = plan_step(make_batch(), spec, step=3)
    assert plan.old_logprobs_pass and len(plan.loss_units) == 4
    for rank in range(2):
        first_epoch = [micro for mini_batch in plan.mini_batch_plans[rank][:2] for micro in mini_batch]
        assert plan.logprob_plans[rank] == first_epoch
    rows = sorted(row for rank_plan in plan.logprob_plans for micro in rank_plan for row in micro)
    assert rows == list(range(len(make_batch())))
