"""Evaluation of the current policy on held-out rows: avg@k, unbiased pass@k for k = 1, 2, 4, ...
up to the number of samples, and greedy accuracy. Shared by the trainer and `riskpo-eval`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from riskpo.config import RunConfig
from riskpo.data.rows import Row
from riskpo.data.templates import build_prompt
from riskpo.messages import Completion, Prompt, SamplingParams, is_masked, verification_request
from riskpo.metrics import avg_at_k, pass_at_k


class Generator(Protocol):
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]: ...


class Grader(Protocol):
    def verify_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


@dataclass
class EvalSettings:
    samples: int = 8  # k samples per prompt
    pass_k: Sequence[int] | None = None  # None: 1, 2, 4, ... up to samples (and samples itself)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    stop: Sequence[str] = ()
    greedy: bool = True
    seed: int = 0
    template: str = "plain"
    system_prompt: str | None = None
    instruction: str | None = None


def eval_settings(run: RunConfig, seed: int) -> EvalSettings:
    """The evaluation settings of a run config (data.eval_*, the rollout's sampling)."""
    d, r = run.data, run.rollout
    return EvalSettings(
        samples=d.eval_samples, pass_k=d.eval_pass_k,
        temperature=r.temperature if r.eval_temperature is None else r.eval_temperature,
        top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens, stop=r.stop,
        greedy=d.eval_greedy, seed=seed, template=d.template, system_prompt=d.system_prompt,
        instruction=d.instruction)


def default_pass_k(samples: int) -> list[int]:
    """1, 2, 4, ... below `samples`, and `samples` itself."""
    ks, k = [], 1
    while k < samples:
        ks.append(k)
        k *= 2
    return [*ks, samples]


def grade(grader: Grader, rows: Sequence[Row], completions: Sequence[Sequence[Completion]]
          ) -> list[list[dict[str, Any]]]:
    """Verifier results shaped like `completions`: [prompt][sample]."""
    requests = [verification_request(row, sample.text)
                for row, samples in zip(rows, completions, strict=True) for sample in samples]
    flat = grader.verify_batch(requests)
    results, position = [], 0
    for samples in completions:
        results.append(flat[position:position + len(samples)])
        position += len(samples)
    return results


def evaluate(generator: Generator, grader: Grader, rows: Sequence[Row], settings: EvalSettings
             ) -> dict[str, float]:
    """eval/avg@k, eval/pass@k (each k), eval/greedy_accuracy and eval/infra_errors."""
    prompts = [build_prompt(row, settings.template, settings.system_prompt, settings.instruction)
               for row in rows]
    sampled = generator.generate(prompts, SamplingParams(
        n=settings.samples, temperature=settings.temperature, top_p=settings.top_p,
        top_k=settings.top_k, max_new_tokens=settings.max_new_tokens, stop=list(settings.stop),
        seed=settings.seed))
    results = grade(grader, rows, sampled)
    correct = torch.tensor([sum(r["reward"] >= 1.0 for r in per_prompt) for per_prompt in results])
    infra = sum(is_masked(r) for per_prompt in results for r in per_prompt)
    k = settings.samples
    metrics = {f"eval/avg@{k}": avg_at_k(correct, k), "eval/infra_errors": float(infra)}
    for kk in settings.pass_k or default_pass_k(k):
        metrics[f"eval/pass@{kk}"] = float(pass_at_k(correct, k, kk).mean())
    metrics["eval/response_length"] = sum(
        len(s.token_ids) for per_prompt in sampled for s in per_prompt) / max(1, k * len(rows))
    if settings.greedy:
        greedy = generator.generate(prompts, SamplingParams(
            n=1, temperature=0.0, max_new_tokens=settings.max_new_tokens, stop=list(settings.stop),
            seed=settings.seed))
        greedy_results = grade(grader, rows, greedy)
        metrics["eval/greedy_accuracy"] = sum(
            r[0]["reward"] >= 1.0 for r in greedy_results) / max(1, len(rows))
    return metrics
