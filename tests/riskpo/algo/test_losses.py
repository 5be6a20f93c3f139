"""The policy loss: PPO's clipped surrogate by hand, the aggregations (each one object: the
group's normaliser and the micro-batch shares), truncated importance sampling, the KL
estimators' values and exact expected gradients, log-probs and entropy with masked vocabulary
entries in every precision, and the registry of losses with their options and declarations."""

from __future__ import annotations

import math

import pytest
import torch

from riskpo.algo.aggregation import AGGREGATIONS, get_aggregation
from riskpo.algo.kl import KL_KINDS, kl_penalty, kl_term
from riskpo.algo.losses import (
    POLICY_LOSSES,
    LossConfig,
    PolicyLoss,
    build_policy_loss,
    entropy_from_logits,
    micro_batch_objective,
    register_policy_loss,
    token_logprobs,
)
from riskpo.algo.ppo import importance_weights, ppo_token_losses
from riskpo.models.vlm import mask_suppressed
from riskpo.options import ConfigError

RATIOS = torch.tensor([[1.5, 0.9], [5.0, 0.7]], dtype=torch.float64)
ADVANTAGES = torch.tensor([1.0, -1.0], dtype=torch.float64)
# per-token losses by hand (clip 0.2, dual clip 3):
#   A=+1: ratio 1.5 -> max(-1.5, -1.2) = -1.2 (clipped); ratio 0.9 -> -0.9
#   A=-1: ratio 5.0 -> max(5, 1.2) = 5, dual-capped at 3; ratio 0.7 -> max(0.7, 0.8) = 0.8 (clipped)
TOKEN_LOSSES = torch.tensor([[-1.2, -0.9], [3.0, 0.8]], dtype=torch.float64)


def _inputs():
    old = torch.tensor([[-1.0, -2.0], [-3.0, -0.5]], dtype=torch.float64)
    new = (old + RATIOS.log()).requires_grad_()
    return new, old


def _mean(values, mask, mode="token_mean", weights=None):
    return get_aggregation(mode).reduce(values, mask, weights)


# ----------------------------------------------------------------------------- PPO by hand


def test_clipped_and_dual_clipped_loss_by_hand():
    new, old = _inputs()
    mask = torch.ones(2, 2, dtype=torch.bool)
    token_loss, metrics = ppo_token_losses(new, old, ADVANTAGES, mask)
    loss = _mean(token_loss, mask)
    assert loss.item() == pytest.approx(TOKEN_LOSSES.mean().item())
    assert metrics["clip_fraction"] == pytest.approx(0.5)
    assert metrics["dual_clip_fraction"] == pytest.approx(0.25)
    assert metrics["approx_kl"] == pytest.approx(-RATIOS.log().mean().item())
    loss.backward()
    # only the unclipped token (row 0, token 1) carries gradient: d(-A r)/d logp = -A r / 4
    expected = torch.tensor([[0.0, -0.9 / 4], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(new.grad, expected)


def test_dual_clip_off_and_asymmetric_clip():
    new, old = _inputs()
    mask = torch.ones(2, 2, dtype=torch.bool)
    token_loss, metrics = ppo_token_losses(new, old, ADVANTAGES, mask, dual_clip=None, clip_high=0.6)
    # A=+1 ratio 1.5 now inside [0.8, 1.6]: -1.5; A=-1 ratio 5 uncapped: 5
    assert _mean(token_loss, mask).item() == pytest.approx((-1.5 - 0.9 + 5.0 + 0.8) / 4)
    assert metrics["dual_clip_fraction"] == 0.0 and metrics["clip_fraction"] == pytest.approx(0.25)


def test_token_level_advantages_equal_broadcast_sequence_advantages():
    new, old = _inputs()
    mask = torch.ones(2, 2, dtype=torch.bool)
    per_sequence, _ = ppo_token_losses(new, old, ADVANTAGES, mask)
    per_token, _ = ppo_token_losses(new, old, ADVANTAGES[:, None].expand(2, 2), mask)
    torch.testing.assert_close(per_sequence, per_token)


def test_ppo_input_errors():
    new, old = _inputs()
    mask = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="advantages"):
        ppo_token_losses(new, old, torch.ones(3), mask)
    with pytest.raises(ValueError, match="must agree"):
        ppo_token_losses(new, old[:, :1], ADVANTAGES, mask)


# ----------------------------------------------------------------------------- aggregations


@pytest.mark.parametrize(("mode", "expected"), [
    ("token_mean", (-1.2 + 3.0 + 0.8) / 3),
    ("seq_mean_token_sum", (-1.2 + 3.8) / 2),
    ("seq_mean_token_mean", (-1.2 / 1 + 3.8 / 2) / 2),
    ("paper_mean", (0.25 * -1.2 + 0.5 * 3.8 / 2) / 0.75),
])
def test_aggregation_modes_by_hand(mode, expected):
    mask = torch.tensor([[True, False], [True, True]])
    weights = torch.tensor([0.25, 0.5], dtype=torch.float64)
    assert _mean(TOKEN_LOSSES, mask, mode, weights).item() == pytest.approx(expected)


def test_aggregation_units_are_the_groups_normaliser():
    """units() is what the learner group divides a mini-batch by: loss tokens, rows (masked
    rows included), or the loss rows' weights; 0 when no row is in the loss."""
    tokens, weights = [3, 0, 2], [0.5, 0.7, 0.25]
    assert get_aggregation("token_mean").units(tokens, weights) == 5.0
    assert get_aggregation("seq_mean_token_sum").units(tokens, weights) == 3.0
    assert get_aggregation("seq_mean_token_mean").units(tokens, None) == 3.0
    assert get_aggregation("paper_mean").units(tokens, weights) == 0.75
    for aggregation in AGGREGATIONS.values():
        assert aggregation.units([0, 0], [1.0, 1.0]) == 0.0
    with pytest.raises(ValueError, match="loss weights"):
        get_aggregation("paper_mean").units(tokens, None)
    assert [name for name, a in AGGREGATIONS.items() if a.needs_loss_weights] == ["paper_mean"]


def test_aggregation_of_no_tokens_is_zero_and_unknown_names_are_refused():
    empty = torch.zeros(2, 2, dtype=torch.bool)
    for mode in AGGREGATIONS:
        assert _mean(TOKEN_LOSSES, empty, mode, torch.zeros(2, dtype=torch.float64)).item() == 0.0
    with pytest.raises(ValueError, match="aggregation"):
        get_aggregation("sum")
    with pytest.raises(ValueError, match="loss weights"):
        _mean(TOKEN_LOSSES, empty, "paper_mean")


def _logits_batch(seed=0, rows=6, length=7, vocab=9):
    """Random logits, targets, a prompt of 2 tokens, a shorter response and a row out of the
    loss (row 2, weight 0 as RiskPO gives rows out of its papers)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, length, vocab, generator=generator, dtype=torch.float64)
    input_ids = torch.randint(0, vocab, (rows, length), generator=generator)
    mask = torch.ones(rows, length - 1, dtype=torch.bool)
    mask[:, :2] = False
    mask[3, 4:] = False
    mask[2] = False
    advantages = torch.randn(rows, generator=generator, dtype=torch.float64)
    old = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    old = old + 0.1 * torch.randn(old.shape, generator=generator, dtype=torch.float64)
    ref = old - 0.3 * torch.rand(old.shape, generator=generator, dtype=torch.float64)
    weights = torch.rand(rows, generator=generator, dtype=torch.float64)
    weights[2] = 0.0
    return logits, input_ids, mask, advantages, old, ref, weights


def _selection(loss, logits, input_ids, mask, advantages, old):
    """The loss's pre-pass selection over the whole mini-batch (None without a pre-pass)."""
    if not loss.mini_batch_pre_pass:
        return None
    logprobs = torch.where(mask, token_logprobs(logits.detach(), input_ids, 1.0), 0.0)
    return loss.select(logprobs, old, advantages, mask, torch.Generator().manual_seed(7))


SPLITS = [[slice(0, 6)], [slice(0, 1), slice(1, 4), slice(4, 6)], [slice(i, i + 1) for i in range(6)]]


@pytest.mark.parametrize("aggregation", list(AGGREGATIONS))
@pytest.mark.parametrize("loss_name", list(POLICY_LOSSES))
def test_micro_batch_shares_add_up_to_the_mini_batch_objective(aggregation, loss_name):
    """Split into micro-batches in any way, each scaled by its share of the aggregation's units
    of the mini-batch (what the learner group computes), the objective (policy term - entropy
    bonus + KL) and its gradient equal those of the whole mini-batch at once, for every
    aggregation and every registered loss (the covariance controls with the selection of their
    pre-pass over the mini-batch)."""
    logits, input_ids, mask, advantages, old, ref, weights = _logits_batch()
    options = {"fraction": 0.2} if loss_name != "ppo" else {}
    loss = build_policy_loss(LossConfig(name=loss_name, options=options, aggregation=aggregation,
                                        entropy_coef=0.01, kl_coef=0.1))
    selected = _selection(loss, logits, input_ids, mask, advantages, old)
    units = loss.aggregation.units([int(row.sum()) for row in mask], weights.tolist())
    gradients, totals = [], []
    for split in SPLITS:
        leaf = logits.clone().requires_grad_()
        parts = [micro_batch_objective(leaf[rows], input_ids[rows], mask[rows], advantages[rows],
                                       old[rows], loss, loss_units=units, temperature=1.0,
                                       ref_logprobs=ref[rows], loss_weights=weights[rows],
                                       selected=None if selected is None else selected[rows])
                 for rows in split]
        total = sum(part[0] for part in parts)
        gradients.append(torch.autograd.grad(total, leaf)[0])
        totals.append(total.item())
        assert sum(part[1]["tokens"] for part in parts) == float(mask.sum())
    # (log-probs are computed in float32, as the learner does)
    assert totals[1] == pytest.approx(totals[0], rel=1e-6) and totals[2] == pytest.approx(totals[0], rel=1e-6)
    torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gradients[2], gradients[0], rtol=1e-5, atol=1e-7)
    logprobs = torch.where(mask, token_logprobs(logits, input_ids, 1.0), 0.0)
    policy, _ = loss.token_losses(logprobs, old, advantages, mask, selected)
    reduce = loss.aggregation.reduce
    entropy = reduce(entropy_from_logits(logits[:, :-1]), mask, weights)
    kl = reduce(kl_term(logprobs, ref, old, "k2"), mask, weights)
    whole = reduce(policy, mask, weights) - 0.01 * entropy + 0.1 * kl
    assert totals[0] == pytest.approx(whole.item(), rel=1e-6)


# ----------------------------------------------------------------------------- importance sampling


def test_truncated_importance_sampling_by_hand_token_and_sequence_level():
    new, old = _inputs()
    mask = torch.ones(2, 2, dtype=torch.bool)
    weights = torch.tensor([[2.0, 0.5], [1.0, 4.0]], dtype=torch.float64)  # pi_old / pi_rollout
    rollout = old - weights.log()
    token_weights, truncated = importance_weights(old, rollout, mask, "token", 1.5)
    torch.testing.assert_close(token_weights, weights.clamp(max=1.5))
    assert truncated.tolist() == [[True, False], [False, True]]  # 2.0 and 4.0 were cut
    # sequence level: the product over the response, 2 * 0.5 = 1 and 1 * 4 = 4 -> 1.5
    sequence_weights, truncated = importance_weights(old, rollout, mask, "sequence", 1.5)
    torch.testing.assert_close(sequence_weights, torch.tensor([[1.0, 1.0], [1.5, 1.5]], dtype=torch.float64))
    assert truncated.tolist() == [[False, False], [True, True]]
    assert not sequence_weights.requires_grad


def test_the_objective_weighs_policy_and_kl_terms_by_the_truncated_importance_weights():
    logits, input_ids, mask, advantages, old, ref, _ = _logits_batch(1)
    rollout = old + 0.4 * torch.randn(old.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    units = float(mask.sum())
    corrected = build_policy_loss(LossConfig(importance_correction="token", importance_cap=1.2, kl_coef=0.5))
    objective, sums = micro_batch_objective(logits, input_ids, mask, advantages, old, corrected,
                                            loss_units=units, temperature=1.0,
                                            rollout_logprobs=rollout, ref_logprobs=ref)
    weight, truncated = importance_weights(old, rollout, mask, "token", 1.2)
    logprobs = torch.where(mask, token_logprobs(logits, input_ids, 1.0), 0.0)
    policy, _ = corrected.token_losses(logprobs, old, advantages, mask, None)
    expected = _mean(policy * weight, mask) + 0.5 * _mean(kl_term(logprobs, ref, old) * weight, mask)
    assert objective.item() == pytest.approx(expected.item(), rel=1e-9)
    assert sums["is_mean"] / sums["tokens"] == pytest.approx(weight[mask].mean().item())
    assert sums["is_truncated_fraction"] / sums["tokens"] == pytest.approx(truncated[mask].double().mean().item())
    with pytest.raises(ValueError, match="rollout log-probs"):
        micro_batch_objective(logits, input_ids, mask, advantages, old, corrected, loss_units=units,
                              temperature=1.0, ref_logprobs=ref)


# ----------------------------------------------------------------------------- KL estimators


def test_kl_estimators_against_formulas():
    logprobs = torch.tensor([[-1.0, -0.2, -2.5, -40.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -0.1, -1.0, -1.0]], dtype=torch.float64)
    diff = logprobs - ref
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k1"), diff)
    torch.testing.assert_close(kl_penalty(logprobs, ref, "kl"), diff)
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k2"), 0.5 * diff**2)
    k3 = kl_penalty(logprobs, ref, "low_var_kl")
    manual = [math.exp(-d) + d - 1 for d in diff[0, :3].tolist()]
    torch.testing.assert_close(k3[0, :3], torch.tensor(manual, dtype=torch.float64))
    assert k3[0, 3].item() == 10.0  # log ratio 39 clamped to 20, then the estimate to 10
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k3"), k3)
    assert (k3 >= 0).all()
    with pytest.raises(ValueError, match="KL kind"):
        kl_penalty(logprobs, ref, "k4")


def _categorical(seed):
    """Policy logits over 6 tokens, a reference's log-probs, and an older policy's."""
    generator = torch.Generator().manual_seed(seed)
    theta = torch.randn(6, generator=generator, dtype=torch.float64)
    ref = torch.log_softmax(torch.randn(6, generator=generator, dtype=torch.float64), -1)
    older = torch.log_softmax(theta + 0.5 * torch.randn(6, generator=generator, dtype=torch.float64), -1)
    return theta, ref, older


def _expected(theta, ref, kind, sampler=None, weighted=True):
    """(E[value], E[gradient]) of the KL term over tokens drawn from `sampler` (default: the
    policy itself), exactly: each of the 6 tokens as a row weighted by its probability."""
    theta = theta.clone().requires_grad_()
    logprobs = torch.log_softmax(theta, -1)
    sampler = logprobs.detach() if sampler is None else sampler
    if weighted:
        terms = kl_term(logprobs[:, None], ref[:, None], sampler[:, None], kind)[:, 0]
    else:
        terms = kl_penalty(logprobs[:, None], ref[:, None], kind)[:, 0]
    expected = (sampler.exp() * terms).sum()
    return expected.item(), torch.autograd.grad(expected, theta)[0]


def _divergences(theta, ref):
    """(KL(pi || ref), grad KL(pi || ref), grad KL(ref || pi)) by autograd on the closed forms."""
    theta = theta.clone().requires_grad_()
    logprobs = torch.log_softmax(theta, -1)
    forward = (logprobs.exp() * (logprobs - ref)).sum()
    reverse = (ref.exp() * (ref - logprobs)).sum()
    grad_forward, grad_reverse = (torch.autograd.grad(term, theta, retain_graph=True)[0]
                                  for term in (forward, reverse))
    return forward.item(), grad_forward, grad_reverse


@pytest.mark.parametrize("seed", range(5))
def test_kl_estimators_expected_values_and_gradients(seed):
    """Over a 6-token categorical, exactly: k1 and k3 estimate KL(pi || ref) in value; the
    gradient of k2 is that of KL(pi || ref), k3's that of KL(ref || pi), k1's is 0."""
    theta, ref, _ = _categorical(seed)
    kl_value, grad_forward, grad_reverse = _divergences(theta, ref)
    for kind, value_is_kl, gradient in (("k1", True, torch.zeros(6, dtype=torch.float64)),
                                        ("k2", False, grad_forward), ("k3", True, grad_reverse)):
        value, grad = _expected(theta, ref, kind)
        torch.testing.assert_close(grad, gradient, atol=1e-12, rtol=1e-9)
        assert (value == pytest.approx(kl_value, rel=1e-9)) is value_is_kl, kind
    assert (grad_forward - grad_reverse).norm() > 1e-3  # the two directions differ


def test_the_default_kl_kind_has_the_gradient_of_the_documented_divergence():
    default = LossConfig().kl_kind
    assert KL_KINDS[default] == "k2"
    theta, ref, _ = _categorical(11)
    _, grad_forward, _ = _divergences(theta, ref)
    torch.testing.assert_close(_expected(theta, ref, default)[1], grad_forward, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_the_pi_over_pi_old_weight_keeps_the_kl_gradient_unbiased_off_policy(seed):
    """On a later mini-batch the tokens come from pi_old: with the detached pi/pi_old weight
    the expectations are those under pi (k2: grad KL(pi || ref)); without it they are not."""
    theta, ref, older = _categorical(seed)
    kl_value, grad_forward, grad_reverse = _divergences(theta, ref)
    value, grad = _expected(theta, ref, "k2", sampler=older)
    torch.testing.assert_close(grad, grad_forward, atol=1e-12, rtol=1e-9)
    _, unweighted = _expected(theta, ref, "k2", sampler=older, weighted=False)
    assert (unweighted - grad_forward).norm() > 1e-3
    value, grad = _expected(theta, ref, "k3", sampler=older)
    assert value == pytest.approx(kl_value, rel=1e-9)
    torch.testing.assert_close(grad, grad_reverse, atol=1e-12, rtol=1e-9)


# ----------------------------------------------------------------------------- masked vocabulary


def test_entropy_matches_naive_softmax_and_survives_huge_logits():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 50, generator=generator, dtype=torch.float64) * 3
    probabilities = torch.softmax(logits, dim=-1)
    naive = -(probabilities * probabilities.log()).sum(-1)
    torch.testing.assert_close(entropy_from_logits(logits), naive)
    huge = torch.tensor([[[1e4, 0.0, -1e4], [5e3, 5e3, 0.0]]], dtype=torch.float32)
    entropy = entropy_from_logits(huge)
    assert torch.isfinite(entropy).all()
    torch.testing.assert_close(entropy, torch.tensor([[0.0, math.log(2)]]), atol=1e-5, rtol=0)


MASKED = 4  # the suppressed vocabulary entry (a VLM's image token)


def _masked_case(dtype, how):
    """Logits [2, 6, 9] in dtype with entry MASKED at -inf (mask_suppressed, or -inf written
    into the logits as any masking does); targets never MASKED in the responses, MASKED at a
    prompt position (an image token in a VLM's prompt)."""
    generator = torch.Generator().manual_seed(3)
    raw = (torch.randn(2, 6, 9, generator=generator) * 3).to(dtype)
    if how == "mask_suppressed":
        logits = mask_suppressed(raw, [MASKED])
    else:
        logits = raw.clone()
        logits[..., MASKED] = float("-inf")
    allowed = [index for index in range(9) if index != MASKED]
    input_ids = torch.tensor(allowed, dtype=torch.long)[torch.randint(0, 8, (2, 6), generator=generator)]
    input_ids[:, 1] = MASKED
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[:, :1] = False  # position 0's target (input_ids[:, 1]) is the prompt's masked token
    return raw, logits, input_ids, mask, allowed


@pytest.mark.parametrize("how", ["mask_suppressed", "minus_inf"])
@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_masked_vocabulary_entries_drop_out_of_logprobs_entropy_and_kl(dtype, temperature, how):
    """A masked entry has probability 0: log-probs, entropy and KL equal those computed over the
    allowed tokens alone; the loss (entropy bonus and KL on) and its gradient are finite. The
    old mask (the dtype's lowest value) overflowed to -inf below temperature 1 and the entropy
    became 0 * -inf = NaN."""
    raw, logits, input_ids, mask, allowed = _masked_case(dtype, how)
    logits = logits.requires_grad_()
    scaled = raw[..., allowed].float() / temperature  # the distribution over the allowed tokens
    allowed_index = {token: index for index, token in enumerate(allowed)}
    targets = input_ids[:, 1:].clone().apply_(lambda token: allowed_index.get(token, 0))
    expected_logprobs = torch.log_softmax(scaled[:, :-1], -1).gather(-1, targets[..., None])[..., 0]
    expected_entropy = -(torch.softmax(scaled[:, :-1], -1) * torch.log_softmax(scaled[:, :-1], -1)).sum(-1)
    logprobs = token_logprobs(logits, input_ids, temperature)
    torch.testing.assert_close(logprobs[mask], expected_logprobs[mask])
    entropy = entropy_from_logits(logits[:, :-1].float() / temperature)
    torch.testing.assert_close(entropy, expected_entropy)
    ref = expected_logprobs.detach() - 0.25
    old = expected_logprobs.detach() + 0.1
    loss = build_policy_loss(LossConfig(entropy_coef=0.01, kl_coef=0.1, aggregation="seq_mean_token_mean"))
    objective, sums = micro_batch_objective(logits, input_ids, mask, torch.tensor([1.0, -0.5]), old, loss,
                                            loss_units=2.0, temperature=temperature, ref_logprobs=ref)
    assert torch.isfinite(objective)
    gradient = torch.autograd.grad(objective, logits)[0]
    assert torch.isfinite(gradient).all()
    assert gradient[..., MASKED].abs().max() == 0
    assert sums["entropy"] == pytest.approx(expected_entropy[mask].sum().item(), rel=1e-5)
    expected_kl = kl_penalty(expected_logprobs, ref, "k3")[mask].sum().item()
    assert sums["kl"] == pytest.approx(expected_kl, rel=1e-5)


# ----------------------------------------------------------------------------- the registry


def test_loss_options_are_checked_once_naming_the_key():
    LossConfig().check("algorithm.loss")
    LossConfig(name="kl_cov", options={"fraction": 0.01, "coef": 2.0}).check("algorithm.loss")
    for bad, key in ((LossConfig(dual_clip=1.0), "dual_clip"), (LossConfig(aggregation="sum"), "aggregation"),
                     (LossConfig(kl_kind="k4"), "kl_kind"), (LossConfig(importance_cap=0.5), "importance_cap"),
                     (LossConfig(importance_correction="tokens"), "importance_correction"),
                     (LossConfig(name="clip_kov"), "name"),
                     (LossConfig(options={"fraction": 0.1}), "options"),
                     (LossConfig(name="kl_cov", options={"fraction": "0.1"}), "options.fraction"),
                     (LossConfig(name="clip_cov", options={"fractoin": 0.1}), "options.fractoin"),
                     (LossConfig(name="clip_cov", options={"fraction": 2.0}), "options.fraction"),
                     (LossConfig(name="clip_cov", options={"low": 6.0}), "options.low"),
                     (LossConfig(name="kl_cov", options={"coef": -1.0}), "options.coef")):
        with pytest.raises(ConfigError) as error:
            bad.check("algorithm.loss")
        assert error.value.key == f"algorithm.loss.{key}"
    with pytest.raises(ConfigError, match="did you mean algorithm.loss.options.fraction"):
        LossConfig(name="clip_cov", options={"fractoin": 0.1}).check("algorithm.loss")


def test_losses_declare_what_the_learner_computes_for_them():
    assert set(POLICY_LOSSES) == {"ppo", "clip_cov", "kl_cov"}
    plain = LossConfig().needs
    assert (plain.old_logprobs_from_training_forward, plain.mini_batch_pre_pass, plain.reference_model) == (
        True, False, False)
    assert LossConfig(kl_coef=0.1).needs.reference_model
    for name in ("clip_cov", "kl_cov"):  # they read old log-probs before any training forward
        needs = LossConfig(name=name).needs
        assert needs.mini_batch_pre_pass and not needs.old_logprobs_from_training_forward
    options = build_policy_loss(LossConfig(name="clip_cov", options={"fraction": 0.5})).options
    assert (options.fraction, options.low, options.high) == (0.5, 1.0, 5.0)  # the paper's bounds
    options = build_policy_loss(LossConfig(name="kl_cov")).options
    assert (options.fraction, options.coef) == (2e-3, 1.0)  # the release's k and coefficient
    with pytest.raises(TypeError, match="no mini-batch pre-pass"):
        build_policy_loss(LossConfig()).select(*_inputs(), ADVANTAGES, torch.ones(2, 2, dtype=torch.bool),
                                               torch.Generator())


def test_a_new_loss_is_one_registered_class():
    class PlainPolicyGradient(PolicyLoss):
        name = "test_plain_policy_gradient"

        def token_losses(self, logprobs, old_logprobs, advantages, response_mask, selected):
            return -advantages[:, None] * logprobs, {"clip_fraction": 0.0, "approx_kl": 0.0}

    register_policy_loss(PlainPolicyGradient)
    try:
        with pytest.raises(ValueError, match="registered twice"):
            register_policy_loss(PlainPolicyGradient)
        logits, input_ids, mask, advantages, old, _, _ = _logits_batch(4)
        config = LossConfig(name=PlainPolicyGradient.name)
        config.check("algorithm.loss")
        objective, _ = micro_batch_objective(logits, input_ids, mask, advantages, old,
                                             build_policy_loss(config), loss_units=float(mask.sum()),
                                             temperature=1.0)
        logprobs = token_logprobs(logits, input_ids, 1.0)
        expected = -(advantages[:, None] * logprobs)[mask].sum() / mask.sum()
        assert objective.item() == pytest.approx(expected.item(), rel=1e-12)
    finally:
        del POLICY_LOSSES[PlainPolicyGradient.name]


def test_clip_cov_detaches_the_selected_tokens():
    logits, input_ids, mask, advantages, _, _, _ = _logits_batch(5)
    logits = logits.requires_grad_()
    old = torch.where(mask, token_logprobs(logits.detach(), input_ids, 1.0), 0.0)  # on-policy: none clipped
    units = float(mask.sum())
    plain, _ = micro_batch_objective(logits, input_ids, mask, advantages, old, build_policy_loss(LossConfig()),
                                     loss_units=units, temperature=1.0)
    clip_cov = build_policy_loss(LossConfig(name="clip_cov", options={"fraction": 1.0, "low": -1e9, "high": 1e9}))
    every_token = _selection(clip_cov, logits, input_ids, mask, advantages, old)
    assert torch.equal(every_token, mask)
    detached, sums = micro_batch_objective(logits, input_ids, mask, advantages, old, clip_cov,
                                           loss_units=units, temperature=1.0, selected=every_token)
    assert sums["cov_detached_fraction"] == units  # every token chosen: no policy gradient left
    assert detached.item() == pytest.approx(plain.item())
    assert torch.autograd.grad(detached, logits)[0].abs().max() == 0
    with pytest.raises(ValueError, match="pre-pass's selection"):
        micro_batch_objective(logits, input_ids, mask, advantages, old, clip_cov, loss_units=units,
                              temperature=1.0)


def test_kl_cov_is_the_unclipped_surrogate_plus_the_penalty_on_the_selected_tokens():
    """The published form: -A * ratio on every token (no clip, no dual clip, even where PPO's
    clip would bite) plus coef * |log pi - log pi_old| on the selected tokens."""
    logits, input_ids, mask, advantages, old, _, _ = _logits_batch(6)
    old = old - 1.0  # ratios e^1 ~ 2.7: PPO's clip would take most tokens
    kl_cov = build_policy_loss(LossConfig(name="kl_cov", options={"fraction": 0.25, "coef": 2.0}))
    selected = _selection(kl_cov, logits, input_ids, mask, advantages, old)
    assert int(selected.sum()) == max(1, math.floor(0.25 * int(mask.sum())))
    objective, sums = micro_batch_objective(logits, input_ids, mask, advantages, old, kl_cov,
                                            loss_units=float(mask.sum()), temperature=1.0, selected=selected)
    logprobs = token_logprobs(logits, input_ids, 1.0)
    token_loss = -advantages[:, None] * torch.exp(logprobs - old)
    token_loss = token_loss + torch.where(selected, 2.0 * (logprobs - old).abs(), 0.0)
    assert objective.item() == pytest.approx(token_loss[mask].mean().item(), rel=1e-6)  # float32 terms
    assert sums["clip_fraction"] == 0.0
    assert sums["cov_detached_fraction"] == float(selected.sum())
