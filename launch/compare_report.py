"""The report of a comparison (launch/compare.py): per study the learning-rate sweep, a
markdown table of final held-out metrics (mean and 95% interval over seeds), the estimators'
gradient diagnostics, comparisons at matched training reward, findings and the paper's claims
computed from the numbers, the config differences between arms, and the figures
(launch/compare_plots.py). Everything is read from the runs' directories."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from launch.compare_plots import plot_study
from launch.compare_results import (
    ALL_WRONG_NONZERO,
    AVG1,
    DIAGNOSTICS,
    DISTINCT,
    ENTROPY,
    EPS,
    MISSING,
    REWARD,
    RunResult,
    beyond,
    by_arm,
    cell,
    interval,
    kinds_of,
    load_result,
    number,
    pass_ks,
)
from launch.compare_spec import BOOKKEEPING_KEYS, PlannedRun, Spec, Study
from launch.sweep_summary import differing_keys, flatten

BEFORE_RL = "*before RL*"


def study_table(study: Study, grouped: dict[str, list[RunResult]],
                chosen: dict[str, Any] | None = None) -> str:
    everything = [r for rs in grouped.values() for r in rs]
    ks = [k for k in pass_ks(everything) if k > 1]
    kmax = max(ks or [1])
    kinds = kinds_of(everything)
    distinct = any(DISTINCT in r.final for r in everything)
    columns = [("avg@1", lambda m: m.get(AVG1)),
               *((f"pass@{k}", lambda m, k=k: m.get(f"eval/pass@{k}")) for k in ks),
               *((f"{kind} pass@{kmax}", lambda m, kind=kind: m.get(f"eval/{kind}/pass@{kmax}"))
                 for kind in kinds),
               *((("distinct correct", lambda m: m.get(DISTINCT)),) if distinct else ()),
               ("greedy", lambda m: m.get("eval/greedy_accuracy"))]
    swept = study.sweep.key if study.sweep else None
    header = ["arm", *([swept] if swept else []), "seeds", *(name for name, _ in columns),
              "train reward (end)", "entropy (end)", f"steps to avg@1 ≥ {study.target:g}",
              "all-wrong q. with signal", "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    initial = [r.initial for r in everything if r.initial]
    if initial:
        lines.append("| " + " | ".join([BEFORE_RL, *([MISSING] if swept else []), str(len(initial)),
                                        *(cell([get(m) for m in initial]) for _, get in columns),
                                        *[MISSING] * 5]) + " |")
    for arm, results in grouped.items():
        value = [str((chosen or {}).get(arm, MISSING))] if swept else []
        if not results:
            lines.append(f"| {arm} | " + " | ".join([*value, "0"]) + f" |{f' {MISSING} |' * (len(header) - 2 - len(value))}")
            continue
        reached = [s for s in (r.steps_to(study.target) for r in results) if s is not None]
        steps = (f"{sum(reached) / len(reached):.0f} ({len(reached)}/{len(results)} runs)" if reached
                 else f"not reached (0/{len(results)})")
        lines.append("| " + " | ".join([
            arm, *value, str(len(results)), *(cell([get(r.final) for r in results]) for _, get in columns),
            cell([r.end_mean(REWARD) for r in results]), cell([r.end_mean(ENTROPY) for r in results]),
            steps, cell([r.train_mean(ALL_WRONG_NONZERO) for r in results], 2),
            f"{sum(r.wall_s for r in results) / len(results):.0f}"]) + " |")
    return "\n".join(lines)


def sweep_table(study: Study, sweep_runs: Sequence[PlannedRun], chosen: dict[str, Any]) -> str:
    """Each arm's final sweep metric at each value; the chosen value in bold."""
    sweep = study.sweep
    header = ["arm", *(f"{sweep.key}={value}" for value in sweep.values)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm in study.arms:
        cells = []
        for value in sweep.values:
            run = next(r for r in sweep_runs if r.arm == arm.name and r.run_dir.name == f"{sweep.key}_{value}")
            result = load_result(run)
            score = result.final.get(sweep.metric) if result else None
            text = f"{score:.3f}" if number(score) else MISSING
            cells.append(f"**{text}**" if chosen.get(arm.name) == value else text)
        lines.append(f"| {arm.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diagnostics_table(grouped: dict[str, list[RunResult]]) -> str:
    """What each estimator did to the gradient, averaged over training (mean over seeds)."""
    header = ["arm", *(label for label, _ in DIAGNOSTICS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, results in grouped.items():
        if results:
            lines.append(f"| {arm} | " + " | ".join(
                cell([r.train_mean(key) for r in results], 2) for _, key in DIAGNOSTICS) + " |")
    return "\n".join(lines)


def matched_reward(study: Study, grouped: dict[str, list[RunResult]]) -> list[str]:
    """Each arm against the baseline where both had the same training reward: the one that
    ended higher is taken at its first evaluation after its (smoothed) training reward reached
    the other's final level, so an arm that learns slower is compared where the other stood."""
    base = grouped.get(study.baseline or "") or []
    lines = []
    for arm, results in grouped.items():
        if arm == study.baseline or not results or not base:
            continue
        level_arm = interval([r.end_mean(REWARD) for r in results])[0]
        level_base = interval([r.end_mean(REWARD) for r in base])[0]
        ahead, behind, level = ((results, base, level_base) if level_arm > level_base
                                else (base, results, level_arm))
        points = [r.eval_at_reward(level) for r in ahead]
        if any(p is None for p in points):
            lines.append(f"{arm} vs {study.baseline}: no evaluation at matched training reward "
                         f"{level:.3f} (evaluate more often)")
            continue
        key = f"eval/pass@{max(pass_ks(results) or [1])}"
        at = interval([p[1].get(key) for p in points])[0]
        final = interval([r.final.get(key) for r in behind])[0]
        who = arm if ahead is results else study.baseline
        mine, theirs = (at, final) if who == arm else (final, at)
        lines.append(f"{arm} vs {study.baseline} at training reward {level:.3f} ({who} taken at step "
                     f"{sum(p[0] for p in points) / len(points):.0f}): {key[5:]} {mine:.3f} vs {theirs:.3f} "
                     f"({mine - theirs:+.3f})")
    return lines


def run_time(results: Sequence[RunResult], sweep_results: Sequence[RunResult]) -> str:
    """One sentence: how long the study's finished runs trained, summed (each run's own wall
    time from its summary; the comparison runs several at a time, so its wall time is less)."""
    minutes = [sum(r.wall_s for r in rs if number(r.wall_s)) / 60 for rs in (sweep_results, results)]
    return (f"**Run time**: {len(sweep_results)} sweep runs ({minutes[0]:.0f} min) and "
            f"{len(results)} seed runs ({minutes[1]:.0f} min), summing each run's own wall time.\n")


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
    """Statements computed from the numbers: who leads on each metric and whether the lead is
    beyond the 95% intervals; for each arm against the baseline, how its pass@k gap moves
    with k."""
    present = {arm: rs for arm, rs in grouped.items() if rs}
    if len(present) < 2:
        return ["Fewer than two arms finished: nothing to compare."]
    ks = pass_ks([r for rs in present.values() for r in rs])
    lines = []
    for label, value in (("avg@1", lambda r: r.final.get(AVG1)),
                         (f"pass@{ks[-1]}", lambda r: r.final.get(f"eval/pass@{ks[-1]}")),
                         ("entropy at the end", lambda r: r.end_mean(ENTROPY))):
        values = {arm: [value(r) for r in rs] for arm, rs in present.items()}
        order = sorted(values, key=lambda arm: -interval(values[arm])[0]
                       if number(interval(values[arm])[0]) else math.inf)
        best, second = order[0], order[1]
        lead = interval(values[best])[0] - interval(values[second])[0]
        verdict = {None: "one seed each: no interval to judge it by",
                   True: "beyond the 95% intervals", False: "within the 95% intervals"}[
            beyond(values[best], values[second])]
        ranking = ", ".join(f"{arm} {interval(values[arm])[0]:.3f}" for arm in order)
        lines.append(f"Highest {label}: **{best}** ({ranking}); its lead over {second} is "
                     f"{lead:+.3f}, {verdict}.")
    baseline = study.baseline if study.baseline in present else None
    if baseline and len(ks) > 1:
        for arm, results in present.items():
            if arm == baseline:
                continue
            gaps = [interval([r.final.get(f"eval/pass@{k}") for r in results])[0]
                    - interval([r.final.get(f"eval/pass@{k}") for r in present[baseline]])[0] for k in ks]
            trend = (f"moves in {arm}'s favour as k grows" if gaps[-1] - gaps[0] > EPS else
                     f"moves against {arm} as k grows" if gaps[0] - gaps[-1] > EPS else
                     "does not move with k")
            lines.append(f"{arm} − {baseline}: pass@k gap {gaps[0]:+.3f} at k={ks[0]}, "
                         f"{gaps[-1]:+.3f} at k={ks[-1]} (the gap {trend}).")
    return lines


def paper_claims(study: Study, grouped: dict[str, list[RunResult]]) -> str | None:
    """The paper's claims checked on this study, each RiskPO arm against the baseline: "holds"
    only when the arm's 95% interval lies above the baseline's. None when the study has no
    non-RiskPO baseline."""
    base = grouped.get(study.baseline or "")
    if not base or study.baseline.startswith("riskpo"):
        return None
    kmax = max(pass_ks(base) or [1])
    claims = [("higher entropy at the end", lambda r: r.end_mean(ENTROPY)),
              ("more all-wrong questions with a nonzero advantage",
               lambda r: r.train_mean(ALL_WRONG_NONZERO)),
              (f"higher pass@{kmax}", lambda r: r.final.get(f"eval/pass@{kmax}"))]
    if kmax > 1:  # the gain grows with k: each run's pass@kmax - avg@1, judged like the others
        claims.append((f"a wider pass@k spread (pass@{kmax} − avg@1)",
                       lambda r: r.final.get(f"eval/pass@{kmax}", math.nan) - r.final.get(AVG1, math.nan)))
    lines = [f"| claim (RiskPO vs {study.baseline}) | arm | arm's value | {study.baseline}'s value "
             "| verdict |", "|---|---|---|---|---|"]
    for arm, results in grouped.items():
        if not arm.startswith("riskpo") or not results:
            continue
        for claim, value in claims:
            mine, theirs = [value(r) for r in results], [value(r) for r in base]
            verdict = ("does not hold" if interval(mine)[0] - interval(theirs)[0] <= EPS else
                       {None: "higher on one seed (not judged)", True: "holds",
                        False: "not shown (within the 95% intervals)"}[beyond(mine, theirs)])
            lines.append(f"| {claim} | {arm} | {cell(mine)} | {cell(theirs)} | {verdict} |")
    return "\n".join(lines)


def _study_sections(study: Study, runs: list[PlannedRun], figures: Path,
                    sweep_runs: Sequence[PlannedRun], chosen: dict[str, Any]) -> list[str]:
    results = [r for r in (load_result(run) for run in runs) if r is not None]
    grouped = by_arm(study, results)
    plots = plot_study(study, grouped, figures)
    sections = [f"## {study.title}\n"]
    if study.sweep:
        sections += [f"**Learning rate, chosen per arm** on {study.sweep.metric} of the split fixed "
                     f"in advance ({' '.join(study.sweep.overrides) or 'the run config'}; seed "
                     f"{study.sweep.seed}); the value in bold is the one each arm then ran with:\n",
                     sweep_table(study, sweep_runs, chosen) + "\n"]
    sections += [
        run_time(results, [r for r in (load_result(run) for run in sweep_runs) if r is not None]),
        f"{len(results)} of {len(runs)} runs finished; seeds {study.seeds}; final held-out "
        "metrics as mean ± half-width of the 95% Student t interval over seeds. avg@1 is the "
        "mean accuracy of the samples; training reward and entropy are means over the last tenth "
        "of the steps; \"all-wrong q. with signal\" is the fraction of questions whose samples "
        "were all wrong that still got a nonzero advantage, averaged over training.\n",
        study_table(study, grouped, chosen) + "\n",
        "**What each estimator did to the gradient** (means over training and seeds):\n",
        diagnostics_table(grouped) + "\n",
        "**Findings** (computed from the table):\n",
        "\n".join(f"- {line}" for line in [*findings(study, grouped),
                                           *matched_reward(study, grouped)]) + "\n"]
    claims = paper_claims(study, grouped)
    if claims:
        sections += ["**The paper's claims on this task** (\"holds\" needs the arm's 95% interval "
                     "above the baseline's):\n", claims + "\n"]
    if study.notes:
        sections += ["**What was tried, and how we read it** (the spec's notes, written after the "
                     "runs):\n", study.notes + "\n"]
    return sections + [
        "**What differs between the arms** (resolved configs; everything else is equal):\n",
        config_differences(runs) + "\n",
        "\n".join(f"![{p.stem}]({figures.name}/{p.name})" for p in plots) + "\n"]


def write_report(spec: Spec, studies: dict[str, list[PlannedRun]], output: Path, command: str,
                 sweeps: dict[str, list[PlannedRun]] | None = None,
                 chosen: dict[str, dict[str, Any]] | None = None) -> Path:
    """Writes `output` (markdown) and its figures under output's stem directory."""
    figures = output.with_suffix("")
    figures.mkdir(parents=True, exist_ok=True)
    sections = [f"# {spec.name}: RiskPO against GRPO-family baselines\n",
                "Generated by `launch/compare_report.py` from the run directories; do not edit by "
                f"hand. Regenerate with:\n\n    {command}\n"]
    if spec.description:
        sections.append(spec.description.strip() + "\n")
    for study in spec.studies:
        sections += _study_sections(study, studies[study.name], figures,
                                    (sweeps or {}).get(study.name, []), (chosen or {}).get(study.name, {}))
    output.write_text("\n".join(sections))
    (figures / "chosen.json").write_text(json.dumps(chosen or {}, indent=2, default=str) + "\n")
    return output
