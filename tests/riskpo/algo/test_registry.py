"""The estimator registry (riskpo/algo/registry.py): the estimator modules are discovered, a name
is looked up or refused naming the nearest, registration checks what an estimator declares, and
the Estimator wrapper does the same for every estimator. What every estimator promises is
tested over the registry in test_estimators.py."""

from __future__ import annotations

import pkgutil
from dataclasses import dataclass

import pytest
import torch

import riskpo.algo.estimators as estimator_package
from riskpo.algo.bundles import consecutive_bundles
from riskpo.algo.estimators.group_baselines import GRPOOptions
from riskpo.algo.estimators.riskpo import RiskPOOptions
from riskpo.algo.registry import (
    LOSS_WEIGHTS,
    AdvantageState,
    NoOptions,
    estimators,
    estimators_with_option,
    get_advantage_estimator,
    register_estimator,
)
from riskpo.options import ConfigError

PUBLISHED = {"riskpo", "grpo", "dr_grpo", "rloo", "reinforce_baseline", "nsr", "w_reinforce", "pkpo",
             "rs_grpo", "qae", "f_grpo"}


def test_every_estimator_module_is_discovered_and_registers():
    registered = estimators()
    assert set(registered) >= PUBLISHED
    modules = {f"riskpo.algo.estimators.{m.name}" for m in pkgutil.iter_modules(estimator_package.__path__)}
    assert {estimator.fn.__module__ for estimator in registered.values()} == modules
    assert registered["riskpo"].capabilities == {LOSS_WEIGHTS}
    assert {name for name, e in registered.items() if LOSS_WEIGHTS in e.capabilities} == {"riskpo"}
    groupings = {name: e.groups for name, e in registered.items() if name in PUBLISHED}
    assert groupings == {"riskpo": "bundle", "reinforce_baseline": "batch", "nsr": "none",
                         "w_reinforce": "none", **{n: "question" for n in
                         ("grpo", "dr_grpo", "rloo", "pkpo", "rs_grpo", "qae", "f_grpo")}}


def test_an_unknown_name_is_refused_naming_the_key_and_the_nearest():
    with pytest.raises(ConfigError) as error:
        get_advantage_estimator("gpro")
    assert error.value.key == "algorithm.name"
    assert "'gpro' is not a known advantage estimator" in str(error.value)
    assert "did you mean grpo?" in str(error.value)


def test_registration_checks_what_an_estimator_declares():
    @dataclass
    class Unchecked:
        level: float = 0.5

    @dataclass
    class NoBundles:
        level: float = 0.5

        def check(self, key: str) -> None:
            pass

    with pytest.raises(ValueError, match="registered twice"):
        register_estimator("grpo")(lambda *args: None)
    with pytest.raises(ValueError, match="groups must be one of"):
        register_estimator("throwaway", groups="paper")
    with pytest.raises(ValueError, match="unknown capabilities"):
        register_estimator("throwaway", capabilities=("value_head",))
    with pytest.raises(ValueError, match="dataclass with check"):
        register_estimator("throwaway", options=Unchecked)
    with pytest.raises(ValueError, match="bundle_size, drop_last_bundle, ragged_last_bundle"):
        register_estimator("throwaway", options=NoBundles, groups="bundle")
    assert "throwaway" not in estimators()


def test_the_wrapper_takes_its_own_options_only():
    grpo = get_advantage_estimator("grpo")
    rewards, question_ids = torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1])
    with pytest.raises(TypeError, match="grpo.*takes GRPOOptions, got RiskPOOptions"):
        grpo(rewards, question_ids, options=RiskPOOptions())
    by_default = grpo(rewards, question_ids)
    assert torch.equal(by_default.advantages, grpo(rewards, question_ids, options=GRPOOptions()).advantages)
    unnormalised = grpo(rewards, question_ids, options=GRPOOptions(std_normalize=False)).advantages
    assert unnormalised.tolist() == [0.5, -0.5, 0.0, 0.0]


def test_the_wrapper_counts_steps_casts_and_forms_bundles_of_the_options_size():
    riskpo = get_advantage_estimator("riskpo")
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 2, (24,), generator=generator)  # integer rewards: float32 advantages
    question_ids = torch.arange(6).repeat_interleave(4)
    options = RiskPOOptions(bundle_size=2, pairing="index", quantile_source="bundle")
    state = AdvantageState()
    formed = riskpo(rewards, question_ids, None, options, state)
    given = riskpo(rewards, question_ids, consecutive_bundles(question_ids, 2), options, AdvantageState())
    assert formed.advantages.dtype == torch.float32 and torch.equal(formed.advantages, given.advantages)
    assert state.step == 1 and formed.loss_weights is not None


def test_estimators_with_an_option():
    assert estimators_with_option("alpha") == ["riskpo"]
    assert estimators_with_option("std_normalize") == ["f_grpo", "grpo", "qae", "reinforce_baseline", "riskpo"]
    assert estimators_with_option("no_such_option") == []
    assert get_advantage_estimator("dr_grpo").options is NoOptions
