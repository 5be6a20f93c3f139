"""The loop's behaviour as numbers, to show that a refactoring changed nothing: runs a fixed-seed
4-step `riskpo-train` in each mode of the loop (synchronous, pipelined, dynamic sampling, the
VLM default, a resume) and records every logged metric except timings.

    python scripts/loop_fingerprint.py --save before.json           # on the old code
    python scripts/loop_fingerprint.py --compare before.json        # on the new code: exit 1 on
                                                                    # any difference, listed
    python scripts/loop_fingerprint.py --modes sync,resume --save x.json

Warm starts come from the cache ($RISKPO_CACHE), trained once if absent. The colocated mode
needs GPUs; its call order is pinned in-process by tests/riskpo/test_trainer_loop.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

COMMON = ["trainer.total_steps=4", "trainer.eval_every=2", "trainer.save_every=2",
          "data.eval.size=16", "logger.backend=none", "logger.progress=none", "logger.plots=false"]
MODES = {
    "sync": [],
    "pipelined": ["trainer.off_policy_steps=1"],
    "dynamic": ["algorithm.dynamic_sampling.enabled=true"],
    "vlm": ["experiment=embedded_vlm"],
    "resume": [],  # 2 steps, then resume=auto to 4
}
# timings and rates: they differ from run to run
VOLATILE = re.compile(r"^time/|_per_s$|/seconds$|^sync/time_s$|^eval/time|wall")


def run(overrides: list[str], run_dir: Path) -> None:
    command = [sys.executable, "-m", "launch.train", *COMMON, *overrides, f"run_dir={run_dir}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-3000:]}"
                 f"{done.stderr[-3000:]}")


def fingerprint(run_dir: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in sorted(row.items()) if not VOLATILE.search(key)}
            for row in rows]


def mode_fingerprint(mode: str, root: Path) -> list[dict[str, float]]:
    run_dir = root / mode
    if mode == "resume":
        run(["trainer.total_steps=2"], run_dir)
        run(["resume=auto"], run_dir)
    else:
        run(MODES[mode], run_dir)
    return fingerprint(run_dir)


def differences(before: dict, after: dict) -> list[str]:
    found = []
    for mode in before:
        if mode not in after:
            found.append(f"{mode}: not run")
            continue
        old_rows, new_rows = before[mode], after[mode]
        if len(old_rows) != len(new_rows):
            found.append(f"{mode}: {len(old_rows)} rows before, {len(new_rows)} after")
        for index, (old, new) in enumerate(zip(old_rows, new_rows, strict=False)):
            for key in sorted(set(old) | set(new)):
                a, b = old.get(key), new.get(key)
                same = a == b or (isinstance(a, float) and isinstance(b, float)
                                  and math.isnan(a) and math.isnan(b))
                if not same:
                    found.append(f"{mode} row {index} {key}: {a} -> {b}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save", type=Path)
    parser.add_argument("--compare", type=Path)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory(prefix="fingerprint-") as root:
        result = {}
        for mode in modes:
            print(f"{mode} ...", flush=True)
            result[mode] = mode_fingerprint(mode, Path(root))
    if args.save:
        args.save.write_text(json.dumps(result, indent=1, sort_keys=True))
        print(f"saved {args.save}")
    if args.compare:
        before = {mode: rows for mode, rows in json.loads(args.compare.read_text()).items()
                  if mode in modes}
        found = differences(before, result)
        for line in found[:200]:
            print(line)
        print(f"{len(found)} differences over {', '.join(modes)}")
        sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
