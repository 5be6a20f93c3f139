"""Peak memory of a command and every process it starts (Ray's raylet, actors, verifier
workers...), sampled from /proc: how the SmolLM2 pilot's peak memory was measured.

    python bench/peak_memory.py --output mem.json -- .venv-vllm/bin/riskpo-train experiment=smollm2-pilot

Every --interval seconds it reads the proportional set size (Pss, /proc/PID/smaps_rollup:
shared pages split among the processes that map them, so the sum is not inflated by pages
that Ray's workers share) of the command and all its descendants, and keeps the peak of the
sum and each process's own peak (by its name: ray::RolloutActor, ray::LearnerWorker, ...;
processes of one name: the largest).
Writes them as JSON and exits with the command's status. Linux only; standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path


def children(pid: int) -> list[int]:
    """Direct children of pid (from /proc/PID/task/*/children)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def descendants(root: int) -> list[int]:
    seen, todo = [], [root]
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo += children(pid)
    return seen


def pss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def name_of(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(part.decode(errors="replace") for part in args if part)
    if text.startswith("ray::"):  # ray::LearnerWorker.train_step while in a method: one name
        return text.split()[0].split(".")[0]
    return " ".join(Path(part).name if i == 0 else part for i, part in enumerate(text.split()[:3]))


class TreePss:
    """The peak over time of the Pss summed over a process and all its descendants, and each
    process's own peak by name (name_of), sampled every interval_s seconds in a thread (what
    bench/real_model.py reports per run)."""

    def __init__(self, pid: int, interval_s: float = 0.5):
        self.peak, self.by_name, self._stop = 0, {}, threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(pid, interval_s), daemon=True)
        self._thread.start()

    def _sample(self, pid: int, interval_s: float) -> None:
        while not self._stop.is_set():
            total = 0
            for process in descendants(pid):
                size = pss_bytes(process) or 0
                total += size
                name = name_of(process)
                self.by_name[name] = max(self.by_name.get(name, 0), size)
            self.peak = max(self.peak, total)
            self._stop.wait(interval_s)

    def peak_of(self, name: str) -> float:
        """The peak Pss in GiB of the processes called `name` (the largest of them)."""
        return self.by_name.get(name, 0) / 1024**3

    def stop(self) -> float:
        """Stops sampling; the peak in GiB."""
        self._stop.set()
        self._thread.join()
        return self.peak / 1024**3


def measured_train(command: list[str], run_dir: Path, cwd: Path, label: str) -> tuple[list[dict], TreePss, str]:
    """Runs a riskpo-train command writing into run_dir with its process tree's Pss sampled;
    returns its metrics rows, the sampler (stopped: .peak_of, .by_name, .stop() again gives the
    peak in GiB) and its stderr. A failed run raises RuntimeError naming `label`."""
    process = subprocess.Popen(command, cwd=cwd, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    memory = TreePss(process.pid)
    _, stderr = process.communicate()
    memory.stop()
    if process.returncode != 0:
        raise RuntimeError(f"{label}: riskpo-train failed ({process.returncode}):\n{stderr[-4000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows, memory, stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    process = subprocess.Popen(command)
    peak_total, peak_at, per_name = 0, 0.0, {}
    start = time.monotonic()
    while process.poll() is None:
        total = 0
        for pid in descendants(process.pid):
            size = pss_bytes(pid)
            if size is None:
                continue
            total += size
            name = name_of(pid)
            per_name[name] = max(per_name.get(name, 0), size)
        if total > peak_total:
            peak_total, peak_at = total, time.monotonic() - start
        time.sleep(args.interval)
    gib = 1024**3
    report = {
        "command": command, "status": process.returncode,
        "peak_total_pss_gib": round(peak_total / gib, 2), "peak_at_s": round(peak_at, 1),
        "peak_pss_gib_by_process": {name: round(size / gib, 2) for name, size in
                                    sorted(per_name.items(), key=lambda item: -item[1])[:15]},
    }
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report), file=sys.stderr)
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
