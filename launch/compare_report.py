"""The report of a comparison (launch/compare.py): per study a markdown table of final metrics
(mean ± std over seeds), the config differences between arms, findings computed from the
numbers, and PNG plots (avg@1 and pass@k over steps with seed bands, pass@k against k, entropy,
all-wrong questions that still get a signal). Everything is read from the runs' directories."""

from __future__ import annotations

import json
import math
import re
import statistics
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from launch.compare_spec import BOOKKEEPING_KEYS, PlannedRun, Spec, Study  # noqa: E402
from launch.sweep_summary import differing_keys, flatten  # noqa: E402
from riskpo.logging import read_metrics  # noqa: E402

PASS_KEY = re.compile(r"^eval/pass@(\d+)$")
AVG1 = "eval/pass@1"  # unbiased pass@1 = the mean accuracy of the samples = avg@1
ENTROPY = "actor/entropy"
REWARD = "train/reward_mean"
ALL_WRONG_NONZERO = "adv/all_wrong_nonzero_fraction"
ALL_WRONG = "adv/all_wrong_question_fraction"
SMOOTH = 5  # steps in the rolling mean of per-step curves
MISSING = "—"
EPS = 1e-9  # differences below this are rounding, not a lead


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
        points = [(row["step"], row[key]) for row in self.rows if _number(row.get(key))]
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


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)


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


# --------------------------------------------------------------------------- numbers


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if _number(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(values: Sequence[float], digits: int = 3) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return MISSING
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def pass_ks(results: Sequence[RunResult]) -> list[int]:
    found = {int(m.group(1)) for r in results for k in r.final if (m := PASS_KEY.match(k))}
    return sorted(found)


def by_arm(study: Study, results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    grouped = {arm.name: [] for arm in study.arms}
    for result in results:
        grouped[result.arm].append(result)
    return grouped


def study_table(study: Study, grouped: dict[str, list[RunResult]]) -> str:
    everything = [r for rs in grouped.values() for r in rs]
    ks = [k for k in pass_ks(everything) if k > 1]
    header = ["arm", "seeds", "avg@1", *(f"pass@{k}" for k in ks), "greedy",
              "train reward (end)", "entropy (end)",
              f"steps to avg@1 ≥ {study.target:g}", "all-wrong q. with signal", "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    initial = [r.initial for r in everything if r.initial]
    if initial:
        lines.append("| " + " | ".join([
            "*before RL*", str(len(initial)), cell([m.get(AVG1) for m in initial]),
            *(cell([m.get(f"eval/pass@{k}") for m in initial]) for k in ks),
            cell([m.get("eval/greedy_accuracy") for m in initial]), MISSING, MISSING, MISSING,
            MISSING, MISSING]) + " |")
    for arm, results in grouped.items():
        if not results:
            lines.append(f"| {arm} | 0 |" + f" {MISSING} |" * (len(header) - 2))
            continue
        reached = [r.steps_to(study.target) for r in results]
        hit = [s for s in reached if s is not None]
        steps = (f"{statistics.fmean(hit):.0f} ({len(hit)}/{len(results)} runs)" if hit
                 else f"not reached (0/{len(results)})")
        lines.append("| " + " | ".join([
            arm, str(len(results)), cell([r.final.get(AVG1) for r in results]),
            *(cell([r.final.get(f"eval/pass@{k}") for r in results]) for k in ks),
            cell([r.final.get("eval/greedy_accuracy") for r in results]),
            cell([r.end_mean(REWARD) for r in results]),
            cell([r.end_mean(ENTROPY) for r in results]), steps,
            cell([r.train_mean(ALL_WRONG_NONZERO) for r in results], 2),
            f"{statistics.fmean(r.wall_s for r in results):.0f}"]) + " |")
    return "\n".join(lines)


def config_differences(runs: Sequence[PlannedRun]) -> str:
    """A table of the resolved config values that differ between the study's arms."""
    first_of_arm: dict[str, dict[str, Any]] = {}
    for run in runs:
        first_of_arm.setdefault(run.arm, flatten(run.resolved))
    keys = [k for k in differing_keys(list(first_of_arm.values())) if k not in BOOKKEEPING_KEYS]
    if not keys:
        return "The arms' resolved configs are identical (apart from the seed)."
    lines = ["| arm | " + " | ".join(f"`{k}`" for k in keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for arm, config in first_of_arm.items():
        lines.append(f"| {arm} | " + " | ".join(str(config.get(k, MISSING)) for k in keys) + " |")
    return "\n".join(lines)


def findings(study: Study, grouped: dict[str, list[RunResult]]) -> list[str]:
    """Statements computed from the numbers: who leads on each metric and whether the lead
    exceeds the seed spread; for each arm against the baseline, how its pass@k gap moves with k."""
    present = {arm: rs for arm, rs in grouped.items() if rs}
    if len(present) < 2:
        return ["Fewer than two arms finished: nothing to compare."]
    ks = pass_ks([r for rs in present.values() for r in rs])
    lines = []
    metrics = [("avg@1", lambda r: r.final.get(AVG1)),
               (f"pass@{ks[-1]}", lambda r: r.final.get(f"eval/pass@{ks[-1]}")),
               ("entropy at the end", lambda r: r.end_mean(ENTROPY))]
    for label, value in metrics:
        stats = sorted(((arm, *mean_std([value(r) for r in rs])) for arm, rs in present.items()),
                       key=lambda item: -item[1] if _number(item[1]) else math.inf)
        (best, m1, s1), (second, m2, s2) = stats[0], stats[1]
        order = ", ".join(f"{arm} {mean:.3f}" for arm, mean, _ in stats)
        if min(len(present[best]), len(present[second])) < 2:
            spread = "one seed each: no spread to judge it by"
        else:
            spread = ("more than" if m1 - m2 > max(s1, s2) + EPS else "within") + \
                " one seed standard deviation"
        lines.append(f"Highest {label}: **{best}** ({order}); its lead over {second} is "
                     f"{m1 - m2:+.3f}, {spread}.")
    baseline = study.baseline if study.baseline in present else None
    if baseline and len(ks) > 1:
        for arm, results in present.items():
            if arm == baseline:
                continue
            gaps = [mean_std([r.final.get(f"eval/pass@{k}") for r in results])[0]
                    - mean_std([r.final.get(f"eval/pass@{k}") for r in present[baseline]])[0]
                    for k in ks]
            trend = (f"moves in {arm}'s favour as k grows" if gaps[-1] - gaps[0] > EPS else
                     f"moves against {arm} as k grows" if gaps[0] - gaps[-1] > EPS else
                     "does not move with k")
            lines.append(f"{arm} − {baseline}: pass@k gap {gaps[0]:+.3f} at k={ks[0]}, "
                         f"{gaps[-1]:+.3f} at k={ks[-1]} (the gap {trend}).")
    return lines


def paper_claims(study: Study, grouped: dict[str, list[RunResult]]) -> str | None:
    """The paper's three claims checked on this study, each RiskPO arm against the baseline: a
    table of the two values and a verdict ("holds" only when the difference exceeds one seed
    standard deviation of both arms). None when the study has no non-RiskPO baseline."""
    base = grouped.get(study.baseline or "")
    if not base or study.baseline.startswith("riskpo"):
        return None
    kmax = max(pass_ks(base) or [1])

    def gap(results: list[RunResult], k: int) -> float:
        return (mean_std([r.final.get(f"eval/pass@{k}") for r in results])[0]
                - mean_std([r.final.get(f"eval/pass@{k}") for r in base])[0])

    claims = [("higher entropy at the end", lambda r: r.end_mean(ENTROPY)),
              ("more all-wrong questions with a nonzero advantage",
               lambda r: r.train_mean(ALL_WRONG_NONZERO)),
              (f"higher pass@{kmax}", lambda r: r.final.get(f"eval/pass@{kmax}"))]
    lines = [f"| claim (RiskPO vs {study.baseline}) | arm | arm's value | {study.baseline}'s value "
             "| verdict |",
             "|---|---|---|---|---|"]
    for arm, results in grouped.items():
        if not arm.startswith("riskpo") or not results:
            continue
        for claim, value in claims:
            (m, s), (mb, sb) = (mean_std([value(r) for r in rs]) for rs in (results, base))
            verdict = ("does not hold" if m - mb <= EPS else
                       "higher on one seed (not judged)" if min(len(results), len(base)) < 2 else
                       "holds" if m - mb > max(s, sb) + EPS else "not shown (within seed spread)")
            lines.append(f"| {claim} | {arm} | {m:.3f} ± {s:.3f} | {mb:.3f} ± {sb:.3f} | {verdict} |")
        if kmax > 1:
            low, high = gap(results, 1), gap(results, kmax)
            verdict = "holds" if high > EPS and high - low > EPS else "does not hold"
            lines.append(f"| pass@k gain grows with k | {arm} | gap {low:+.3f} at k=1, "
                         f"{high:+.3f} at k={kmax} | 0 | {verdict} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


def _colors(names: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _band(axis, colors, arm: str, curves: list[tuple[list[int], list[float]]]) -> None:
    """Mean over the seeds that have a value at each step, and their min-max band (per-step
    metrics such as the all-wrong signal exist only on steps that had such questions)."""
    lookup = [dict(zip(steps, values, strict=True)) for steps, values in curves]
    steps = sorted({s for table in lookup for s in table})
    columns = [[v for table in lookup if _number(v := table.get(s))] for s in steps]
    steps, columns = [s for s, c in zip(steps, columns, strict=True) if c], [c for c in columns if c]
    if not steps:
        return
    axis.plot(steps, [statistics.fmean(c) for c in columns], color=colors[arm], label=arm)
    if len(curves) > 1:
        axis.fill_between(steps, [min(c) for c in columns], [max(c) for c in columns],
                          color=colors[arm], alpha=0.18, linewidth=0)


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


def plot_study(study: Study, grouped: dict[str, list[RunResult]], out: Path) -> list[Path]:
    present = {arm: rs for arm, rs in grouped.items() if rs}
    if not present:
        return []
    colors = _colors(list(grouped))
    kmax = max(pass_ks([r for rs in present.values() for r in rs]) or [1])
    written = []

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, key, label in ((axes[0], AVG1, "avg@1"), (axes[1], f"eval/pass@{kmax}", f"pass@{kmax}")):
        for arm, results in present.items():
            _band(axis, colors, arm, [([s for s, _ in r.evals], [m.get(key, math.nan) for _, m in r.evals])
                                      for r in results])
        _title(axis, f"{study.title}: held-out {label}")
        axis.set(xlabel="step", ylabel=label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    written.append(_save(figure, out / f"{study.name}_over_steps.png"))

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for arm, results in present.items():
        ks = pass_ks(results)
        stats = [mean_std([r.final.get(f"eval/pass@{k}") for r in results]) for k in ks]
        axis.errorbar(ks, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o",
                      markersize=3, capsize=2, color=colors[arm], label=arm)
    initial = [r.initial for rs in present.values() for r in rs if r.initial]
    if initial:
        ks = pass_ks([next(r for rs in present.values() for r in rs)])
        axis.plot(ks, [mean_std([m.get(f"eval/pass@{k}") for m in initial])[0] for k in ks],
                  linestyle="--", color="grey", label="before RL")
    _title(axis, f"{study.title}: pass@k at the end")
    axis.set(xlabel="k", ylabel="pass@k", xscale="log")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
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
        axis.legend(fontsize=8)
        written.append(_save(figure, out / f"{study.name}_{name}.png"))
    return written


# --------------------------------------------------------------------------- report


def write_report(spec: Spec, studies: dict[str, list[PlannedRun]], output: Path,
                 command: str) -> Path:
    """Writes `output` (markdown) and its figures under output's stem directory."""
    figures = output.with_suffix("")
    figures.mkdir(parents=True, exist_ok=True)
    sections = [f"# {spec.name}: RiskPO against GRPO-family baselines\n",
                "Generated by `launch/compare_report.py` from the run directories; do not edit by "
                f"hand. Regenerate with:\n\n    {command}\n"]
    if spec.description:
        sections.append(spec.description.strip() + "\n")
    for study in spec.studies:
        runs = studies[study.name]
        results = [r for r in (load_result(run) for run in runs) if r is not None]
        grouped = by_arm(study, results)
        plots = plot_study(study, grouped, figures)
        sections += [
            f"## {study.title}\n",
            f"{len(results)} of {len(runs)} runs finished; seeds {study.seeds}; final held-out "
            "metrics as mean ± standard deviation over seeds. avg@1 is the mean accuracy of the "
            "samples; training reward and entropy are means over the last tenth of the steps; "
            "\"all-wrong q. with signal\" is the fraction of questions whose samples were all "
            "wrong that still got a nonzero advantage, averaged over training; wall s is one "
            "run's time with two runs sharing the machine.\n",
            study_table(study, grouped) + "\n",
            "**Findings** (computed from the table):\n",
            "\n".join(f"- {line}" for line in findings(study, grouped)) + "\n",
            *(["**The paper's claims on this task** (computed; \"holds\" needs a lead larger "
                "than one seed standard deviation):\n", claims + "\n"]
              if (claims := paper_claims(study, grouped)) else []),
            "**What differs between the arms** (resolved configs; everything else is equal):\n",
            config_differences(runs) + "\n",
            "\n".join(f"![{p.stem}]({figures.name}/{p.name})" for p in plots) + "\n",
        ]
    output.write_text("\n".join(sections))
    return output
