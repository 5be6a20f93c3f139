"""The rollout-engine contract: what every engine (hf on CPU, vllm on GPU) provides.

The driver and the rollout actor only ever see this interface, never a concrete engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import torch

from riskpo.messages import Completion, Prompt, SamplingParams


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

    @property
    def sleeping(self) -> bool: ...

    def sleep(self) -> None:
        """Frees accelerator memory (colocated mode; a no-op where there is nothing to free).
        A sleeping engine refuses generate and load_weights (RuntimeError) until wake_up: a
        weight sync to it is refused, never lost."""
        ...

    def wake_up(self) -> None: ...


def first_stop_string(text: str, stop: Sequence[str]) -> int | None:
    """Character offset of the earliest stop string in text, or None."""
    positions = [text.find(s) for s in stop if s in text]
    return min(positions) if positions else None
