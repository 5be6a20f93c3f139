"""Log-probs and entropy from hidden states in chunks of tokens (workers/learner/logits.py) equal
the full-logit path (riskpo.algo.losses.token_logprobs, entropy_from_logits), in value and in
gradient, in float32 and bfloat16, with a suppressed token (a VLM's image token) at -inf;
and the objective built from them (policy_objective) equals micro_batch_objective on logits."""

from __future__ import annotations

import pytest
import torch

from riskpo.algo.losses import (
    LossConfig,
    build_policy_loss,
    entropy_from_logits,
    micro_batch_objective,
    policy_objective,
    token_logprobs,
)
from riskpo.models.vlm import mask_suppressed
from workers.learner.logits import token_stats

ROWS, LENGTH, WIDTH, VOCAB = 3, 11, 16, 50
SUPPRESSED = [7]
TEMPERATURE = 0.7
# float32: summation order only; bfloat16: the output layer rounds its logits to bf16 either way,
# the rest is float32 in both paths
TOLERANCES = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.bfloat16: {"rtol": 1e-4, "atol": 1e-4}}


def inputs(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.nn.Linear, torch.Tensor, torch.Tensor]:
    """Hidden states [B, L, H], an output layer, token ids (none of them the suppressed one
    where a log-prob is asked) and response positions [B, L-1] of unequal rows."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(ROWS, LENGTH, WIDTH, generator=generator).to(dtype).requires_grad_()
    head = torch.nn.Linear(WIDTH, VOCAB, bias=False).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(VOCAB, WIDTH, generator=generator) * 2)
    ids = torch.randint(0, VOCAB, (ROWS, LENGTH), generator=generator)
    ids[ids == SUPPRESSED[0]] = SUPPRESSED[0] + 1
    positions = torch.zeros(ROWS, LENGTH - 1, dtype=torch.bool)
    for row, (start, stop) in enumerate([(2, 10), (4, 7), (0, 10)]):
        positions[row, start:stop] = True
    return hidden, head, ids, positions


def full_logit_stats(hidden, head, ids, suppressed):
    logits = mask_suppressed(head(hidden), suppressed)
    return (token_logprobs(logits, ids, TEMPERATURE),
            entropy_from_logits(logits[:, :-1].float() / TEMPERATURE))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("chunk_tokens", [1, 5, 1000])
@pytest.mark.parametrize("suppressed", [[], SUPPRESSED], ids=["text", "suppressed"])
def test_chunked_logprobs_and_entropy_equal_the_full_logit_path(dtype, chunk_tokens, suppressed):
    hidden, head, ids, positions = inputs(dtype)
    stats = token_stats(hidden, head, ids, positions, TEMPERATURE, suppressed,
                        chunk_tokens=chunk_tokens, entropy=True, entropy_grad=True)
    logprobs, entropy = full_logit_stats(hidden, head, ids, suppressed)
    assert stats.logprobs.dtype == stats.entropy.dtype == torch.float32
    tolerance = TOLERANCES[dtype]
    torch.testing.assert_close(stats.logprobs, torch.where(positions, logprobs, 0.0), **tolerance)
    torch.testing.assert_close(stats.entropy, torch.where(positions, entropy, 0.0), **tolerance)
    assert torch.isfinite(stats.entropy).all() and torch.isfinite(stats.logprobs).all()

    weights = torch.randn(ROWS, LENGTH - 1, generator=torch.Generator().manual_seed(3))

    def gradients(values_logprobs, values_entropy, wrt):
        total = ((values_logprobs * weights).where(positions, 0.0).sum()
                 + (values_entropy * weights).where(positions, 0.0).sum())
        return torch.autograd.grad(total, wrt)

    chunked = gradients(stats.logprobs, stats.entropy, [hidden, head.weight])
    if dtype == torch.float32:
        full = gradients(logprobs, entropy, [hidden, head.weight])
        for ours, theirs in zip(chunked, full, strict=True):
            torch.testing.assert_close(ours, theirs, **tolerance)
        return
    # bf16 gradients: both paths round them to bf16 (the full-logit path twice: its log-prob
    # and entropy gradients meet in bf16), so each is held against the float32 gradient of the
    # same bf16-valued inputs, within bf16's resolution of the largest entry
    exact_hidden = hidden.detach().float().requires_grad_()
    exact_head = torch.nn.Linear(WIDTH, VOCAB, bias=False)
    with torch.no_grad():
        exact_head.weight.copy_(head.weight.float())
    exact = gradients(*full_logit_stats(exact_hidden, exact_head, ids, suppressed), [exact_hidden, exact_head.weight])
    for ours, truth in zip(chunked, exact, strict=True):
        scale = float(truth.abs().max())
        torch.testing.assert_close(ours.float(), truth, rtol=2e-2, atol=2e-2 * scale)


def test_the_entropy_is_a_detached_metric_unless_a_bonus_needs_its_gradient():
    hidden, head, ids, positions = inputs(torch.float32)
    metric = token_stats(hidden, head, ids, positions, TEMPERATURE, entropy=True).entropy
    assert not metric.requires_grad
    bonus = token_stats(hidden, head, ids, positions, TEMPERATURE, entropy=True, entropy_grad=True).entropy
    assert bonus.requires_grad
    assert token_stats(hidden, head, ids, positions, TEMPERATURE, entropy=False).entropy is None
    with torch.no_grad():
        no_grad = token_stats(hidden, head, ids, positions, TEMPERATURE, chunk_tokens=4)
    torch.testing.assert_close(no_grad.entropy, metric)


def test_a_chunk_of_logits_is_recomputed_in_the_backward_not_kept():
    """Under autograd the tensors kept for the backward hold no vocabulary-wide values (the
    full-logit path keeps several): each chunk keeps only its hidden states and recomputes its
    logits when the backward reaches it."""
    hidden, head, ids, positions = inputs(torch.float32)

    def vocabulary_wide_saved(compute) -> int:
        shapes: list[tuple[int, ...]] = []

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            shapes.append(tuple(tensor.shape))
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            values = compute()
        values.sum().backward()
        return sum(1 for shape in shapes if shape[-1:] == (VOCAB,))

    assert vocabulary_wide_saved(lambda: full_logit_stats(hidden, head, ids, [])[0]) >= 2
    assert vocabulary_wide_saved(
        lambda: token_stats(hidden, head, ids, positions, TEMPERATURE, chunk_tokens=4).logprobs) == 0
    assert hidden.grad is not None and head.weight.grad is not None


@pytest.mark.parametrize("config", [LossConfig(), LossConfig(entropy_coef=0.01, kl_coef=0.1,
                                                               importance_correction="token")])
def test_policy_objective_on_chunked_stats_equals_the_objective_on_logits(config):
    hidden, head, ids, positions = inputs(torch.float32)
    advantages = torch.tensor([1.0, -0.5, 0.25])
    old = torch.full((ROWS, LENGTH - 1), -4.0)
    loss = build_policy_loss(config)
    kwargs = {"loss_units": float(positions.sum()), "rollout_logprobs": old - 0.1, "ref_logprobs": old + 0.2}
    on_logits, logit_sums = micro_batch_objective(head(hidden), ids, positions, advantages, old, loss,
                                                  temperature=TEMPERATURE, **kwargs)
    stats = token_stats(hidden, head, ids, positions, TEMPERATURE, entropy=True,
                        entropy_grad=config.entropy_coef > 0)
    on_stats, stat_sums = policy_objective(stats.logprobs, stats.entropy, positions, advantages, old,
                                           loss, **kwargs)
    torch.testing.assert_close(on_stats, on_logits)
    assert stat_sums.keys() == logit_sums.keys()
    for key in stat_sums:
        assert stat_sums[key] == pytest.approx(logit_sums[key], rel=1e-5, abs=1e-6), key
    full = torch.autograd.grad(on_logits, [hidden, head.weight])
    chunked = torch.autograd.grad(on_stats, [hidden, head.weight])
    for a, b in zip(chunked, full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
