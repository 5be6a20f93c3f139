"""Fixtures for the rollout tests: tiny models on disk, the engines available here, and a
reference that scores tokens with a plain transformers forward pass."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from riskpo.models.loading import load_model_and_tokenizer
from riskpo.models.tiny import build_tiny_model
from workers.rollout.hf_engine import cpu_threads


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A ~1M-parameter Llama with the character tokenizer (head_dim 64, as vLLM needs)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"), arch="llama", seed=0)


@pytest.fixture(scope="session")
def other_tiny_model_path(tmp_path_factory):
    """Same shapes as tiny_model_path, different random weights."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama_other"), arch="llama", seed=1)


def topk_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    if top_k <= 0:
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


@pytest.fixture(scope="session")
def reference_logprobs() -> Callable:
    """score(model_path, prompt_ids, response_ids, temperature=1, top_k=0) -> [T] log-probs of
    the response under softmax(top_k(logits / temperature)), from one transformers forward."""
    models = {}

    def score(model_path, prompt_ids, response_ids, temperature=1.0, top_k=0) -> torch.Tensor:
        if model_path not in models:
            models[model_path] = load_model_and_tokenizer(model_path)[0]
        ids = torch.tensor([list(prompt_ids) + list(response_ids)])
        with torch.no_grad(), cpu_threads(1):
            logits = models[model_path](ids).logits[0].float()
        step_logits = logits[len(prompt_ids) - 1 : -1] / temperature  # predicts each response token
        logprobs = torch.log_softmax(topk_filter(step_logits, top_k), dim=-1)
        return logprobs.gather(1, torch.tensor(response_ids)[:, None])[:, 0]

    return score


@pytest.fixture(scope="session")
def reference_greedy() -> Callable:
    """greedy(model_path, prompt_ids, steps) -> argmax continuation by repeated forwards."""
    models = {}

    def greedy(model_path, prompt_ids, steps) -> list[int]:
        if model_path not in models:
            models[model_path] = load_model_and_tokenizer(model_path)[0]
        ids = list(prompt_ids)
        with torch.no_grad(), cpu_threads(1):
            for _ in range(steps):
                ids.append(int(models[model_path](torch.tensor([ids])).logits[0, -1].argmax()))
        return ids[len(prompt_ids) :]

    return greedy
