"""The transformers rollout engine: `generate` with left padding and batching by prompt
length, seeded sampling, and the log-prob of every sampled token (the CPU default engine).
Image prompts go through the model's processor (riskpo/models/vlm.py): their token ids carry the
expanded image tokens, and each batch's pixel inputs go to `generate` beside them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import inject_adapter_in_model
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from riskpo.messages import Completion, Prompt, SamplingParams, render_prompt
from riskpo.models.config import MODEL_DTYPES
from riskpo.models.loading import load_model_and_tokenizer
from riskpo.models.vlm import (
    concat_image_inputs,
    load_processor,
    render_image_prompt,
    suppressed_token_ids,
    token_type_inputs,
)
from workers.rollout.engine import (
    SleepState,
    checked_weights,
    first_stop_string,
    require_finite_logprobs,
    sampling_checked,
)


@contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Runs the block with `count` torch CPU threads (a process-wide setting), then restores.
    On a busy machine one thread per engine is far faster than oversubscribed cores."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class StopStringCriteria(StoppingCriteria):
    """Ends a row once its decoded response contains a stop string (same test as the trim)."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_width: int):
        self.tokenizer, self.stop, self.prompt_width = tokenizer, list(stop), prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        responses = input_ids[:, self.prompt_width :].tolist()
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        done = [first_stop_string(text, self.stop) is not None for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFEngine:
    """A RolloutEngine over a transformers causal LM.

    Prompts are sorted by length and generated in batches of at most max_batch_sequences
    sequences (prompts x n); each batch is left-padded. With params.seed set, the same call
    returns the same samples (the global RNG is forked, not disturbed)."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        max_batch_sequences: int = 256,
        gguf_file: str | None = None,
        num_threads: int | None = None,
    ):
        if dtype not in MODEL_DTYPES:
            raise ValueError(f"HFEngine: dtype must be one of {sorted(MODEL_DTYPES)}, got {dtype!r}")
        if max_batch_sequences < 1:
            raise ValueError(
                f"HFEngine: max_batch_sequences must be >= 1, got {max_batch_sequences}"
            )
        self.device = torch.device(device)
        self.num_threads = num_threads  # torch CPU threads while generating; None: unchanged
        self.max_batch_sequences = max_batch_sequences
        model, tokenizer = load_model_and_tokenizer(
            model_path, dtype=MODEL_DTYPES[dtype], gguf_file=gguf_file
        )
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.processor = None if gguf_file else load_processor(model_path)  # VLMs only
        self.suppressed = suppressed_token_ids(model.config)  # a VLM's image token
        self.tokenizer.padding_side = "left"
        self.eos_token_ids = self._eos_token_ids()
        if tokenizer.pad_token_id is None:  # left padding needs one; pads are masked out
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(self.eos_token_ids[0])
        self.pad_token_id = tokenizer.pad_token_id
        # Only our per-call settings drive generation, never a checkpoint's saved defaults.
        self.model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
        )
        self._sleep = SleepState("HFEngine")
        self.adapter_options: dict[str, Any] | None = None  # the LoRA adapter's, once loaded

    def _eos_token_ids(self) -> list[int]:
        configured = self.model.generation_config.eos_token_id
        if configured is None:
            configured = self.tokenizer.eos_token_id
        if configured is None:
            raise ValueError("HFEngine: the model has no EOS token id (config or tokenizer)")
        return [configured] if isinstance(configured, int) else list(configured)

    # ---- generation -------------------------------------------------------------------

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]:
        params.validate()
        self._sleep.require_awake("generate")
        rendered = [self._render(p, i) for i, p in enumerate(prompts)]
        prompt_ids = [token_ids for token_ids, _ in rendered]
        results: list[list[Completion]] = [[] for _ in prompt_ids]
        with (
            cpu_threads(self.num_threads),
            torch.random.fork_rng(devices=self._rng_devices(), enabled=params.seed is not None),
        ):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            for batch in self._batches_by_length(prompt_ids, params.n):
                completions = self._generate_batch([prompt_ids[i] for i in batch], params,
                                                   [rendered[i][1] for i in batch])
                for index, samples in zip(batch, completions, strict=True):
                    results[index] = samples
        return results

    def _render(self, prompt: Prompt, index: int) -> tuple[list[int], dict[str, torch.Tensor]]:
        """A prompt's token ids and the pixel inputs of its images (none for a text prompt)."""
        if not prompt.images:
            return render_prompt(prompt, self.tokenizer, index), {}
        if self.processor is None:
            raise ValueError(f"prompt {index} has images, but the model is not a "
                             "vision-language model (no image processor)")
        image_prompt = render_image_prompt(prompt, self.processor, index)
        return image_prompt.token_ids, image_prompt.pixels

    def _image_kwargs(self, batch_pixels: list[dict[str, torch.Tensor]], samples: int,
                      input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """generate()'s image arguments for the rows (each prompt `samples` times): pixel
        inputs in row order (floats in the model's dtype) and token-type ids where needed."""
        pixels = concat_image_inputs([p for p in batch_pixels for _ in range(samples)])
        if not pixels:
            return {}
        kwargs = {name: value.to(self.device, self.model.dtype) if value.is_floating_point()
                  else value.to(self.device) for name, value in pixels.items()}
        return {**kwargs, **token_type_inputs(self.model, input_ids)}

    def _rng_devices(self) -> list[torch.device]:
        return [self.device] if self.device.type == "cuda" else []

    def _batches_by_length(self, prompt_ids: list[list[int]], n: int) -> list[list[int]]:
        """Prompt indices sorted by length, cut into batches of <= max_batch_sequences rows."""
        prompts_per_batch = max(1, self.max_batch_sequences // n)
        order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
        return [order[i : i + prompts_per_batch] for i in range(0, len(order), prompts_per_batch)]

    @torch.no_grad()
    def _generate_batch(
        self, batch_prompt_ids: list[list[int]], params: SamplingParams,
        batch_pixels: list[dict[str, torch.Tensor]] | None = None,
    ) -> list[list[Completion]]:
        rows = [ids for ids in batch_prompt_ids for _ in range(params.n)]
        padded = self.tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")
        input_ids = padded["input_ids"].to(self.device)
        attention_mask = padded["attention_mask"].to(self.device)
        prompt_width = input_ids.shape[1]
        stopping = StoppingCriteriaList()
        if params.stop:
            stopping.append(StopStringCriteria(self.tokenizer, params.stop, prompt_width))
        with sampling_checked("HFEngine"):
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=self._generation_config(params),
                stopping_criteria=stopping,
                **self._image_kwargs(batch_pixels or [], params.n, input_ids),
            )
        response_ids = output.sequences[:, prompt_width:]  # [rows, steps]
        token_logprobs = self._sampled_logprobs(output.scores, response_ids)  # [rows, steps]
        completions = [
            self._completion(
                prompt, response_ids[row].tolist(), token_logprobs[row].tolist(), params
            )
            for row, prompt in enumerate(rows)
        ]
        return [completions[i : i + params.n] for i in range(0, len(completions), params.n)]

    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        greedy = params.temperature == 0.0
        return GenerationConfig(
            do_sample=not greedy,
            temperature=None if greedy else params.temperature,
            top_p=None if greedy else params.top_p,
            top_k=None if greedy else params.top_k,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=self.eos_token_ids + list(params.stop_token_ids),
            pad_token_id=self.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
            suppress_tokens=self.suppressed or None,  # processed: the token has probability 0
            num_return_sequences=1,
            return_dict_in_generate=True,
            output_scores=True,  # processed scores: after temperature, top-k, top-p
        )

    @staticmethod
    def _sampled_logprobs(
        step_scores: tuple[torch.Tensor, ...], response_ids: torch.Tensor
    ) -> torch.Tensor:
        """log softmax of each step's processed scores at the token sampled there."""
        per_step = [
            torch.log_softmax(scores.float(), dim=-1).gather(1, response_ids[:, step, None])
            for step, scores in enumerate(step_scores)
        ]
        return torch.cat(per_step, dim=1).cpu()

    def _completion(
        self,
        prompt_ids: list[int],
        response_ids: list[int],
        logprobs: list[float],
        params: SamplingParams,
    ) -> Completion:
        length, finish_reason = self._response_end(response_ids, params)
        require_finite_logprobs(logprobs[:length], "HFEngine")
        tokens = response_ids[:length]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        stop_at = first_stop_string(text, params.stop)
        if stop_at is not None:
            text = text[:stop_at]
        return Completion(
            token_ids=tokens,
            logprobs=logprobs[:length],
            finish_reason=finish_reason,
            text=text,
            prompt_token_ids=list(prompt_ids),
        )

    def _response_end(self, response_ids: list[int], params: SamplingParams) -> tuple[int, str]:
        """(number of tokens kept, finish reason): through the first stop token or the token
        that completes a stop string, whichever comes first, else all (a length stop)."""
        stop_ids = set(self.eos_token_ids) | set(params.stop_token_ids)
        end = next((i + 1 for i, token in enumerate(response_ids) if token in stop_ids), None)
        candidate = response_ids[:end] if end is not None else response_ids
        if params.stop and self._stop_string_in(candidate, params.stop):
            end = next(
                length
                for length in range(1, len(candidate) + 1)
                if self._stop_string_in(candidate[:length], params.stop)
            )
        if end is not None:
            return end, "stop"
        if len(response_ids) < params.max_new_tokens:
            raise RuntimeError(
                f"HFEngine: generation ended after {len(response_ids)} < max_new_tokens tokens "
                "without a stop token or stop string"
            )
        return len(response_ids), "length"

    def _stop_string_in(self, token_ids: list[int], stop: Sequence[str]) -> bool:
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return first_stop_string(text, stop) is not None

    # ---- weights and memory -----------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copies named tensors into the model; unknown names and shape mismatches raise, and
        so does a sleeping engine (wake it first: its weights are not where they run)."""
        self._sleep.require_awake("load_weights")
        targets = self.model.state_dict(keep_vars=True)
        shapes = {name: tuple(target.shape) for name, target in targets.items()}
        with torch.no_grad():
            for name, tensor in checked_weights(weights, shapes, "HFEngine"):
                target = targets[name]
                target.copy_(tensor.to(device=target.device, dtype=target.dtype))

    def load_adapter(self, options: dict[str, Any], weights: Iterable[tuple[str, torch.Tensor]],
                     version: int) -> None:
        """The first adapter is injected into the model through PEFT (its base weights stay as
        loaded); every later one is copied into the same adapter tensors. Generation then runs
        each target Linear as W x + scaling B A x, unmerged."""
        self._sleep.require_awake("load_adapter")
        if self.adapter_options is None:
            inject_adapter_in_model(PeftLoraConfig(**options), self.model)
            self.adapter_options = dict(options)
        elif options != self.adapter_options:
            raise ValueError(f"HFEngine.load_adapter: the adapter's options changed from "
                             f"{self.adapter_options} to {options}")
        self.load_weights(weights)

    @property
    def sleeping(self) -> bool:
        return self._sleep.sleeping

    def sleep(self) -> None:
        """On a GPU, moves the weights to CPU memory and frees the cache; a no-op on CPU."""
        self._sleep.sleep(self._free_device_memory)

    def wake_up(self) -> None:
        self._sleep.wake_up(self._restore_device_memory)

    def _free_device_memory(self) -> None:
        if self.device.type == "cuda":
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def _restore_device_memory(self) -> None:
        if self.device.type == "cuda":
            self.model.to(self.device)
