"""The RolloutEngine contract with image prompts, on the tiny LLaVA (riskpo/models/tiny.py): the
engine's prompt ids carry the expanded image tokens, its log-probs and greedy tokens are those of
a plain transformers forward pass given the same pixels, and the image changes them. Runs
against the hf engine here, and against vLLM in .venv-vllm where vllm-cpu can load LLaVA."""

from __future__ import annotations

import importlib
import random

import pytest
import torch
from rollout_test_support import ENGINE_KWARGS, VLLM_AVAILABLE

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
from workers.rollout import make_engine
from workers.rollout.hf_engine import cpu_threads


def vllm_llava_skip_reason() -> str | None:
    """Why vLLM cannot run the tiny LLaVA here, or None when it can."""
    if not VLLM_AVAILABLE:
        return "vllm is not importable in this venv (runs in .venv-vllm)"
    try:
        importlib.import_module("vllm.model_executor.models.llava")
    except ImportError as error:
        return (f"vllm-cpu 0.32 cannot import its LLaVA model ({error}): vLLM's llava module "
                "imports transformers' Pixtral image processor, which needs torchvision, and "
                ".venv-vllm has none (the PyPI torchvision is a CUDA build that breaks `import "
                "vllm` on CPU torch; scripts/setup_vllm_cpu_env.sh removes it). Qwen2-VL and "
                "Qwen2.5-VL fail the same way; the vLLM image path runs on GPU machines.")
    return None


ENGINES = [
    pytest.param("hf"),
    pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.skipif(
        vllm_llava_skip_reason() is not None, reason=str(vllm_llava_skip_reason()))]),
]
VISUAL = VisualOptions()
ROWS = [visual_problem(random.Random(seed), VISUAL).row for seed in range(3)]
PROMPTS = [build_prompt(row, "plain") for row in ROWS] + [Prompt(text="12+34=")]


@pytest.fixture(scope="module")
def tiny_vlm_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny_llava"), arch="llava", seed=0)


@pytest.fixture(scope="module")
def processor(tiny_vlm_path):
    return load_processor(tiny_vlm_path)


@pytest.fixture(scope="module", params=ENGINES)
def engine(request, tiny_vlm_path):
    return make_engine(request.param, tiny_vlm_path, **ENGINE_KWARGS[request.param])


@pytest.fixture(scope="module")
def reference(tiny_vlm_path, processor):
    """logits(prompt, response_ids) -> [len(response), V] next-token logits at each response
    position from one transformers forward with the prompt's pixels, the image token masked
    (the policy never writes it)."""
    model = load_policy(tiny_vlm_path)
    suppressed = suppressed_token_ids(model.config)
    assert suppressed == [processor.tokenizer.convert_tokens_to_ids("<image>")]

    def logits(prompt: Prompt, response_ids: list[int], images: list[bytes] | None = None):
        rendered = render_image_prompt(Prompt(text=prompt.text, images=images or prompt.images),
                                       processor)
        ids = torch.tensor([rendered.token_ids + list(response_ids)])
        with torch.no_grad(), cpu_threads(1):
            out = model(input_ids=ids, **image_inputs(processor, rendered.images)).logits[0]
        return mask_suppressed(out[len(rendered.token_ids) - 1 : -1].float(), suppressed)

    return logits


def test_image_prompts_return_n_samples_with_expanded_prompt_ids(engine, processor):
    results = engine.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=6, seed=0))
    assert [len(samples) for samples in results] == [3] * len(PROMPTS)
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    for prompt, samples in zip(PROMPTS[:-1], results, strict=False):
        expected_ids = render_image_prompt(prompt, processor).token_ids
        for sample in samples:
            assert sample.prompt_token_ids == expected_ids
            assert sample.prompt_token_ids.count(image_token) == 4  # one per 12x12 patch
            assert len(sample.logprobs) == len(sample.token_ids) >= 1
    assert image_token not in results[-1][0].prompt_token_ids  # the text prompt stays text


def test_logprobs_are_the_forward_pass_with_the_prompts_own_image(engine, reference):
    results = engine.generate(PROMPTS[:3], SamplingParams(n=2, max_new_tokens=6, seed=1))
    for prompt, other, samples in zip(PROMPTS[:3], PROMPTS[1:4], results, strict=False):
        for sample in samples:
            logits = reference(prompt, sample.token_ids)
            expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(sample.token_ids)[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(sample.logprobs), expected, atol=2e-3, rtol=1e-3)
            if other.images:  # another image gives other log-probs: the engine used this one
                swapped = reference(prompt, sample.token_ids, other.images)
                assert not torch.allclose(swapped, logits, atol=1e-3)


def test_greedy_is_the_argmax_with_the_image_alone_or_batched(engine, reference):
    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=5)
    batched = engine.generate(PROMPTS, params)
    for prompt, samples in zip(PROMPTS[:3], batched, strict=False):
        assert samples[0].token_ids == samples[1].token_ids
        assert engine.generate([prompt], params)[0][0].token_ids == samples[0].token_ids
        tokens = samples[0].token_ids
        assert reference(prompt, tokens).argmax(-1).tolist() == tokens


def test_image_prompt_to_a_text_model_is_refused(tmp_path):
    text_model = build_tiny_model(tmp_path / "llama", arch="llama")
    engine = make_engine("hf", text_model, **ENGINE_KWARGS["hf"])
    with pytest.raises(ValueError, match="prompt 1 has images, but the model is not a vision"):
        engine.generate([Prompt(text="1"), PROMPTS[0]], SamplingParams())
