"""The rollout-engine contract: what every engine (hf on CPU, vllm on GPU) provides.

The driver and the rollout actor only ever see this interface, never a concrete engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch


@dataclass
class SamplingParams:
    n: int = 1  # samples per prompt
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=list)  # stop strings (kept out of the text)
    stop_token_ids: list[int] = field(default_factory=list)  # in addition to EOS
    seed: int | None = None

    def validate(self) -> None:
        """Raises ValueError naming the first field out of range."""
        checks = [
            ("n", self.n >= 1, "must be >= 1"),
            ("temperature", self.temperature >= 0.0, "must be >= 0 (0 means greedy)"),
            ("top_p", 0.0 < self.top_p <= 1.0, "must be in (0, 1]"),
            ("top_k", self.top_k >= 0, "must be >= 0 (0 disables)"),
            ("max_new_tokens", self.max_new_tokens >= 1, "must be >= 1"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "must be non-empty strings"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"SamplingParams.{name}={getattr(self, name)!r} {rule}")


@dataclass
class Prompt:
    """One prompt: exactly one of token_ids, text or messages (rendered with the chat template)."""

    token_ids: list[int] | None = None
    text: str | None = None
    messages: list[dict[str, str]] | None = None


@dataclass
class Completion:
    """One sampled response of one prompt.

    token_ids are exactly the sampled tokens, up to and including the one that ended the
    response (EOS, a stop token id, or the token that completed a stop string), so the learner
    trains on what was sampled. text is their decoding without special tokens and cut before
    a matched stop string.

    logprobs[i] is log p(token_ids[i]) under the distribution the token was drawn from: the
    model's softmax after temperature scaling and top-k/top-p filtering (the "processed"
    distribution). At temperature 1, top_p 1, top_k 0 this equals the raw model log-prob the
    learner recomputes; for greedy decoding (temperature 0) it is the raw model log-prob.
    """

    token_ids: list[int]  # response tokens only
    logprobs: list[float]  # log-prob of each response token under the sampling policy
    finish_reason: Literal["stop", "length"]
    text: str  # decoded response
    prompt_token_ids: list[int] = field(default_factory=list)


@runtime_checkable
class RolloutEngine(Protocol):
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """Returns [prompt][sample] completions, in prompt order, params.n per prompt."""
        ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Loads named tensors (HF parameter names), bumps weight_version, resets caches.
        Unknown names and shape mismatches raise, naming the parameter."""
        ...

    @property
    def weight_version(self) -> int: ...

    def sleep(self) -> None:
        """Frees accelerator memory (colocated mode); a no-op where there is nothing to free."""
        ...

    def wake_up(self) -> None: ...


def render_prompt(prompt: Prompt, tokenizer: Any, index: int = 0) -> list[int]:
    """Token ids of one prompt: given ids as they are, text through the tokenizer (with its
    special tokens, as vLLM does), messages through the chat template with a generation
    prompt. `index` only names the prompt in errors."""
    given = [
        name for name in ("token_ids", "text", "messages") if getattr(prompt, name) is not None
    ]
    if len(given) != 1:
        raise ValueError(
            f"prompt {index}: set exactly one of token_ids, text, messages (got {given or 'none'})"
        )
    if prompt.token_ids is not None:
        token_ids = list(prompt.token_ids)
    elif prompt.text is not None:
        token_ids = tokenizer(prompt.text)["input_ids"]
    else:
        rendered = tokenizer.apply_chat_template(
            prompt.messages, add_generation_prompt=True, tokenize=False
        )
        token_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    if not token_ids:
        raise ValueError(f"prompt {index}: renders to no tokens")
    return token_ids


def first_stop_string(text: str, stop: Sequence[str]) -> int | None:
    """Character offset of the earliest stop string in text, or None."""
    positions = [text.find(s) for s in stop if s in text]
    return min(positions) if positions else None
