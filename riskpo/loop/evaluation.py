"""Evaluation of the current policy on held-out rows: avg@k, unbiased pass@k for k = 1, 2, 4, ...
up to the number of samples, greedy accuracy and each row's task's own metrics; and `grade`,
which sends completions to the verifiers (each row's task makes its request) and returns their
verdicts as columns. Shared by the trainer and `riskpo-eval`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from riskpo.algo.metrics import avg_at_k, pass_at_k_curve
from riskpo.batch import Verdicts
from riskpo.data.loaders import DataConfig
from riskpo.data.registry import Task, task_of_row, verification_request
from riskpo.data.rows import Row
from riskpo.data.templates import build_prompt
from riskpo.messages import Completion, Prompt, SamplingConfig, SamplingParams


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
    """The verifiers' verdicts on every completion, as [prompt, sample] columns, with the
    result fields the rows' tasks read (their verdict_details) as details."""
    requests = [verification_request(row, sample.text)
                for row, samples in zip(rows, completions, strict=True) for sample in samples]
    flat = grader.verify_batch(requests)
    results, position = [], 0
    for samples in completions:
        results.append(flat[position:position + len(samples)])
        position += len(samples)
    fields = sorted({name for task in _tasks_of(rows) for name in task.verdict_details})
    return Verdicts.from_results(results, fields)


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
    for task in _tasks_of(rows):
        metrics.update(task_metrics(task, rows, verdicts, k, data.eval_pass_k or default_pass_k(k)))
    if data.eval_greedy:
        greedy = generator.generate(prompts, SamplingParams(
            n=1, temperature=0.0, max_new_tokens=sampling.max_new_tokens, stop=list(sampling.stop),
            seed=seed))
        greedy_verdicts = grade(grader, rows, greedy)
        metrics["eval/greedy_accuracy"] = float((greedy_verdicts.rewards[:, 0] >= 1.0).sum()) / max(1, len(rows))
    return metrics


def _tasks_of(rows: Sequence[Row]) -> list[Task]:
    """The registered tasks the rows belong to (by data_source), in order of first row."""
    found = {id(task): task for task in map(task_of_row, rows) if task is not None}
    return list(found.values())


def task_metrics(task: Task, rows: Sequence[Row], verdicts: Verdicts, samples: int,
                 ks: Sequence[int]) -> dict[str, float]:
    """A task's own metrics over its rows: avg@k and pass@k of each of its groups of problems
    (task.eval_groups, an extra_info field, e.g. Countdown's kinds: eval/rare_only/pass@k), and
    the mean of each of its per-problem numbers (task.problem_metrics: eval/<name>)."""
    mine = [index for index, row in enumerate(rows) if task_of_row(row) is task]
    correct = (verdicts.rewards[mine] >= 1.0)
    metrics: dict[str, float] = {}
    if task.eval_groups is not None:
        groups = [rows[index].extra_info.get(task.eval_groups) for index in mine]
        counts = correct.sum(dim=1)
        for group in sorted({group for group in groups if isinstance(group, str)}):
            chosen = counts[torch.tensor([g == group for g in groups])]
            metrics[f"eval/{group}/avg@{samples}"] = avg_at_k(chosen, samples)
            for kk, value in pass_at_k_curve(chosen, samples, ks).items():
                metrics[f"eval/{group}/pass@{kk}"] = value
    totals: dict[str, float] = {}
    for position, index in enumerate(mine):
        right = [detail for detail, ok in zip(verdicts.details[index], correct[position], strict=True)
                 if ok]
        for name, value in task.problem_metrics(rows[index], right).items():
            totals[name] = totals.get(name, 0.0) + value
    metrics.update({f"eval/{name}": total / len(mine) for name, total in totals.items()})
    return metrics
