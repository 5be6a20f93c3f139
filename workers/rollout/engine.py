"""The rollout-engine contract: what every engine (hf on CPU, vllm on GPU) provides, and the
bookkeeping every engine shares (sleeping, the checks of loaded weights, what a broken sampling
distribution raises).

The driver and the rollout actor only ever see this interface, never a concrete engine. Which
weights an engine holds is the rollout actor's record (the learner's number, given with them):
an engine only loads them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch

from riskpo.messages import Completion, NonFiniteSampling, Prompt, SamplingParams

# torch.multinomial's message when the probabilities it samples from hold inf/nan (hf's
# sampler; vLLM's older samplers raise the same)
TORCH_NON_FINITE_SAMPLING = "probability tensor contains either `inf`, `nan` or element < 0"


class RolloutEngine(Protocol):
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """Returns [prompt][sample] completions, in prompt order, params.n per prompt. Raises
        NonFiniteSampling when the sampling distribution is not finite."""
        ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Loads named tensors (HF parameter names) and resets caches. Unknown names and shape
        mismatches raise, naming the parameter."""
        ...

    def load_adapter(self, options: dict[str, Any], weights: Iterable[tuple[str, torch.Tensor]],
                     version: int) -> None:
        """Applies a LoRA adapter (PEFT options r, lora_alpha, target_modules; its tensors in
        the transformers model's names) on top of the engine's base weights, in place of the
        adapter it held; `version` is the learner's number for it. Only engines whose
        ENGINE_CAPABILITIES say lora_adapters."""
        ...

    @property
    def sleeping(self) -> bool: ...

    def sleep(self) -> None:
        """Frees accelerator memory (colocated mode; a no-op where there is nothing to free).
        A sleeping engine refuses generate and load_weights (RuntimeError) until wake_up: a
        weight sync to it is refused, never lost."""
        ...

    def wake_up(self) -> None: ...


class SleepState:
    """Whether an engine sleeps, and the refusal of work while it does: the part of sleep()
    and wake_up() every engine shares (what sleeping frees is the engine's own)."""

    def __init__(self, engine_name: str) -> None:
        self.engine_name = engine_name
        self.sleeping = False

    def require_awake(self, call: str) -> None:
        if self.sleeping:
            raise RuntimeError(f"{self.engine_name}.{call} called while asleep; call wake_up() first")

    def sleep(self, free_memory: Callable[[], None]) -> None:
        """Frees the engine's memory (once) and refuses work until wake_up."""
        if not self.sleeping:
            free_memory()
        self.sleeping = True

    def wake_up(self, restore_memory: Callable[[], None]) -> None:
        if self.sleeping:
            restore_memory()
        self.sleeping = False


def checked_weights(weights: Iterable[tuple[str, torch.Tensor]], shapes: Mapping[str, tuple[int, ...]],
                    engine_name: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The (name, tensor) pairs of a weight load, each checked against the model's parameter
    shapes as it passes: an unknown name is a KeyError, a wrong shape a ValueError, both naming
    the parameter."""
    for name, tensor in weights:
        if name not in shapes:
            raise KeyError(f"{engine_name}.load_weights: unknown parameter {name!r}")
        if tuple(tensor.shape) != tuple(shapes[name]):
            raise ValueError(f"{engine_name}.load_weights: {name!r} has shape {tuple(tensor.shape)}, "
                             f"the model expects {tuple(shapes[name])}")
        yield name, tensor


@contextmanager
def sampling_checked(engine_name: str) -> Iterator[None]:
    """Turns the sampler's refusal of inf/nan probabilities (torch's RuntimeError) into
    NonFiniteSampling."""
    try:
        yield
    except RuntimeError as error:
        if TORCH_NON_FINITE_SAMPLING in str(error):
            raise NonFiniteSampling(f"{engine_name}: {error}") from error
        raise


def require_finite_logprobs(logprobs: Sequence[float], engine_name: str) -> None:
    """A sampled token whose log-prob is not finite was drawn from a broken distribution (a
    sampler that does not check, such as vLLM's or greedy argmax over nan logits, still
    returns one): NonFiniteSampling."""
    bad = next((value for value in logprobs if not math.isfinite(value)), None)
    if bad is not None:
        raise NonFiniteSampling(f"{engine_name}: a sampled token has log-prob {bad} (the sampling "
                                "distribution is not finite)")


def first_stop_string(text: str, stop: Sequence[str]) -> int | None:
    """Character offset of the earliest stop string in text, or None."""
    positions = [text.find(s) for s in stop if s in text]
    return min(positions) if positions else None
