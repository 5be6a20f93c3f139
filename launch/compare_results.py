"""The numbers of a comparison (launch/compare_report.py): one finished run's results read from
its directory, and the statistics over seeds the report prints -- means with 95% Student t
intervals, and the step at which a run's training reward reached a level (comparisons at
matched training reward)."""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats

from launch.compare_spec import PlannedRun, Study
from riskpo.run.record import read_metrics

PASS_KEY = re.compile(r"^eval/pass@(\d+)$")
KIND_KEY = re.compile(r"^eval/([a-z_]+)/pass@\d+$")
AVG1 = "eval/pass@1"  # unbiased pass@1 = the mean accuracy of the samples = avg@1
DISTINCT = "eval/distinct_correct"
ENTROPY = "actor/entropy"
REWARD = "train/reward_mean"
ALL_WRONG_NONZERO = "adv/all_wrong_nonzero_fraction"
ALL_WRONG = "adv/all_wrong_question_fraction"
DIAGNOSTICS = (("correct pushed down", "adv/correct_negative_fraction"),
               ("wrong pushed up", "adv/wrong_positive_fraction"),
               ("mean A", "adv/mean"), ("p99 abs A", "adv/p99_abs"),
               ("A, success 0-25%", "adv/mean_success_0_25"),
               ("A, 25-50%", "adv/mean_success_25_50"),
               ("A, 50-75%", "adv/mean_success_50_75"),
               ("A, 75-100%", "adv/mean_success_75_100"))
SMOOTH = 5  # steps in the rolling mean of per-step curves
MISSING = "—"
EPS = 1e-9  # differences below this are rounding, not a lead


def number(value: Any) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)


@dataclass
class RunResult:
    """What the report needs from one finished run."""

    arm: str
    seed: int
    initial: dict[str, float]
    final: dict[str, float]
    evals: list[tuple[int, dict[str, float]]]  # (step, eval metrics), step 0 = before RL
    rows: list[dict[str, Any]]  # metrics.jsonl
    wall_s: float

    def series(self, key: str) -> tuple[list[int], list[float]]:
        points = [(row["step"], row[key]) for row in self.rows if number(row.get(key))]
        return [p[0] for p in points], [p[1] for p in points]

    def end_mean(self, key: str) -> float:
        """Mean of a per-step metric over the last 10% of steps (at least SMOOTH)."""
        _, values = self.series(key)
        if not values:
            return math.nan
        tail = max(SMOOTH, len(values) // 10)
        return statistics.fmean(values[-tail:])

    def train_mean(self, key: str) -> float:
        _, values = self.series(key)
        return statistics.fmean(values) if values else math.nan

    def steps_to(self, target: float) -> int | None:
        return next((step for step, metrics in self.evals if metrics.get(AVG1, -1) >= target), None)

    def eval_at_reward(self, level: float) -> tuple[int, dict[str, float]] | None:
        """The first evaluation at or after the step where the smoothed training reward first
        reached `level` (None: never reached, or no evaluation after it)."""
        steps, values = self.series(REWARD)
        smoothed = [statistics.fmean(values[max(0, i - SMOOTH + 1):i + 1]) for i in range(len(values))]
        reached = next((step for step, value in zip(steps, smoothed, strict=True) if value >= level), None)
        if reached is None:
            return None
        return next(((step, metrics) for step, metrics in self.evals if step >= reached), None)


def load_result(run: PlannedRun) -> RunResult | None:
    """The run's result, or None when it has not finished (no summary.json)."""
    summary_path = run.run_dir / "summary.json"
    if not summary_path.is_file():
        return None
    summary = json.loads(summary_path.read_text())
    rows = read_metrics(run.run_dir)
    evals = [(0, summary.get("initial") or {})] if summary.get("initial") else []
    evals += [(row["step"], {k: v for k, v in row.items() if k.startswith("eval/")})
              for row in rows if AVG1 in row]
    return RunResult(run.arm, run.seed, summary.get("initial") or {}, summary["final"], evals,
                     rows, float(summary.get("wall_s", math.nan)))


def interval(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% Student t interval) over the numbers given; half-width
    NaN with one value, (NaN, NaN) with none."""
    values = [v for v in values if number(v)]
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, float(half)


def cell(values: Sequence[float], digits: int = 3) -> str:
    """"mean ± 95% half-width", or the value alone with one seed."""
    mean, half = interval(values)
    if math.isnan(mean):
        return MISSING
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if number(half) else f"{mean:.{digits}f}"


def beyond(first: Sequence[float], second: Sequence[float]) -> bool | None:
    """Whether first's 95% interval lies wholly above second's; None with fewer than two seeds
    on either side (no interval to judge by)."""
    (m1, h1), (m2, h2) = interval(first), interval(second)
    if not (number(h1) and number(h2)):
        return None
    return m1 - h1 > m2 + h2 + EPS


def pass_ks(results: Sequence[RunResult]) -> list[int]:
    found = {int(m.group(1)) for r in results for k in r.final if (m := PASS_KEY.match(k))}
    return sorted(found)


def kinds_of(results: Sequence[RunResult]) -> list[str]:
    """The kinds of problem the evaluation broke pass@k down by (eval/<kind>/pass@k)."""
    return sorted({m.group(1) for r in results for k in r.final if (m := KIND_KEY.match(k))})


def by_arm(study: Study, results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    grouped = {arm.name: [] for arm in study.arms}
    for result in results:
        grouped[result.arm].append(result)
    return grouped
