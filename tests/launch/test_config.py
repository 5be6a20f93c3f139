"""The Hydra tree composes into the typed schema, the presets say what the paper says, and
validation names the offending key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from launch.config import (
    CONF_DIR,
    MOVED_KEYS,
    RunConfig,
    compose_config,
    resolve_run_dir,
    to_dataclass,
    validate,
)
from riskpo.algo.config import AlgorithmConfig
from riskpo.algo.estimators.group_baselines import GRPOOptions
from riskpo.algo.estimators.riskpo import RiskPOOptions
from riskpo.algo.registry import estimators, get_advantage_estimator
from riskpo.options import ConfigError
from workers.rollout import ENGINE_CAPABILITIES

FIXTURES = Path(__file__).parents[1] / "riskpo" / "data" / "fixtures"
MATH_ROWS = FIXTURES / "math_rows.jsonl"
LOCAL_DATA = [
    "data.train.source=jsonl", f"data.train.options.files=[{MATH_ROWS}]",
    "data.eval.source=jsonl", f"data.eval.options.files=[{MATH_ROWS}]",
]


def test_embedded_default_composes_validates_and_is_typed():
    run = validate(compose_config([]))
    assert isinstance(run, RunConfig)
    assert run.model.path == "tiny" and run.data.train.source == "synthetic_arithmetic"
    assert run.algorithm.name == "riskpo" and run.algorithm.options.quantile_source == "tracked"
    assert run.trainer.prompts_per_step % run.algorithm.options.bundle_size == 0
    assert run.rollout.engine == "hf" and run.logger.backend == "wandb"
    assert to_dataclass(run) is run


PRESETS = sorted(path.stem for path in (CONF_DIR / "algorithm").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_algorithm_preset_validates_with_its_estimators_options(preset):
    run = validate(compose_config([f"algorithm={preset}"]))
    estimator = get_advantage_estimator(run.algorithm.name)
    assert type(run.algorithm.options) is estimator.options
    if preset in estimators():  # the preset named after its estimator states no option
        assert run.algorithm.options == estimator.options()
    text = (CONF_DIR / "algorithm" / f"{preset}.yaml").read_text()
    assert ("\noptions:" in text) == (preset in PRESETS_WITH_OPTIONS), preset


PRESETS_WITH_OPTIONS = ("riskpo_bundling_only", "riskpo_release", "riskpo_release_easy_math",
                        "riskpo_release_hard_math", "riskpo_risk_only")


def test_the_default_options_are_the_vetted_recipes():
    paper = validate(compose_config(["algorithm=riskpo_paper"])).algorithm
    assert (AlgorithmConfig().name, AlgorithmConfig().options) == (paper.name, paper.options)
    assert AlgorithmConfig(name="grpo").options == GRPOOptions()
    AlgorithmConfig().check()
    release = validate(compose_config(["algorithm=riskpo_release"])).algorithm.options
    changed = {f.name for f in dataclasses.fields(release)
               if getattr(release, f.name) != getattr(RiskPOOptions(), f.name)}
    assert changed == {"advantage_form", "w_mix", "std_normalize", "pairing", "quantile_source",
                       "tracker_schedule"}
    assert validate(compose_config(["algorithm=dr_grpo"])).algorithm.loss.aggregation == "seq_mean_token_sum"


def test_paper_recipes_match_the_spec():
    math = validate(compose_config(["experiment=qwen2.5-1.5b-math", *LOCAL_DATA]))
    assert (math.trainer.prompts_per_step, math.trainer.samples_per_prompt) == (1024, 5)
    options = math.algorithm.options
    assert (options.beta, options.credit, options.natural_baseline, options.ragged_last_bundle) == (
        0.9, "std", True, True)
    assert math.trainer.total_steps == 200 and math.learner.num_ranks == 4
    assert math.model.path == "Qwen/Qwen2.5-1.5B-Instruct" and math.rollout.engine == "vllm"

    dapo = validate(compose_config(["experiment=r1-distill-1.5b-dapo", *LOCAL_DATA]))
    assert (dapo.trainer.prompts_per_step, dapo.trainer.samples_per_prompt) == (512, 10)
    options = dapo.algorithm.options
    assert (options.beta, options.credit, options.natural_baseline, options.advantage_form) == (
        0.8, "sum_mean", False, "release")
    assert dapo.rollout.max_new_tokens == 3072 and dapo.data.eval_samples == 32
    assert dapo.trainer.total_steps == 500 and dapo.learner.num_ranks == 8


@pytest.mark.parametrize("experiment", ["qwen2.5-1.5b-math", "r1-distill-1.5b-dapo"])
def test_grpo_twin_differs_only_in_the_advantage(experiment):
    riskpo = OmegaConf.to_container(compose_config([f"experiment={experiment}", *LOCAL_DATA]))
    grpo = OmegaConf.to_container(compose_config([f"experiment={experiment}-grpo", *LOCAL_DATA]))
    assert grpo["algorithm"]["name"] == "grpo"
    for section in riskpo:
        if section not in ("algorithm", "experiment_name"):
            assert riskpo[section] == grpo[section], section
    assert riskpo["algorithm"]["loss"] == grpo["algorithm"]["loss"]


def test_paper_recipe_data_must_exist_here():
    with pytest.raises(ConfigError) as error:
        validate(compose_config(["experiment=qwen2.5-1.5b-math"]))
    assert error.value.key == "data.train.options.files"


@pytest.mark.parametrize(
    ("overrides", "key", "hint"),
    [
        (["trainer.prompts_per_step=7"], "trainer.prompts_per_step", "drop_last_bundle"),
        (["trainer.samples_per_prompt=1"], "trainer.samples_per_prompt", "reinforce_baseline"),
        (["algorithm.options.alpha=0.9"], "algorithm.options.alpha", "alpha"),
        (["algorithm.name=ppo"], "algorithm.name", "grpo"),
        (["algorithm.options.credit=mean"], "algorithm.options.credit", "sum_mean"),
        (["algorithm.name=grpo"], "algorithm.options", "algorithm=grpo"),
        (["algorithm=grpo", "algorithm.loss.aggregation=paper_mean"], "algorithm.loss.aggregation",
         "riskpo"),
        (["model.path=/no/such/model"], "model.path", "model=tiny"),
        (["data.eval_pass_k=[1,16]"], "data.eval_pass_k", "eval_samples"),
        (["rollout.temperature=0"], "rollout.temperature", "temperature"),
        (["data=code", "verifier.num_code_actors=0"], "verifier.num_code_actors", "num_code_actors"),
        (["resume=/no/such/checkpoint"], "resume", "auto"),
        (["learner.offload=true", "learner.zero_stage=0"], "learner.offload", "zero_stage"),
        (["learner.micro_batch_token_budget=8"], "learner.micro_batch_token_budget", "at least"),
        (["data.train.source=champ"], "data.train.source", "synthetic"),
        (["cluster.colocate=true"], "cluster.colocate", "gpus"),
        (["model=qwen2.5-1.5b-instruct", "data.train.source=parquet",
          "data.train.options.files=[/no/such.parquet]"], "data.train.options.files", "existing"),
    ],
)
def test_validation_names_the_key_and_a_fix(overrides, key, hint):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(overrides))
    assert error.value.key == key
    assert hint in str(error.value)


def test_colocation_and_an_off_policy_pipeline_are_refused_together_naming_both_keys():
    validate(compose_config(["cluster=1node-4gpu"]))
    validate(compose_config(["trainer.off_policy_steps=1"]))
    with pytest.raises(ConfigError) as error:
        validate(compose_config(["cluster=1node-4gpu", "trainer.off_policy_steps=1"]))
    assert error.value.key == "trainer.off_policy_steps" and "cluster.colocate" in str(error.value)


FLOAT32 = ["model.dtype=float32", "learner.dtype=float32"]


@pytest.mark.parametrize(("overrides", "settled"), [
    (FLOAT32, "none"), ([*FLOAT32, "trainer.off_policy_steps=1"], "token"),
    ([*FLOAT32, "trainer.off_policy_steps=2", "algorithm.loss.importance_correction=sequence"], "sequence"),
    ([*FLOAT32, "trainer.off_policy_steps=1", "algorithm.loss.importance_correction=none"], "none"),
])
def test_importance_correction_auto_is_on_exactly_when_rollouts_are_off_policy(overrides, settled):
    """In float32 on both sides (the bf16 half of the rule: tests/launch/test_settle.py)."""
    assert validate(compose_config(overrides)).algorithm.loss.importance_correction == settled


def test_allowed_variants_of_rejected_settings_pass():
    validate(compose_config(["trainer.prompts_per_step=7", "algorithm.options.drop_last_bundle=true"]))
    validate(compose_config(["trainer.prompts_per_step=7", "algorithm.options.ragged_last_bundle=true"]))
    validate(compose_config(["trainer.samples_per_prompt=1", "algorithm=reinforce_baseline"]))
    validate(compose_config(["data=code"]))


def test_zero3_needs_an_engine_that_loads_streamed_weights(monkeypatch):
    validate(compose_config(["learner.zero_stage=3"]))
    monkeypatch.setitem(ENGINE_CAPABILITIES, "hf",
                        {"streamed_weight_load": False, "tensor_parallel": False})
    with pytest.raises(ConfigError) as error:
        validate(compose_config(["learner.zero_stage=3"]))
    assert error.value.key == "learner.zero_stage"


def test_a_wrong_type_fails_composition():
    with pytest.raises(ConfigCompositionException):
        compose_config(["trainer.total_steps=many"])


@pytest.mark.parametrize(("override", "nearest"), [
    ("+algorithm.alpah=0.3", "algorithm.options.alpha"),  # the example: trained with it
    ("algorithm.alpah=0.3", "algorithm.options.alpha"),
    ("+algorithm.options.alpah=0.3", "algorithm.options.alpha"),
    ("+algorithm.loss.clip_lo=0.1", "algorithm.loss.clip_low"),
    ("+learner.lrr=1e-5", "learner.lr"),
    ("+data.train.sizee=100", "data.train.size"),
    ("rollout.temprature=0.7", "rollout.temperature"),
    ("+trainer.total_step=3", "trainer.total_steps"),
    ("+seeed=1", "seed"),
])
def test_every_group_refuses_a_key_it_does_not_declare(override, nearest):
    key = override.lstrip("+").partition("=")[0]
    with pytest.raises(ConfigError) as error:
        validate(compose_config([override]))
    assert error.value.key == key and f"did you mean {nearest}?" in str(error.value)


def test_options_of_another_estimator_are_refused_naming_the_key():
    for override in ("algorithm.options.alpha=0.3", "+algorithm.options.alpha=0.3"):
        with pytest.raises(ConfigError) as error:
            validate(compose_config(["algorithm=grpo", override]))
        assert error.value.key == "algorithm.options.alpha"
        assert "alpha is an option of riskpo" in str(error.value) and "std_normalize" in str(error.value)


@pytest.mark.parametrize(("override", "old", "new"), [
    ("algorithm.alpha=0.3", "algorithm.alpha", "algorithm.options.alpha"),
    ("+algorithm.bundle_size=2", "algorithm.bundle_size", "algorithm.options.bundle_size"),
    ("algorithm.w_reinforce.positive_weight=0.2", "algorithm.w_reinforce.positive_weight",
     "algorithm.options.positive_weight"),
    ("algorithm.pkpo.k=8", "algorithm.pkpo.k", "algorithm.options.k"),
])
def test_a_moved_key_on_the_command_line_is_refused_naming_the_new_key(override, old, new):
    assert MOVED_KEYS[old] == new
    with pytest.raises(ConfigError) as error:
        validate(compose_config([override]))
    assert error.value.key == old
    assert str(error.value) == f"{old}: moved to {new} -> write {new}=... instead"


def test_a_moved_key_in_a_yaml_is_refused_naming_the_new_key(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "old_keys.yaml").write_text(
        "# @package _global_\nalgorithm:\n  credit: std\n  beta: 0.9\n")
    cfg = compose_config([f"hydra.searchpath=[file://{tmp_path}]", "experiment=old_keys"])
    with pytest.raises(ConfigError, match="^algorithm.credit: moved to algorithm.options.credit"):
        validate(cfg)


def test_hydra_run_dir_follows_run_dir_when_given():
    node = OmegaConf.create({"run_dir": None, "given": "/tmp/x",
                             "a": "${riskpo_first_set:${run_dir},runs/default}",
                             "b": "${riskpo_first_set:${given},runs/default}"})
    assert (node.a, node.b) == ("runs/default", "/tmp/x")


def test_run_dir_and_run_name_outside_hydra_main(tmp_path):
    run = to_dataclass(compose_config([f"run_dir={tmp_path}"]))
    assert resolve_run_dir(run) == tmp_path
    assert run.name == "embedded-riskpo-seed0"
    run.run_dir = None
    with pytest.raises(ConfigError, match="run_dir"):
        resolve_run_dir(run)


def test_the_vllm_engine_gets_its_settings_from_the_run_config():
    from launch.factory import engine_kwargs

    run = validate(compose_config(["rollout=vllm", "rollout.enforce_eager=true",
                                   "rollout.gpu_memory_utilization=0.3"]))
    kwargs = engine_kwargs(run)
    assert kwargs["enforce_eager"] is True and kwargs["gpu_memory_utilization"] == 0.3
    assert "enable_sleep_mode" not in kwargs  # only colocated engines sleep
    colocated = validate(compose_config([
        "rollout=vllm", "cluster.colocate=true", "rollout.sleep_level=2",
        "cluster.rollout_gpus_per_actor=0.5", "cluster.learner_gpus_per_rank=0.5"]))
    kwargs = engine_kwargs(colocated)
    assert kwargs["enforce_eager"] is False  # the default: compiled
    assert kwargs["enable_sleep_mode"] is True and kwargs["sleep_level"] == 2


@pytest.mark.parametrize("name", sorted(estimators()))
def test_an_estimators_preset_is_its_python_recipe(name):
    """algorithm=<estimator> composes to AlgorithmConfig(name=<estimator>): options and loss
    are the recipe the estimator registers, so a notebook's AlgorithmConfig is a run someone
    would make (and the preset states only what differs from it)."""
    assert to_dataclass(compose_config([f"algorithm={name}"])).algorithm == AlgorithmConfig(name=name)


def test_the_default_algorithm_is_riskpo_as_the_paper_states_it():
    default = AlgorithmConfig()
    assert to_dataclass(compose_config([])).algorithm == default
    assert (default.loss.ratio, default.loss.clip_low, default.loss.clip_high,
            default.loss.aggregation) == ("sequence", 3e-4, 4e-4, "paper_mean")
    assert AlgorithmConfig(name="grpo").loss.aggregation == "token_mean"
