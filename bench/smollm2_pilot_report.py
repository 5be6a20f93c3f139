"""The SmolLM2 pilot's table from its run directories (bench/smollm2_pilot_study.sh):
held-out avg@4, pass@k and greedy accuracy before and after, training reward over the first
and last steps, mean seconds per step by phase (the time/* metrics), wall time and peak memory
(bench/peak_memory.py's <run>.memory.json beside each run).

    .venv/bin/python bench/smollm2_pilot_report.py runs/smollm2-pilot
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

PHASES = ("generate", "verify", "logprobs", "advantage", "train", "sync", "step")


def summarise(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if line.strip()]
    steps = [m for m in steps if "train/reward_mean" in m]
    rewards = [m["train/reward_mean"] for m in steps]
    window = max(1, min(5, len(rewards) // 2))
    memory_file = run.parent / f"{run.name}.memory.json"
    memory = json.loads(memory_file.read_text()) if memory_file.is_file() else {}
    return {
        "run": run.name, "steps": summary["steps"], "wall_min": summary["wall_s"] / 60,
        "before": summary.get("initial") or {}, "after": summary["final"],
        "reward_first": statistics.fmean(rewards[:window]),
        "reward_last": statistics.fmean(rewards[-window:]),
        "phases": {p: statistics.fmean(m.get(f"time/{p}", 0.0) for m in steps) for p in PHASES},
        "eval_s": summary["final"].get("time/eval"),
        "peak_gib": memory.get("peak_total_pss_gib"),
        "by_process": memory.get("peak_pss_gib_by_process", {}),
    }


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict]) -> str:
    lines = ["| run | steps | avg@4 before -> after | pass@4 before -> after | greedy before -> after "
             "| train reward first -> last 5 | s/step: generate, verify, logprobs, train, sync = step "
             "| eval s | wall min | peak GiB (Pss) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        b, a, p = r["before"], r["after"], r["phases"]
        lines.append(
            f"| {r['run']} | {r['steps']} | {fmt(b.get('eval/avg@4'))} -> {fmt(a.get('eval/avg@4'))} "
            f"| {fmt(b.get('eval/pass@4'))} -> {fmt(a.get('eval/pass@4'))} "
            f"| {fmt(b.get('eval/greedy_accuracy'))} -> {fmt(a.get('eval/greedy_accuracy'))} "
            f"| {fmt(r['reward_first'])} -> {fmt(r['reward_last'])} "
            f"| {p['generate']:.1f}, {p['verify']:.2f}, {p['logprobs']:.1f}, {p['train']:.1f}, "
            f"{p['sync']:.1f} = {p['step']:.1f} | {fmt(r['eval_s'], 0)} | {r['wall_min']:.1f} "
            f"| {fmt(r['peak_gib'], 2)} |")
    return "\n".join(lines)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/smollm2-pilot")
    rows = [summarise(run) for run in sorted(root.iterdir())
            if run.is_dir() and (run / "summary.json").is_file()]
    print(table(rows))
    for r in rows:
        if r["by_process"]:
            top = ", ".join(f"{name} {gib}" for name, gib in list(r["by_process"].items())[:5])
            print(f"\n{r['run']}: peak Pss by process (GiB): {top}")


if __name__ == "__main__":
    main()
