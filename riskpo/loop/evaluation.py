"""Evaluation of the current policy on held-out rows: avg@k, unbiased pass@k for k = 1, 2, 4, ...
up to the number of samples, and greedy accuracy; and `grade`, which sends completions to the
verifiers and returns their verdicts as columns. Shared by the trainer and `riskpo-eval`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from riskpo.algo.metrics import avg_at_k, pass_at_k_curve
from riskpo.batch import Verdicts
from riskpo.data.countdown import count_distinct_solutions
from riskpo.data.loaders import DataConfig
from riskpo.data.rows import COUNTDOWN_SOURCE, Row
from riskpo.data.templates import build_prompt
from riskpo.messages import (
    Completion,
    Prompt,
    SamplingConfig,
    SamplingParams,
    verification_request,
)


class Generator(Protocol):
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Completion]]: ...


class Grader(Protocol):
    def verify_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]: ...


def default_pass_k(samples: int) -> list[int]:
    """1, 2, 4, ... below `samples`, and `samples` itself."""
    ks, k = [], 1
    while k < samples:
        ks.append(k)
        k *= 2
    return [*ks, samples]


def grade(grader: Grader, rows: Sequence[Row], completions: Sequence[Sequence[Completion]]) -> Verdicts:
    """The verifiers' verdicts on every completion, as [prompt, sample] columns."""
    requests = [verification_request(row, sample.text)
                for row, samples in zip(rows, completions, strict=True) for sample in samples]
    flat = grader.verify_batch(requests)
    results, position = [], 0
    for samples in completions:
        results.append(flat[position:position + len(samples)])
        position += len(samples)
    return Verdicts.from_results(results)


def prompts_of(rows: Sequence[Row], data: DataConfig) -> list[Prompt]:
    """The engine prompts of rows under the data config's template."""
    return [build_prompt(row, data.template, data.system_prompt, data.instruction) for row in rows]


def evaluate(generator: Generator, grader: Grader, rows: Sequence[Row], data: DataConfig,
             sampling: SamplingConfig, seed: int) -> dict[str, float]:
    """eval/avg@k, eval/pass@k (each k), eval/greedy_accuracy, eval/infra_errors and
    eval/response_length, with data.eval_samples samples per row at the evaluation's
    temperature (rollout.eval_temperature, or the training one)."""
    prompts = prompts_of(rows, data)
    k = data.eval_samples
    sampled = generator.generate(prompts, sampling.params(k, seed, evaluation=True))
    verdicts = grade(grader, rows, sampled)
    correct = (verdicts.rewards >= 1.0).sum(dim=1)
    metrics = {f"eval/avg@{k}": avg_at_k(correct, k), "eval/infra_errors": float((~verdicts.valid).sum())}
    for kk, value in pass_at_k_curve(correct, k, data.eval_pass_k or default_pass_k(k)).items():
        metrics[f"eval/pass@{kk}"] = value
    metrics["eval/response_length"] = sum(
        len(s.token_ids) for per_prompt in sampled for s in per_prompt) / max(1, k * len(rows))
    metrics.update(_by_kind(rows, correct, k, data.eval_pass_k or default_pass_k(k)))
    if any(row.data_source == COUNTDOWN_SOURCE for row in rows):
        metrics["eval/distinct_correct"] = _distinct_correct(rows, verdicts)
    if data.eval_greedy:
        greedy = generator.generate(prompts, SamplingParams(
            n=1, temperature=0.0, max_new_tokens=sampling.max_new_tokens, stop=list(sampling.stop),
            seed=seed))
        greedy_verdicts = grade(grader, rows, greedy)
        metrics["eval/greedy_accuracy"] = float((greedy_verdicts.rewards[:, 0] >= 1.0).sum()) / max(1, len(rows))
    return metrics


def _by_kind(rows: Sequence[Row], correct: torch.Tensor, samples: int,
             ks: Sequence[int]) -> dict[str, float]:
    """avg@k and pass@k of each kind of problem, where rows say their kind (extra_info.kind,
    e.g. Countdown's rare_only problems that only the rare solution template solves)."""
    kinds = [row.extra_info.get("kind") for row in rows]
    metrics: dict[str, float] = {}
    for kind in sorted({kind for kind in kinds if isinstance(kind, str)}):
        chosen = correct[torch.tensor([k == kind for k in kinds])]
        metrics[f"eval/{kind}/avg@{samples}"] = avg_at_k(chosen, samples)
        for kk, value in pass_at_k_curve(chosen, samples, ks).items():
            metrics[f"eval/{kind}/pass@{kk}"] = value
    return metrics


def _distinct_correct(rows: Sequence[Row], verdicts: Verdicts) -> float:
    """Mean over Countdown problems of the number of distinct correct expressions among their
    samples (canonically distinct: riskpo.data.countdown)."""
    counts = []
    for index, row in enumerate(rows):
        if row.data_source != COUNTDOWN_SOURCE:
            continue
        truth = (row.reward_model or {}).get("ground_truth") or {}
        found = [answer for answer, ok in zip(verdicts.answers[index], verdicts.rewards[index] >= 1.0,
                                               strict=True) if ok and answer]
        counts.append(count_distinct_solutions(found, truth.get("numbers", []), int(truth.get("target", 0))))
    return sum(counts) / max(1, len(counts))

