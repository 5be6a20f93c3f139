"""`riskpo-compare`: runs a comparison spec (studies x arms x seeds, all else equal), then writes
the report (markdown table, PNG plots) from the run directories it produced.

    riskpo-compare                                   # conf/compare/full.yaml -> docs/results.md
    riskpo-compare --spec conf/compare/ci.yaml --runs-dir /tmp/cmp --output /tmp/cmp/report
    riskpo-compare --report-only                     # rebuild the report from finished runs

A spec (conf/compare/*.yaml) names overrides common to every run, and studies: each a task
(its overrides), seeds, a target avg@1 and arms (each an override list, usually an algorithm).
Within a study the arms' resolved configs may differ only under `algorithm.`: anything else
would make the comparison unfair, and the spec is refused before any run starts. Finished runs
(a summary.json) are kept and reused, so an interrupted comparison resumes where it stopped;
an identical run asked by two studies (same overrides and seed) runs once.

Ctrl-C (or SIGTERM, as a scheduler stops a job) interrupts the runs in flight, waits for them,
says what is kept and how to resume, and exits 130 (143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO

from rich.console import Console

from launch.compare_spec import (
    DEFAULT_SPEC,
    PlannedRun,
    Spec,
    choose,
    load_spec,
    plan,
    plan_sweeps,
    unique_runs,
)
from riskpo.options import ConfigError
from riskpo.run.record import message_console
from riskpo.run.stops import interrupt_status, raise_interrupt

CONSOLE_LOG = "console.log"
REPO_ROOT = Path(__file__).resolve().parent.parent
STOP_WAIT_S = 90  # riskpo-train exits within 60 s of an interrupt


def execute(runs: Sequence[PlannedRun], console: Console, fresh: bool = False,
            jobs: int = 2) -> list[str]:
    """Runs what is not finished yet, `jobs` at a time, each a `riskpo-train` process joining
    one Ray cluster; returns the failures. A failed run is reported and the others go on; its
    directory keeps console.log and train.log."""
    import ray

    from launch.factory import prepare_model, start_local_ray
    from launch.placement import required_resources

    todo = [run for run in runs if fresh or not run.finished()]
    console.print(f"[bold]compare[/]: {len(runs)} runs, {len(runs) - len(todo)} already finished, "
                  f"{len(todo)} to run, {jobs} at a time")
    if not todo:
        return []
    for run in _one_per_model(todo):  # warm starts now, one at a time, before runs share them
        prepare_model(run.config, console)
    address, on_sigterm = os.environ.get("RAY_ADDRESS"), signal.getsignal(signal.SIGTERM)
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        start_local_ray(max(os.cpu_count() or 1,
                            jobs * max(math.ceil(required_resources(run.config)["CPU"]) for run in todo)))
        address = ray.get_runtime_context().gcs_address
    signal.signal(signal.SIGTERM, on_sigterm)  # ray.init sets its own, which exits at once
    try:
        return _run_all(todo, console, jobs, {**os.environ, "RAY_ADDRESS": address})
    finally:
        ray.shutdown()


def _one_per_model(runs: Sequence[PlannedRun]) -> list[PlannedRun]:
    """One run for each distinct starting model (its warm start's cache key)."""
    from riskpo.models.warmstart import settings_key

    distinct: dict[str, PlannedRun] = {}
    for run in runs:
        c = run.config
        key = json.dumps([asdict(c.model), settings_key(c.model, c.data)], default=str)
        distinct.setdefault(key, run)
    return list(distinct.values())


def _run_all(todo: Sequence[PlannedRun], console: Console, jobs: int,
             env: dict[str, str]) -> list[str]:
    failures: list[str] = []
    pending, running = list(todo), []
    try:
        _loop(pending, running, failures, console, jobs, env)
    except KeyboardInterrupt:
        _stop(running, console)
        raise
    return failures


def _stop(running: list, console: Console) -> None:
    """Interrupts the runs in flight (each exits within a minute: riskpo-train's own limit)
    and waits for them; their directories are unfinished, so the next invocation redoes them."""
    for run, process, _, _ in running:
        console.print(f"interrupting {run.label}")
        process.send_signal(signal.SIGINT)
    for _, process, log, _ in running:
        try:
            process.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _loop(pending: list[PlannedRun], running: list, failures: list[str], console: Console,
          jobs: int, env: dict[str, str]) -> None:
    began, done, total = time.perf_counter(), 0, len(pending)
    while pending or running:
        while pending and len(running) < jobs:
            run = pending.pop(0)
            running.append((run, *_start(run, env), time.perf_counter()))
            console.print(f"started {run.label}")
        time.sleep(1.0)
        for item in [item for item in running if item[1].poll() is not None]:
            running.remove(item)
            run, process, log, start = item
            log.close()
            done += 1
            prefix = f"[{done}/{total}] {run.label}"
            if process.returncode != 0 or not run.finished():
                failures.append(f"{run.label}: exit {process.returncode} "
                                f"(see {run.run_dir / CONSOLE_LOG})")
                console.print(f"[bold red]failed[/] {prefix}: exit {process.returncode}, "
                              f"log {run.run_dir / CONSOLE_LOG}")
                continue
            final = json.loads((run.run_dir / "summary.json").read_text()).get("final", {})
            console.print(f"{prefix}: avg@1 {final.get('eval/pass@1', math.nan):.3f} in "
                          f"{time.perf_counter() - start:.0f}s; {_eta(began, done, total)}")


def _start(run: PlannedRun, env: dict[str, str]) -> tuple[subprocess.Popen, IO[str]]:
    """`riskpo-train OVERRIDES run_dir=...` in the background, its console in the run dir."""
    if run.run_dir.exists():
        shutil.rmtree(run.run_dir)  # an unfinished (or --fresh) run starts over
    run.run_dir.mkdir(parents=True)
    log = open(run.run_dir / CONSOLE_LOG, "w")  # noqa: SIM115 (closed when the run ends)
    command = [sys.executable, "-m", "launch.train", *run.overrides, f"run_dir={run.run_dir}"]
    # its own session: a Ctrl-C reaches only riskpo-compare, which interrupts each run once;
    # and SIGINT's default action, which a background start (nohup, `&`) would leave ignored
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                               cwd=REPO_ROOT, start_new_session=True, preexec_fn=_interruptible)
    return process, log


def _interruptible() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _eta(began: float, done: int, total: int) -> str:
    elapsed = time.perf_counter() - began
    return f"elapsed {elapsed / 60:.1f} min, about {elapsed / done * (total - done) / 60:.1f} min left"


def command_line(args: argparse.Namespace) -> str:
    """The command that regenerates the report, as the report prints it."""
    parts = ["riskpo-compare"]
    if Path(args.spec).resolve() != DEFAULT_SPEC.resolve():
        parts += ["--spec", str(args.spec)]
    if args.runs_dir != "runs/compare":
        parts += ["--runs-dir", str(args.runs_dir)]
    if args.output != "docs/results.md":
        parts += ["--output", str(args.output)]
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="riskpo-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(DEFAULT_SPEC), help="comparison spec (YAML)")
    parser.add_argument("--runs-dir", default="runs/compare", help="where the runs go")
    parser.add_argument("--output", default="docs/results.md",
                        help="report file; its figures go to <output without .md>/")
    parser.add_argument("--report-only", action="store_true",
                        help="only rebuild the report from the finished runs")
    parser.add_argument("--fresh", action="store_true", help="rerun finished runs too")
    parser.add_argument("--jobs", type=int, default=2,
                        help="runs at a time (each mostly uses one core; default 2)")
    args = parser.parse_args(argv)
    console = message_console()
    signal.signal(signal.SIGTERM, raise_interrupt)  # stops like Ctrl-C
    from launch.compare_report import write_report

    try:
        spec = load_spec(args.spec)
        sweeps = plan_sweeps(spec, Path(args.runs_dir))
    except ConfigError as error:
        console.print(f"[bold red]config error[/]: {error}")
        return 2
    try:
        failures = [] if args.report_only else execute(unique_runs(sweeps), console, args.fresh, args.jobs)
        chosen = chosen_values(spec, sweeps, console)
        studies = plan(spec, Path(args.runs_dir), chosen)
        if not args.report_only:
            failures += execute(unique_runs(studies), console, args.fresh, args.jobs)
    except ConfigError as error:
        console.print(f"[bold red]config error[/]: {error}")
        return 2
    except KeyboardInterrupt as error:
        console.print(f"[bold yellow]interrupted[/]: finished runs are kept under {args.runs_dir}; "
                      f"the runs in flight start over when you run `{command_line(args)}` again")
        return interrupt_status(error)
    report = write_report(spec, studies, Path(args.output), command_line(args), sweeps, chosen)
    console.print(f"[bold green]report[/]: {report}")
    if failures:
        console.print("[bold red]runs that failed[/]:\n  " + "\n  ".join(failures))
        return 1
    return 0


def chosen_values(spec: Spec, sweeps: dict[str, list[PlannedRun]],
                  console: Console) -> dict[str, dict[str, object]]:
    """Each swept study's value per arm (from its finished sweep), said on the console."""
    chosen = {}
    for study in spec.studies:
        if study.sweep is None:
            continue
        chosen[study.name] = choose(study, sweeps[study.name])
        picked = ", ".join(f"{arm} {value}" for arm, value in chosen[study.name].items())
        missing = [arm.name for arm in study.arms if arm.name not in chosen[study.name]]
        console.print(f"[bold]{study.name}[/]: {study.sweep.key} chosen on "
                      f"{study.sweep.metric}: {picked or 'none yet'}"
                      + (f"; sweep unfinished for {', '.join(missing)}" if missing else ""))
    return chosen


if __name__ == "__main__":
    sys.exit(main())
