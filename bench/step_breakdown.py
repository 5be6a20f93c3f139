"""Where a training step's time goes: mean seconds per phase over a run's steps, and the
orchestration overhead (step time minus generate, verify, train and sync) as a share of a step.

    python bench/step_breakdown.py RUN_DIR          # an existing run's metrics.jsonl
    python bench/step_breakdown.py --steps 30       # runs the embedded default first (warm
                                                    # start from the cache) in a temp directory
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from riskpo.run.record import PROGRESS_PHASES, read_metrics

WORK = ("generate", "verify", "train", "sync")


def breakdown(run_dir: Path, skip: int = 1) -> dict[str, float]:
    """Mean seconds per phase and per step over steps after the first `skip` (start-up)."""
    rows = [row for row in read_metrics(run_dir) if row["step"] > skip]
    if not rows:
        raise SystemExit(f"{run_dir}: no steps after step {skip} in metrics.jsonl")
    means = {phase: statistics.fmean(row[f"time/{phase}"] for row in rows) for phase in PROGRESS_PHASES}
    means["step"] = statistics.fmean(row["time/step"] for row in rows)
    means["orchestration"] = means["step"] - sum(means[p] for p in WORK)
    means["steps"] = float(len(rows))
    return means


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", help="a run directory (default: run one now)")
    parser.add_argument("--steps", type=int, default=30, help="steps of the run made here")
    args = parser.parse_args()
    if args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="step-breakdown-"))
        subprocess.run([sys.executable, "-m", "launch.train", f"trainer.total_steps={args.steps}",
                        "trainer.eval_every=0", "trainer.eval_before_training=false",
                        "trainer.save_every=0", "logger.backend=none", "logger.progress=none",
                        "logger.plots=false", f"run_dir={run_dir}"], check=True)
    means = breakdown(run_dir)
    print(f"{run_dir}: {means['steps']:.0f} steps (the first, with start-up effects, left out)")
    for phase in (*PROGRESS_PHASES, "orchestration"):
        print(f"  {phase:<14} {means[phase]:8.3f} s  {100 * means[phase] / means['step']:5.1f}%")
    print(f"  {'step':<14} {means['step']:8.3f} s")
    print(f"orchestration overhead: {100 * means['orchestration'] / means['step']:.1f}% of a step "
          "(target < 15%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
