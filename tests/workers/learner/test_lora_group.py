"""A LoRA LearnerGroup on a local Ray cluster (issue 27): 2 DeepSpeed ranks, ZeRO-3 (every
parameter partitioned, gathered module by module), a KL term. The adapters train and nothing
else; the reference log-probs are the base model's; the first mini-batch's ratios are 1; a
resume is exact and the checkpoint holds no base weight; the HF export loads in transformers
(merged) and in PEFT (the adapter directory on the base); the merged sync leaves the engines
computing what the learner's merged model computes. Tiny model, slow."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from riskpo.algo.losses import LossConfig
from riskpo.messages import Prompt, SamplingParams
from riskpo.models.config import LoraConfig
from riskpo.models.tiny import build_tiny_model
from tests.workers.learner.test_learner_group import assert_same_optimizer_state, make_batch
from workers.learner.config import LearnerConfig, LearnerSpec
from workers.learner.group import LearnerGroup, plan_step
from workers.learner.lora import ADAPTER_SUBDIR

pytestmark = pytest.mark.slow
ADAPTED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_lora_group"))


@pytest.fixture(scope="module")
def lora_group(ray_cluster, tiny_model_path: Path):
    config = LearnerConfig(num_ranks=2, zero_stage=3, dtype="float32", lr=1e-2, num_mini_batches=2,
                           micro_batch_token_budget=40)
    spec = LearnerSpec(config, LossConfig(kl_coef=0.1, importance_correction="none"),
                       lora=LoraConfig(rank=4, alpha=8.0))
    group = LearnerGroup(str(tiny_model_path), spec)
    yield group
    group.shutdown()


def base_model(path: Path) -> AutoModelForCausalLM:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_the_adapters_train_learn_and_nothing_else_changes(lora_group: LearnerGroup, tiny_model_path: Path) -> None:
    before = lora_group.state_dict()  # B = 0: the merged weights are the base model's
    for name, tensor in base_model(tiny_model_path).state_dict().items():
        if name in before:
            assert torch.equal(before[name], tensor), name
    batch = make_batch(seed=4)
    losses = [lora_group.train_step(batch)["loss"] for _ in range(3)]
    assert losses[0] > max(losses[1:]), losses  # it learns: the surrogate falls on a fixed batch
    after = lora_group.state_dict()
    assert after.keys() == before.keys()
    changed = {name for name in after if not torch.equal(after[name], before[name])}
    adapted = {name for name in after if name.rpartition(".")[0].rpartition(".")[2] in ADAPTED}
    assert changed == adapted and len(adapted) == 4 * 7


def test_the_reference_is_the_base_model_and_the_first_ratios_are_one(
        lora_group: LearnerGroup, tiny_model_path: Path) -> None:
    lora_group.train_step(make_batch(seed=6))  # the adapters are not zero
    batch = make_batch(seed=7)
    plan = plan_step(batch, lora_group.spec, lora_group.steps)
    ray.get([worker.prepare.remote(batch, shard, plan.needs)
             for worker, shard in zip(lora_group.workers, plan.logprob_plans, strict=True)])
    prepared = ray.get([worker.__ray_call__.remote(
        lambda worker: (worker.backend.prepared.old_logprobs, worker.backend.prepared.ref_logprobs))
        for worker in lora_group.workers])
    model = base_model(tiny_model_path)
    for old, ref in prepared:
        for row, values in ref.items():
            ids = torch.tensor([batch.prompt_ids[row] + batch.response_ids[row]])
            with torch.no_grad():
                logits = model(ids).logits[0, len(batch.prompt_ids[row]) - 1:-1]
            expected = torch.log_softmax(logits, -1).gather(-1, ids[0, len(batch.prompt_ids[row]):, None])
            torch.testing.assert_close(values, expected.squeeze(-1), rtol=0, atol=1e-5)
            assert not torch.allclose(old[row], values, atol=1e-4)  # the policy is not the base
    results = ray.get([worker.train_step.remote(plans, plan.loss_units, plan.step, plan.needs)
                       for worker, plans in zip(lora_group.workers, plan.mini_batch_plans, strict=True)])
    first, second = results[0]
    assert first["tokens"] > 0 and first["approx_kl"] == 0.0 and first["clip_fraction"] == 0.0
    assert second["approx_kl"] != 0.0
    assert first["kl"] > 0.0  # the KL to the base is on


def test_a_lora_resume_is_exact_and_its_checkpoint_holds_the_adapters(
        lora_group: LearnerGroup, tmp_path: Path) -> None:
    batch = make_batch(seed=2)
    lora_group.train_step(batch)
    lora_group.save(str(tmp_path / "checkpoint"), {"step": 3})
    lora_group.train_step(batch)
    continued = lora_group.state_dict()
    lora_group.save(str(tmp_path / "continued"))
    assert lora_group.load(str(tmp_path / "checkpoint"))["step"] == 3
    lora_group.train_step(batch)
    resumed = lora_group.state_dict()
    lora_group.save(str(tmp_path / "resumed"))
    for name in continued:
        assert torch.equal(continued[name], resumed[name]), name
    assert_same_optimizer_state(tmp_path / "continued", tmp_path / "resumed")
    module_states = [torch.load(path, map_location="cpu", weights_only=False)["module"]
                     for path in (tmp_path / "checkpoint").rglob("*model_states.pt")]
    saved = {name for state in module_states if state for name in state}
    # no base weight, except DeepSpeed's copy of an output layer tied to the embeddings (listed
    # under its own name, which named_parameters skips as a duplicate)
    assert saved and {name for name in saved if "lora_" not in name} <= {"base_model.model.lm_head.weight"}


def test_the_export_loads_in_transformers_merged_and_in_peft_on_the_base(
        lora_group: LearnerGroup, tiny_model_path: Path, tmp_path: Path) -> None:
    lora_group.export_hf(str(tmp_path / "export"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
    state = lora_group.state_dict()
    for name, tensor in merged.named_parameters():
        assert torch.equal(tensor.detach(), state[name]), name
    adapted = PeftModel.from_pretrained(base_model(tiny_model_path), tmp_path / "export" / ADAPTER_SUBDIR).eval()
    ids = torch.tensor([make_batch(seed=8).prompt_ids[0] + [20, 21, 22]])
    with torch.no_grad():
        torch.testing.assert_close(adapted(ids).logits, merged(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lora_sync", ["merged", "adapter"])
def test_both_syncs_leave_the_engine_computing_the_learners_merged_model(
        lora_group: LearnerGroup, ray_cluster, tiny_model_path: Path, lora_sync: str) -> None:
    """merged: the engine's weights become the learner's merged ones, bit for bit. adapter: the
    engine keeps its base weights and applies the adapter sent alone (a fraction of the bytes),
    computing the same logits and greedy tokens as the merged model."""
    from workers.rollout.group import RolloutGroup
    from workers.weight_sync.sync import WeightSync

    lora_group.spec.config.lora_sync, lora_group._manifest = lora_sync, None  # one learner, both modes
    rollout = RolloutGroup(1, "hf", tiny_model_path, {"dtype": "float32"})
    ids = torch.tensor([make_batch(seed=8).prompt_ids[0] + [20, 21, 22]])
    prompt = [1, 10, 11, 12, 13]
    params = SamplingParams(temperature=0.0, max_new_tokens=12, stop_token_ids=[])
    try:
        lora_group.train_step(make_batch(seed=9))
        metrics = WeightSync(lora_group, rollout).sync(lora_group.weight_version)
        state = lora_group.state_dict()
        engine_state, engine_logits = ray.get(rollout.actors[0].__ray_call__.remote(
            lambda actor: ({n: p.detach().clone() for n, p in actor.engine.model.state_dict().items()},
                           actor.engine.model(input_ids=ids).logits.detach())))
        completion = ray.get(rollout.actors[0].generate.remote([Prompt(token_ids=prompt)], params))[0][0]
    finally:
        rollout.shutdown()
        lora_group.spec.config.lora_sync, lora_group._manifest = "merged", None
    merged = base_model(tiny_model_path)
    merged.load_state_dict(state, strict=False)  # lm_head is tied
    with torch.no_grad():
        torch.testing.assert_close(engine_logits, merged(ids).logits, rtol=1e-5, atol=1e-5)
        expected = merged.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=12,
                                   min_new_tokens=12)[0, len(prompt):].tolist()
    assert completion.token_ids == expected[:len(completion.token_ids)]
    full_bytes = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
    if lora_sync == "merged":
        for name, tensor in state.items():
            assert torch.equal(engine_state[name], tensor), name
        assert metrics["sync/bytes"] >= full_bytes
    else:
        assert any("lora_A" in name for name in engine_state)
        assert metrics["sync/bytes"] < 0.1 * full_bytes
