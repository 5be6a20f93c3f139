"""The figures of a comparison report (launch/compare_report.py): held-out metrics over steps
from step 0 (before RL) with seed bands, pass@k against k with 95% intervals over seeds (all
problems, and each kind of problem where rows have kinds), and per-step training curves."""

from __future__ import annotations

import math
import statistics
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from launch.compare_results import (  # noqa: E402
    ALL_WRONG_NONZERO,
    AVG1,
    DISTINCT,
    ENTROPY,
    REWARD,
    SMOOTH,
    RunResult,
    interval,
    kinds_of,
    number,
    pass_ks,
)
from launch.compare_spec import Study  # noqa: E402


def _colors(names: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _band(axis, colors, arm: str, curves: list[tuple[list[int], list[float]]]) -> None:
    """Mean over the seeds that have a value at each step, and their min-max band (per-step
    metrics such as the all-wrong signal exist only on steps that had such questions)."""
    lookup = [dict(zip(steps, values, strict=True)) for steps, values in curves]
    steps = sorted({s for table in lookup for s in table})
    columns = [[v for table in lookup if number(v := table.get(s))] for s in steps]
    steps, columns = [s for s, c in zip(steps, columns, strict=True) if c], [c for c in columns if c]
    if not steps:
        return
    axis.plot(steps, [statistics.fmean(c) for c in columns], color=colors[arm], label=arm)
    if len(curves) > 1:
        axis.fill_between(steps, [min(c) for c in columns], [max(c) for c in columns],
                          color=colors[arm], alpha=0.18, linewidth=0)


def _legend(axis) -> None:
    """The arms' legend, or a note that no run logged the metric (e.g. no all-wrong question)."""
    if axis.get_legend_handles_labels()[1]:
        axis.legend(fontsize=8)
    else:
        axis.text(0.5, 0.5, "no run logged this", ha="center", va="center",
                  transform=axis.transAxes, color="gray")


def _smoothed(steps: list[int], values: list[float]) -> tuple[list[int], list[float]]:
    out = [statistics.fmean(values[max(0, i - SMOOTH + 1):i + 1]) for i in range(len(values))]
    return steps, out


def _title(axis, text: str) -> None:
    """A title wrapped to the axis' width (study titles are long)."""
    axis.set_title("\n".join(textwrap.wrap(text, 58)), fontsize=9)


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _pass_at_k_axis(axis, colors, present: dict[str, list[RunResult]],
                    key: Callable[[int], str]) -> None:
    """pass@k against k, mean and 95% interval over seeds, per arm; the before-RL curve."""
    for arm, results in present.items():
        ks = pass_ks(results)
        stats = [interval([r.final.get(key(k)) for r in results]) for k in ks]
        means = [m for m, _ in stats]
        axis.plot(ks, means, marker="o", markersize=3, color=colors[arm], label=arm)
        if len(results) > 1:
            axis.fill_between(ks, [m - h for m, h in stats], [m + h for m, h in stats],
                              color=colors[arm], alpha=0.15, linewidth=0)
    initial = [r.initial for rs in present.values() for r in rs if r.initial]
    if initial:
        ks = pass_ks([next(r for rs in present.values() for r in rs)])
        axis.plot(ks, [interval([m.get(key(k)) for m in initial])[0] for k in ks],
                  linestyle="--", color="grey", label="before RL")
    axis.set(xlabel="k", ylabel="pass@k", xscale="log")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)


def plot_study(study: Study, grouped: dict[str, list[RunResult]], out: Path) -> list[Path]:
    present = {arm: rs for arm, rs in grouped.items() if rs}
    if not present:
        return []
    colors = _colors(list(grouped))
    everything = [r for rs in present.values() for r in rs]
    kmax = max(pass_ks(everything) or [1])
    written = []
    over_steps = [(AVG1, "avg@1"), (f"eval/pass@{kmax}", f"pass@{kmax}")]
    if any(DISTINCT in r.final for r in everything):
        over_steps.append((DISTINCT, "distinct correct expressions per problem"))
    figure, axes = plt.subplots(1, len(over_steps), figsize=(5.5 * len(over_steps), 4))
    for axis, (key, label) in zip(axes, over_steps, strict=True):
        for arm, results in present.items():
            _band(axis, colors, arm, [([s for s, _ in r.evals], [m.get(key, math.nan) for _, m in r.evals])
                                      for r in results])
        _title(axis, f"{study.title}: held-out {label} (step 0: before RL)")
        axis.set(xlabel="step", ylabel=label)
        axis.grid(alpha=0.3)
    _legend(axes[0])
    written.append(_save(figure, out / f"{study.name}_over_steps.png"))

    groups = [("all problems", lambda k: f"eval/pass@{k}")]
    groups += [(f"{kind} problems", lambda k, kind=kind: f"eval/{kind}/pass@{k}")
               for kind in kinds_of(everything)]
    figure, axes = plt.subplots(1, len(groups), figsize=(6.2 * len(groups), 4.2), squeeze=False)
    for axis, (label, key) in zip(axes[0], groups, strict=True):
        _pass_at_k_axis(axis, colors, present, key)
        _title(axis, f"{study.title}: pass@k at the end, {label} (95% interval over seeds)")
    written.append(_save(figure, out / f"{study.name}_pass_at_k.png"))

    for key, name, title in ((REWARD, "train_reward", "training reward (smoothed)"),
                             (ENTROPY, "entropy", "policy entropy (mean token, smoothed)"),
                             (ALL_WRONG_NONZERO, "all_wrong_signal",
                              "all-wrong questions with a nonzero advantage (smoothed)")):
        figure, axis = plt.subplots(figsize=(6.4, 4.2))
        for arm, results in present.items():
            _band(axis, colors, arm, [_smoothed(*r.series(key)) for r in results])
        _title(axis, f"{study.title}: {title}")
        axis.set(xlabel="step", ylabel=key)
        axis.grid(alpha=0.3)
        _legend(axis)
        written.append(_save(figure, out / f"{study.name}_{name}.png"))
    return written
