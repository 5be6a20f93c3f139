"""The loss as the run config composes it: presets select a registered loss with its typed
options, moved loss keys are refused naming the new key, and a run whose importance weights
compare the engines' log-probs with the learner's refuses truncated sampling (top-p < 1,
top-k > 0), whose bias the last test shows."""

from __future__ import annotations

import pytest
import torch
from transformers import TopKLogitsWarper, TopPLogitsWarper

from launch.config import MOVED_KEYS, compose_config, validate
from riskpo.algo.entropy_control import ClipCovOptions, KLCovOptions
from riskpo.algo.ppo import importance_weights
from riskpo.options import ConfigError


def loss_of(*overrides: str):
    return validate(compose_config(list(overrides))).algorithm.loss


def test_presets_select_the_registered_losses_with_their_typed_options():
    assert (loss_of().name, loss_of().options) == ("ppo", None)
    clip_cov = loss_of("algorithm=grpo_clip_cov")
    assert (clip_cov.name, clip_cov.options) == ("clip_cov", ClipCovOptions(2e-4, 1.0, 5.0))
    kl_cov = loss_of("algorithm=grpo_kl_cov", "algorithm.loss.options.coef=2")
    assert (kl_cov.name, kl_cov.options) == ("kl_cov", KLCovOptions(2e-3, 2.0))
    by_name = loss_of("algorithm=grpo", "algorithm.loss.name=kl_cov", "algorithm.loss.options.fraction=0.01")
    assert by_name.options == KLCovOptions(0.01, 1.0)
    with pytest.raises(ConfigError, match=r"algorithm.loss.options.fractoin: .* did you mean algorithm.loss.options.fraction"):
        loss_of("algorithm=grpo_kl_cov", "algorithm.loss.options.fractoin=0.01")
    with pytest.raises(ConfigError, match="algorithm.loss.options: KLCovOptions, but algorithm.loss.name=clip_cov"):
        loss_of("algorithm=grpo_kl_cov", "algorithm.loss.name=clip_cov")


@pytest.mark.parametrize(("override", "new_key"), [
    ("algorithm.loss.entropy_control=kl_cov", "algorithm.loss.name"),
    ("+algorithm.loss.clip_cov.fraction=0.1", "algorithm.loss.options.fraction"),
    ("+algorithm.loss.kl_cov.coef=2", "algorithm.loss.options.coef"),
])
def test_moved_loss_keys_are_refused_naming_the_new_key(override, new_key):
    old_key = override.lstrip("+").split("=")[0]
    assert MOVED_KEYS[old_key] == new_key
    with pytest.raises(ConfigError, match=f"{old_key}: moved to {new_key}"):
        loss_of("algorithm=grpo", override)


@pytest.mark.parametrize(("overrides", "key"), [
    (["rollout.top_p=0.7", "trainer.off_policy_steps=1"], "rollout.top_p"),
    (["rollout.top_k=20", "trainer.off_policy_steps=1"], "rollout.top_k"),
    (["rollout.top_p=0.9", "algorithm.loss.importance_correction=token"], "rollout.top_p"),
    (["rollout.top_k=5", "algorithm.loss.importance_correction=sequence"], "rollout.top_k"),
])
def test_importance_weights_refuse_truncated_sampling_naming_both_keys(overrides, key):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(overrides))
    assert error.value.key == key
    assert "rollout.top_p" in str(error.value) and "rollout.top_k" in str(error.value)


@pytest.mark.parametrize("overrides", [
    ["rollout.top_p=0.7"],  # on-policy: auto settles on no correction
    ["rollout.top_k=20", "trainer.off_policy_steps=1", "algorithm.loss.importance_correction=none"],
    ["trainer.off_policy_steps=1"],  # the full distribution: corrected
])
def test_truncated_sampling_without_importance_weights_and_weights_without_truncation_run(overrides):
    validate(compose_config(overrides))


@pytest.mark.parametrize("warper", [TopPLogitsWarper(top_p=0.7), TopKLogitsWarper(top_k=3)])
def test_truncated_sampling_biases_the_importance_weights_by_the_kept_mass(warper):
    """What the rule prevents: the hf engine samples from transformers' top-p / top-k warped
    logits and returns their log-probs; the learner scores the full softmax. For tokens drawn
    on-policy the truncated importance weight pi_full / pi_engine is the kept probability mass
    on every token, so its mean is the kept mass (0.7-ish), not 1; untruncated it is 1."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 12, generator=generator, dtype=torch.float64) * 1.5
    full = torch.log_softmax(logits, -1)[0]
    engine = torch.log_softmax(warper(None, logits.clone()), -1)[0]
    kept = torch.isfinite(engine)
    kept_mass = full[kept].exp().sum().item()
    assert 0.5 < kept_mass < 0.95
    tokens = kept.nonzero()[:, 0]  # every token the engine can draw, weighted by its probability
    weight, _ = importance_weights(full[tokens][None], engine[tokens][None],
                                   torch.ones(1, len(tokens), dtype=torch.bool), "token", cap=2.0)
    torch.testing.assert_close(weight[0], torch.full((len(tokens),), kept_mass, dtype=torch.float64))
    expected_weight = (engine[tokens].exp() * weight[0]).sum().item()
    assert expected_weight == pytest.approx(kept_mass) and expected_weight < 0.95
    untruncated, _ = importance_weights(full[None], full[None], torch.ones(1, 12, dtype=torch.bool),
                                        "token", cap=2.0)
    assert torch.equal(untruncated, torch.ones(1, 12, dtype=torch.float64))
