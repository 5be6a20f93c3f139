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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from omegaconf import OmegaConf
from rich.console import Console

from launch.sweep_summary import differing_keys, flatten
from riskpo.config import CONF_DIR, ConfigError, RunConfig, compose_config, validate

DEFAULT_SPEC = CONF_DIR / "compare" / "full.yaml"
# Keys that differ between arms of a study by construction.
BOOKKEEPING_KEYS = ("run_dir", "seed", "experiment_name")
FAIR_PREFIX = "algorithm."
CONSOLE_LOG = "console.log"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Arm:
    name: str
    overrides: list[str]


@dataclass
class Study:
    name: str
    title: str
    overrides: list[str]
    seeds: list[int]
    target: float  # avg@1 the "steps to target" column counts to
    arms: list[Arm]
    baseline: str | None = None  # the arm the others are compared with in the findings


@dataclass
class Spec:
    name: str
    description: str
    common: list[str]
    studies: list[Study]
    path: Path | None = None


@dataclass
class PlannedRun:
    """One run: where it goes and the full override list that defines it."""

    study: str
    arm: str
    seed: int
    overrides: list[str]
    run_dir: Path
    config: RunConfig | None = None
    resolved: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.study}/{self.arm}/seed{self.seed}"

    def finished(self) -> bool:
        return (self.run_dir / "summary.json").is_file()


def load_spec(path: str | Path) -> Spec:
    """Read a comparison spec; an error names the file and the key that is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--spec", f"{path} does not exist")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(raw, dict) or not isinstance(raw.get("studies"), dict) or not raw["studies"]:
        raise ConfigError(f"{path}: studies", "a non-empty mapping of study name -> study")
    studies = [_study(path, name, body) for name, body in raw["studies"].items()]
    return Spec(str(raw.get("name", path.stem)), str(raw.get("description", "")),
                _str_list(path, "common", raw.get("common", [])), studies, path)


def _study(path: Path, name: str, body: Any) -> Study:
    where = f"{path}: studies.{name}"
    if not isinstance(body, dict):
        raise ConfigError(where, "must be a mapping")
    arms = body.get("arms")
    if not isinstance(arms, dict) or not arms:
        raise ConfigError(f"{where}.arms", "a non-empty mapping of arm name -> override list")
    seeds = body.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{where}.seeds", "a non-empty list of integers")
    baseline = body.get("baseline")
    if baseline is not None and baseline not in arms:
        raise ConfigError(f"{where}.baseline", f"{baseline!r} is not one of its arms {list(arms)}")
    return Study(
        name=name, title=str(body.get("title", name)),
        overrides=_str_list(path, f"studies.{name}.overrides", body.get("overrides", [])),
        seeds=seeds, target=float(body.get("target", 0.5)),
        arms=[Arm(arm, _str_list(path, f"studies.{name}.arms.{arm}", o)) for arm, o in arms.items()],
        baseline=baseline,
    )


def _str_list(path: Path, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: {key}", f"a list of override strings, got {value!r}")
    return list(value)


def plan(spec: Spec, runs_dir: Path) -> dict[str, list[PlannedRun]]:
    """Every study's runs, composed and validated; identical runs across studies are shared."""
    runs_dir = runs_dir.resolve()
    by_key: dict[str, PlannedRun] = {}
    studies: dict[str, list[PlannedRun]] = {}
    for study in spec.studies:
        studies[study.name] = []
        for arm in study.arms:
            for seed in study.seeds:
                overrides = [*spec.common, *study.overrides, *arm.overrides, f"seed={seed}"]
                key = hashlib.sha256(json.dumps(overrides).encode()).hexdigest()[:12]
                if key not in by_key:
                    run_dir = runs_dir / study.name / arm.name / f"seed{seed}"
                    by_key[key] = _composed(PlannedRun(study.name, arm.name, seed, overrides, run_dir))
                studies[study.name].append(_alias(by_key[key], study.name, arm.name))
        check_fair(study, studies[study.name])
    return studies


def _composed(run: PlannedRun) -> PlannedRun:
    try:
        cfg = compose_config([*run.overrides, f"run_dir={run.run_dir}"])
        run.config = validate(cfg)
    except ConfigError as error:
        raise ConfigError(f"{run.label}: {error.key}", error.problem, error.fix) from error
    except Exception as error:  # Hydra's override and composition errors
        raise ConfigError(run.label, f"{type(error).__name__}: {error}") from error
    run.resolved = OmegaConf.to_container(cfg, resolve=True)
    return run


def _alias(run: PlannedRun, study: str, arm: str) -> PlannedRun:
    """The same run seen from another study (its own study/arm names, the shared directory)."""
    if run.study == study and run.arm == arm:
        return run
    return PlannedRun(study, arm, run.seed, run.overrides, run.run_dir, run.config, run.resolved)


def check_fair(study: Study, runs: Sequence[PlannedRun]) -> None:
    """Refuse a study whose arms differ outside `algorithm.` (model, data, steps, samples...)."""
    configs = [flatten(run.resolved) for run in runs]
    unfair = [key for key in differing_keys(configs)
              if not key.startswith(FAIR_PREFIX) and key not in BOOKKEEPING_KEYS]
    if unfair:
        raise ConfigError(f"studies.{study.name}", "its arms must differ only in algorithm.*, "
                          f"but these differ too: {', '.join(unfair)}")


def unique_runs(studies: dict[str, list[PlannedRun]]) -> list[PlannedRun]:
    seen: dict[Path, PlannedRun] = {}
    for runs in studies.values():
        for run in runs:
            seen.setdefault(run.run_dir, run)
    return list(seen.values())


def execute(runs: Sequence[PlannedRun], console: Console, fresh: bool = False,
            jobs: int = 2) -> list[str]:
    """Runs what is not finished yet, `jobs` at a time, each a `riskpo-train` process joining
    one Ray cluster; returns the failures. A failed run is reported and the others go on; its
    directory keeps console.log and train.log."""
    import ray

    from workers.factory import prepare_model, required_resources, start_local_ray

    todo = [run for run in runs if fresh or not run.finished()]
    console.print(f"[bold]compare[/]: {len(runs)} runs, {len(runs) - len(todo)} already finished, "
                  f"{len(todo)} to run, {jobs} at a time")
    if not todo:
        return []
    for run in _one_per_model(todo):  # warm starts now, one at a time, before runs share them
        prepare_model(run.config, console)
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        start_local_ray(max(os.cpu_count() or 1,
                            jobs * max(math.ceil(required_resources(run.config)["CPU"]) for run in todo)))
        address = ray.get_runtime_context().gcs_address
    try:
        return _run_all(todo, console, jobs, {**os.environ, "RAY_ADDRESS": address})
    finally:
        ray.shutdown()


def _one_per_model(runs: Sequence[PlannedRun]) -> list[PlannedRun]:
    """One run for each distinct starting model (model and task settings)."""
    distinct: dict[str, PlannedRun] = {}
    for run in runs:
        c = run.config
        key = json.dumps([asdict(c.model), asdict(c.data.train), asdict(c.data.eval)], default=str)
        distinct.setdefault(key, run)
    return list(distinct.values())


def _run_all(todo: Sequence[PlannedRun], console: Console, jobs: int,
             env: dict[str, str]) -> list[str]:
    failures: list[str] = []
    pending, running = list(todo), []
    began, done = time.perf_counter(), 0
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
            prefix = f"[{done}/{len(todo)}] {run.label}"
            if process.returncode != 0 or not run.finished():
                failures.append(f"{run.label}: exit {process.returncode} "
                                f"(see {run.run_dir / CONSOLE_LOG})")
                console.print(f"[bold red]failed[/] {prefix}: exit {process.returncode}, "
                              f"log {run.run_dir / CONSOLE_LOG}")
                continue
            final = json.loads((run.run_dir / "summary.json").read_text()).get("final", {})
            console.print(f"{prefix}: avg@1 {final.get('eval/pass@1', math.nan):.3f} in "
                          f"{time.perf_counter() - start:.0f}s; {_eta(began, done, len(todo))}")
    return failures


def _start(run: PlannedRun, env: dict[str, str]) -> tuple[subprocess.Popen, IO[str]]:
    """`riskpo-train OVERRIDES run_dir=...` in the background, its console in the run dir."""
    if run.run_dir.exists():
        shutil.rmtree(run.run_dir)  # an unfinished (or --fresh) run starts over
    run.run_dir.mkdir(parents=True)
    log = open(run.run_dir / CONSOLE_LOG, "w")  # noqa: SIM115 (closed when the run ends)
    command = [sys.executable, "-m", "launch.train", *run.overrides, f"run_dir={run.run_dir}"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                               cwd=REPO_ROOT)
    return process, log


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
    console = Console(stderr=True)
    from launch.compare_report import write_report

    try:
        spec = load_spec(args.spec)
        studies = plan(spec, Path(args.runs_dir))
    except ConfigError as error:
        console.print(f"[bold red]config error[/]: {error}")
        return 2
    failures = [] if args.report_only else execute(unique_runs(studies), console, args.fresh, args.jobs)
    report = write_report(spec, studies, Path(args.output), command_line(args))
    console.print(f"[bold green]report[/]: {report}")
    if failures:
        console.print("[bold red]runs that failed[/]:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
