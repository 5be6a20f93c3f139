"""Benchmark: the off-policy rollout pipeline against the synchronous loop, on the embedded
default (warm-started tiny model, RiskPO, arithmetic), in one run of this script.

Runs `riskpo-train` with trainer.off_policy_steps 0 and K (default 1), alternating, for each seed
(so both see the same machine load over time), and prints for each run and each setting:
steps per second of training (steps over the summed time/step: evaluations and checkpoints left
out), the ratio pipelined / synchronous (per seed, then the mean), each phase's share of a step,
and the final held-out avg@8, with whether the pipelined runs' mean lies within the spread of the
synchronous runs.

    .venv/bin/python bench/pipeline.py                    # 3 seeds x {0, 1}, 100 steps each
    .venv/bin/python bench/pipeline.py --seeds 0 --steps 20 --depth 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from riskpo.run.record import read_metrics

PHASES = ("wait_rollouts", "generate", "verify", "advantage", "logprobs", "train", "sync")
QUIET = ["logger.backend=none", "logger.progress=none", "logger.plots=false", "trainer.save_every=0"]


def run(seed: int, depth: int, steps: int | None, root: Path) -> dict[str, float]:
    """One riskpo-train run; its steps/s, phase shares and final avg@8."""
    run_dir = root / f"seed{seed}-k{depth}"
    command = [sys.executable, "-m", "launch.train", f"seed={seed}",
               f"trainer.off_policy_steps={depth}", f"run_dir={run_dir}", *QUIET]
    if steps is not None:
        command.append(f"trainer.total_steps={steps}")
    begin = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"seed {seed}, off_policy_steps {depth} failed:\n{done.stderr[-3000:]}")
    rows = read_metrics(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    step_seconds = sum(row["time/step"] for row in rows)
    result = {"seed": seed, "depth": depth, "steps": len(rows),
              "steps_per_s": len(rows) / step_seconds, "wall_s": time.perf_counter() - begin,
              "avg@8": summary["final"]["eval/avg@8"],
              "staleness": statistics.fmean(row["rollout/staleness_mean"] for row in rows)}
    for phase in PHASES:
        result[f"share/{phase}"] = statistics.fmean(
            row.get(f"time/{phase}", 0.0) / row["time/step"] for row in rows)
    return result


def report(results: list[dict[str, float]], depth: int) -> None:
    print(f"\n{'seed':>4} {'k':>2} {'steps/s':>8} {'avg@8':>6} {'staleness':>9} {'run s':>6}")
    for r in results:
        print(f"{r['seed']:>4} {r['depth']:>2} {r['steps_per_s']:8.3f} {r['avg@8']:6.3f} "
              f"{r['staleness']:9.2f} {r['wall_s']:6.0f}")
    by = {k: [r for r in results if r["depth"] == k] for k in (0, depth)}
    ratios = [p["steps_per_s"] / s["steps_per_s"] for s, p in zip(by[0], by[depth], strict=True)]
    print(f"\nsteps/s, off_policy_steps={depth} / 0, per seed: "
          + ", ".join(f"{ratio:.2f}x" for ratio in ratios)
          + f"; mean {statistics.fmean(ratios):.2f}x (target >= 1.5x, goal 1.8x)")
    print("\nshare of a step (time/<phase> / time/step; with k > 0, generate and verify run in "
          "the background and overlap the rest):")
    print(f"{'phase':<14}" + "".join(f"{'k=' + str(k):>9}" for k in by))
    for phase in PHASES:
        print(f"{phase:<14}" + "".join(
            f"{100 * statistics.fmean(r['share/' + phase] for r in rows):8.1f}%" for rows in by.values()))
    synchronous = [r["avg@8"] for r in by[0]]
    pipelined = statistics.fmean(r["avg@8"] for r in by[depth])
    inside = min(synchronous) <= pipelined <= max(synchronous)
    print(f"\nfinal avg@8: off_policy_steps=0 {statistics.fmean(synchronous):.3f} "
          f"(seeds {min(synchronous):.3f}..{max(synchronous):.3f}), off_policy_steps={depth} "
          f"{pipelined:.3f}: {'within' if inside else 'OUTSIDE'} the synchronous seeds' spread")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--depth", type=int, default=1, help="trainer.off_policy_steps to compare")
    parser.add_argument("--steps", type=int, default=None, help="default: the embedded default's")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    print(f"runs in {root}; the first also trains the warm start if it is not cached")
    results = []
    for seed in args.seeds:
        for depth in (0, args.depth):  # alternating: both settings see the same load over time
            results.append(run(seed, depth, args.steps, root))
            r = results[-1]
            print(f"seed {seed} off_policy_steps={depth}: {r['steps_per_s']:.3f} steps/s, "
                  f"avg@8 {r['avg@8']:.3f}", flush=True)
    report(results, args.depth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
