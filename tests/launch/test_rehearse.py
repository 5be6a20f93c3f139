"""The rehearsal's pieces without running one: the plan (what is kept and scaled), the model facts
and the scaled model's weight names, the tokenizer's chat formats, the recipe rows, the refusals,
and what launch/train.py and launch/factory.py do for it. The rehearsals themselves:
tests/launch/test_rehearse_recipes.py (vLLM lane)."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import torch

from launch.config import compose_config, validate
from launch.rehearse.data import RECORD_MAKERS, substitute_missing_data, write_recipe_rows
from launch.rehearse.models import (
    ModelScale,
    build_model,
    model_facts,
    scaled_config_dict,
)
from launch.rehearse.plan import plan_rehearsal
from riskpo.options import ConfigError

TEXT_MODELS = ("Qwen/Qwen2.5-1.5B-Instruct", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RISKPO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def recipe(name: str, *overrides: str):
    cfg = compose_config([f"experiment={name}", *overrides])
    substitute_missing_data(cfg)
    return validate(cfg)


def test_the_plan_keeps_the_learner_and_scales_what_a_cpu_cannot_hold():
    plan = plan_rehearsal(recipe("qwen2.5-1.5b-math"), "/scaled", "a scaled model", cpu_count=2)
    assert plan.overrides["model.path"] == "/scaled"
    assert plan.overrides["trainer.total_steps"] == 2
    assert plan.overrides["trainer.prompts_per_step"] == 9  # a bundle of 5 + the recipe's last bundle of 4
    assert plan.overrides["rollout.max_new_tokens"] == 32
    assert plan.overrides["learner.num_ranks"] == plan.overrides["rollout.num_actors"] == 2
    assert plan.overrides["cluster.device"] == "cpu" and plan.overrides["rollout.enforce_eager"] is True
    assert plan.simulated_gpus == 2  # colocated bundles on a local cluster's simulated GPUs
    kept = {line.key: line.recipe for line in plan.lines if line.kind == "kept"}
    assert kept["learner.zero_stage"] == 2 and kept["learner.dtype"] == "bfloat16"
    assert kept["learner.gradient_checkpointing"] is True and kept["learner.num_mini_batches"] == 4
    assert kept["learner.micro_batch_token_budget"] == 16384 and kept["cluster.colocate"] is True
    assert kept["rollout.engine"] == "vllm" and kept["trainer.samples_per_prompt"] == 5
    assert not any(key.startswith("learner.") and key != "learner.num_ranks" for key in plan.overrides)
    assert all(str(line).split()[0] in ("kept", "scaled", "replaced") for line in plan.lines)


def test_the_plan_follows_each_recipe_and_the_cores():
    hard = plan_rehearsal(recipe("r1-distill-1.5b-dapo"), "/m", "", cpu_count=2)
    assert hard.overrides["trainer.prompts_per_step"] == 7  # 5 + 512 % 5
    assert hard.overrides["rollout.max_new_tokens"] == 32 and hard.overrides["learner.num_ranks"] == 2
    twin = plan_rehearsal(recipe("r1-distill-1.5b-dapo-grpo"), "/m", "", cpu_count=2)
    assert twin.overrides["trainer.prompts_per_step"] == 8  # no bundles: a few groups
    wide = plan_rehearsal(recipe("r1-distill-1.5b-dapo"), "/m", "", cpu_count=8)
    assert wide.overrides["learner.num_ranks"] == 4 and wide.simulated_gpus == 4
    many = plan_rehearsal(recipe("qwen2.5-1.5b-math"), "/m", "", cpu_count=16)
    assert "learner.num_ranks" not in many.overrides  # the recipe's 4 ranks fit 16 cores
    vlm = plan_rehearsal(recipe("qwen2.5-vl-3b-geo3k"), "/m", "", cpu_count=2, engine_note="why")
    assert vlm.overrides["rollout.engine"] == "hf" and "rollout.enforce_eager" not in vlm.overrides


def test_the_rehearsal_config_validates_and_keeps_the_rehearse_key():
    cfg = compose_config(["experiment=qwen2.5-1.5b-math", "rehearse=true"])
    substitute_missing_data(cfg)
    assert validate(cfg).rehearse is True
    assert validate(compose_config([])).rehearse is False


@pytest.mark.parametrize("dataset", sorted(RECORD_MAKERS))
def test_generated_rows_are_the_recipe_format_through_its_converter(dataset, tmp_path):
    from riskpo.data.files import read_rows

    path = write_recipe_rows(dataset, "train", 6, tmp_path / dataset / "train.parquet")
    rows = read_rows(path)
    assert len(rows) == 6
    for row in rows:
        assert isinstance(row.prompt, list) and row.prompt[-1]["role"] == "user"
        assert row.ground_truth and row.reward_model["style"] == "rule"
    if dataset == "geometry3k":
        from riskpo.models.vlm import decode_image

        assert all(len(row.images) == 1 and row.prompt[0]["content"].startswith("<image>") for row in rows)
        assert decode_image(rows[0].images[0]).size[1] == 84
    if dataset == "gsm8k":  # the "#### n" answer became the ground truth
        question = rows[0].prompt[0]["content"]
        boxes, each, given = map(int, re.findall(r"\d+", question)[:3])
        assert rows[0].ground_truth == str(boxes * each - given)


def test_absent_files_are_replaced_and_present_ones_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_recipe_rows("math", "test", 3, tmp_path / "data" / "math" / "test.parquet")
    cfg = compose_config(["experiment=qwen2.5-1.5b-math"])
    lines = {line.key: line for line in substitute_missing_data(cfg)}
    assert lines["data.eval.options.files[0]"].kind == "kept"
    assert lines["data.train.options.files[0]"].kind == "replaced"
    assert str(cfg.data.train.options.files[0]).endswith("gsm8k/train-32.parquet")
    cfg = compose_config(["experiment=qwen2.5-1.5b-math", "data.train.options.files=[elsewhere/rows.parquet]"])
    with pytest.raises(ConfigError, match="data.train.options.files"):
        substitute_missing_data(cfg)


@pytest.mark.parametrize(("hub_id", "billions"), [
    ("Qwen/Qwen2.5-0.5B-Instruct", 0.494), ("Qwen/Qwen2.5-1.5B-Instruct", 1.544),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", 1.777), ("Qwen/Qwen2.5-VL-3B-Instruct", 3.755)])
def test_the_shipped_facts_give_the_published_parameter_counts(hub_id, billions):
    from launch.memory import ModelShape

    assert ModelShape.from_config(model_facts(hub_id).config).parameters / 1e9 == pytest.approx(billions, abs=1e-3)


def test_a_model_without_facts_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"model.path.*conf/model/configs/org--model.json"):
        model_facts("org/model")


def _names(config: dict) -> set[str]:
    from transformers import CONFIG_MAPPING

    from riskpo.models.vlm import policy_model_class

    built = CONFIG_MAPPING[config["model_type"]].from_dict(dict(config))
    with torch.device("meta"):
        return set(policy_model_class(built).from_config(built).state_dict())


def _within(names: set[str], layers: int, blocks: int) -> set[str]:
    """The names of a model's first `layers` decoder layers and `blocks` vision blocks."""
    def keep(name: str) -> bool:
        layer = re.search(r"\.layers\.(\d+)\.", name)
        block = re.search(r"\.blocks\.(\d+)\.", name)
        return (not layer or int(layer[1]) < layers) and (not block or int(block[1]) < blocks)

    return {name for name in names if keep(name)}


@pytest.mark.parametrize("hub_id", [*TEXT_MODELS, "Qwen/Qwen2.5-VL-3B-Instruct"])
def test_the_scaled_model_has_every_weight_name_of_the_real_one(hub_id):
    facts, scale = model_facts(hub_id), ModelScale()
    ids = {token: 1000 + i for i, token in enumerate(facts.tokenizer["special_tokens"])}
    scaled = scaled_config_dict(facts, scale, ids, 1024)
    real = _within(_names(facts.config), scale.num_layers, scale.vision["depth"])
    assert _names(scaled) == real
    assert scaled["tie_word_embeddings"] == facts.config["tie_word_embeddings"]
    assert scaled["architectures"] == facts.config["architectures"]


@pytest.mark.parametrize("hub_id", TEXT_MODELS)
def test_the_built_model_renders_the_recipe_chat_format(hub_id, tmp_path):
    from riskpo.models.loading import load_policy, load_tokenizer

    facts = model_facts(hub_id)
    model_dir = build_model(facts, ModelScale(), ["Compute $3 \\cdot 4$. The answer is \\boxed{12}."] * 20,
                            tmp_path / "model")
    tokenizer = load_tokenizer(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2?"}],
                                         add_generation_prompt=True, tokenize=False)
    if facts.tokenizer["chat_format"] == "chatml":
        assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
        assert text.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    else:
        assert text == "<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜><think>\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    specials = [tokenizer.convert_tokens_to_ids(t) for t in facts.tokenizer["special_tokens"]]
    assert specials == list(range(specials[0], specials[0] + len(specials)))  # in the hub's order
    assert config["eos_token_id"] == tokenizer.convert_tokens_to_ids(
        facts.tokenizer["special_tokens"][facts.config["eos_token_id"] - 151643])
    assert load_policy(model_dir).config.tie_word_embeddings == facts.config["tie_word_embeddings"]


def _torchvision_imports() -> bool:
    from launch.rehearse.rehearsal import _torchvision_imports

    return _torchvision_imports()


def _reruns(monkeypatch, rehearsal, cfg, facts, args: list[str]) -> tuple[list, str]:
    """What _run_from_environment_if_needed execs (recorded, not done) and what it says."""
    from rich.console import Console

    calls = []
    monkeypatch.setattr(rehearsal.os, "execv", lambda path, argv: calls.append((path, argv)))
    console = Console(record=True, width=400)
    rehearsal._run_from_environment_if_needed(cfg, facts, console, args)
    return calls, console.export_text()


@pytest.mark.skipif(_torchvision_imports(), reason="torchvision imports here: the VL recipe rehearses")
def test_the_vl_recipe_reruns_from_the_vl_environment_or_names_its_make_target(monkeypatch, tmp_path):
    from rich.console import Console

    import launch.rehearse.rehearsal as rehearsal

    cfg = compose_config(["experiment=qwen2.5-vl-3b-geo3k"])
    facts = model_facts("Qwen/Qwen2.5-VL-3B-Instruct")
    monkeypatch.setattr(rehearsal, "VL_PYTHON", tmp_path / ".venv-vl" / "bin" / "python")
    with pytest.raises(ConfigError, match=r"model.path.*torchvision.*\.venv-vl, which is missing.*make vl-env"):
        rehearsal._run_from_environment_if_needed(cfg, facts, Console(), ["rehearse=true"])
    rehearsal.VL_PYTHON.parent.mkdir(parents=True)
    rehearsal.VL_PYTHON.touch()
    with pytest.raises(ConfigError, match=r"model.path.*torchvision"):  # a library call: no re-run
        rehearsal._run_from_environment_if_needed(cfg, facts, Console(), None)
    args = ["experiment=qwen2.5-vl-3b-geo3k", "rehearse=true"]
    calls, said = _reruns(monkeypatch, rehearsal, cfg, facts, args)
    assert calls == [(str(rehearsal.VL_PYTHON), [str(rehearsal.VL_PYTHON), "-m", "launch.train", *args])]
    assert "cannot import torchvision, running from" in said


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="this Python has vLLM")
def test_a_vllm_recipe_reruns_itself_from_the_vllm_environment(monkeypatch):
    from rich.console import Console

    import launch.rehearse.rehearsal as rehearsal

    cfg = compose_config(["experiment=qwen2.5-1.5b-math"])
    facts = model_facts("Qwen/Qwen2.5-1.5B-Instruct")
    with pytest.raises(ConfigError, match="rollout.engine"):  # a library call: no re-run
        rehearsal._run_from_environment_if_needed(cfg, facts, Console(), None)
    if not rehearsal.VLLM_PYTHON.is_file():
        pytest.skip(".venv-vllm is not built (make vllm-env)")
    args = ["experiment=qwen2.5-1.5b-math", "rehearse=true"]
    calls, said = _reruns(monkeypatch, rehearsal, cfg, facts, args)
    assert calls == [(str(rehearsal.VLLM_PYTHON), [str(rehearsal.VLLM_PYTHON), "-m", "launch.train", *args])]
    assert "cannot import vllm, running from" in said


def test_a_colocated_vllm_engine_computing_on_cpus_asks_for_no_sleep_mode():
    from launch.factory import engine_kwargs

    overrides = ["rollout=vllm", "cluster.colocate=true", "cluster.rollout_gpus_per_actor=1",
                 "cluster.learner_gpus_per_rank=1"]
    assert engine_kwargs(validate(compose_config(overrides)))["enable_sleep_mode"] is True
    on_cpus = engine_kwargs(validate(compose_config([*overrides, "cluster.device=cpu"])))
    assert on_cpus["enable_sleep_mode"] is False and on_cpus["sleep_level"] == 1


def test_colocated_engines_load_before_the_learner_only_where_they_share_gpus():
    from launch.factory import engines_load_first

    overrides = ["rollout=vllm", "cluster.colocate=true", "cluster.rollout_gpus_per_actor=1",
                 "cluster.learner_gpus_per_rank=1"]
    assert engines_load_first(validate(compose_config(overrides))) is True
    assert engines_load_first(validate(compose_config([*overrides, "cluster.device=cpu"]))) is False
    assert engines_load_first(validate(compose_config(["cluster.colocate=false"]))) is False
