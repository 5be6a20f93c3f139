"""The rollout-engine contract: what every engine (hf on CPU, vllm on GPU) provides.

The driver and the rollout actor only ever see this interface, never a concrete engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import torch


@dataclass
class SamplingParams:
    n: int = 1  # samples per prompt
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=list)  # stop strings (kept out of the response)
    stop_token_ids: list[int] = field(default_factory=list)  # in addition to EOS
    seed: int | None = None


@dataclass
class Prompt:
    """One prompt: exactly one of token_ids, text or messages (rendered with the chat template)."""

    token_ids: list[int] | None = None
    text: str | None = None
    messages: list[dict[str, str]] | None = None


@dataclass
class Completion:
    """One sampled response of one prompt."""

    token_ids: list[int]  # response tokens only
    logprobs: list[float]  # log-prob of each response token under the sampling policy
    finish_reason: Literal["stop", "length"]
    text: str  # decoded response
    prompt_token_ids: list[int] = field(default_factory=list)


@runtime_checkable
class RolloutEngine(Protocol):
    def generate(
        self, prompts: Sequence[Prompt], params: SamplingParams
    ) -> list[list[Completion]]:
        """Returns [prompt][sample] completions, in prompt order, params.n per prompt."""
        ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Loads named tensors (HF parameter names), bumps weight_version, resets caches."""
        ...

    @property
    def weight_version(self) -> int: ...

    def sleep(self) -> None:
        """Frees accelerator memory (colocated mode); a no-op where there is nothing to free."""
        ...

    def wake_up(self) -> None: ...
