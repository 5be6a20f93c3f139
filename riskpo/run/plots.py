"""PNG plots of a run from its metrics.jsonl (matplotlib, Agg backend): reward, avg@k and
pass@k over steps, pass@k against k at the last evaluation, entropy, tracked quantiles."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from riskpo.run.record import read_metrics  # noqa: E402

PLOTS_SUBDIR = "plots"
QUANTILE_KEY = re.compile(r"^riskpo/(tracked_)?q_(alpha|beta)$")  # quantiles used and tracked
PASS_KEY = re.compile(r"^eval/pass@(\d+)$")
AVG_KEY = re.compile(r"^eval/avg@(\d+)$")


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _keys(rows: Sequence[dict[str, Any]], pattern: re.Pattern[str]) -> list[str]:
    found = {key for row in rows for key in row if pattern.match(key)}
    return sorted(found, key=lambda key: (len(key), key))


def _line_plot(path: Path, rows, keys: Sequence[str], title: str, ylabel: str) -> Path | None:
    curves = [(key, *_series(rows, key)) for key in keys]
    curves = [curve for curve in curves if curve[1]]
    if not curves:
        return None
    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    for key, steps, values in curves:
        axis.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=key)
    axis.set(title=title, xlabel="step", ylabel=ylabel)
    return _save(figure, axis, path)


def _pass_at_k_curve(path: Path, rows) -> Path | None:
    evaluated = [row for row in rows if any(PASS_KEY.match(key) for key in row)]
    if not evaluated:
        return None
    first, last = evaluated[0], evaluated[-1]
    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    first_label = "before RL" if first["step"] == 0 else "first eval"
    for row, label in ((first, first_label), (last, "last eval")):
        points = sorted((int(PASS_KEY.match(key).group(1)), value) for key, value in row.items()
                        if PASS_KEY.match(key) and value is not None)
        axis.plot([k for k, _ in points], [v for _, v in points], marker="o",
                  label=f"{label} (step {row['step']})")
    axis.set(title="pass@k against k", xlabel="k", ylabel="pass@k", xscale="log")
    return _save(figure, axis, path)


def _save(figure: Any, axis: Any, path: Path) -> Path:
    """Grid and legend, then the PNG at `path`; the figure is closed."""
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _before_rl(run_dir: Path) -> list[dict[str, Any]]:
    """The evaluation before training as a step-0 row (summary.json's "initial"), if any."""
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return []
    initial = json.loads(summary.read_text()).get("initial") or {}
    return [{"step": 0, **initial}] if initial else []


def plot_run(run_dir: str | Path) -> list[Path]:
    """Writes the run's PNGs under run_dir/plots; returns the files written (plots whose
    metrics the run does not have are skipped)."""
    rows = read_metrics(run_dir)
    if not rows:
        raise FileNotFoundError(f"no metrics in {Path(run_dir) / 'metrics.jsonl'} to plot")
    out = Path(run_dir) / PLOTS_SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    evaluated = [*_before_rl(Path(run_dir)), *rows]  # held-out curves start at step 0
    written = [
        _line_plot(out / "reward.png", rows, ["train/reward_mean"], "training reward", "mean reward"),
        _line_plot(out / "eval_avg_at_k.png", evaluated, _keys(rows, AVG_KEY),
                   "held-out avg@k (step 0: before RL)", "avg@k"),
        _line_plot(out / "eval_pass_at_k.png", evaluated, _keys(rows, PASS_KEY),
                   "held-out pass@k (step 0: before RL)", "pass@k"),
        _pass_at_k_curve(out / "pass_at_k_vs_k.png", evaluated),
        _line_plot(out / "entropy.png", rows, ["actor/entropy"], "policy entropy", "mean token entropy"),
        _line_plot(out / "quantiles.png", rows, _keys(rows, QUANTILE_KEY), "tracked quantiles",
                   "paper score"),
    ]
    return [path for path in written if path is not None]
