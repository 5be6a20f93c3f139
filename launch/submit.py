"""Submit training runs to a Ray cluster as Ray jobs: one job per run, so a Hydra sweep (`-m`)
becomes one job per point of the sweep, each with its own run directory and log."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from launch.reachability import unreachable

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# gitignore-style patterns, relative to the working directory that Ray uploads. A leading "/"
# anchors a pattern at the project root, so "/data" skips the data folder but not riskpo/data/.
WORKING_DIR_EXCLUDES = (
    ".git",
    "/checkpoints",
    "/outputs",
    "/runs",
    "/multirun",
    "/data",
    "/wandb",
    "/cache",
    "/.venv*",
    "/venv",
    "/env",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
)
FORWARDED_ENV_PREFIXES = ("WANDB_",)


@dataclass(frozen=True)
class RunSpec:
    """One training run: the overrides `riskpo-train` gets and the Ray job that carries them."""

    overrides: list[str]
    submission_id: str
    entrypoint: str
    run_dir: str | None  # where the run writes, when the overrides or --runs-root say so


@dataclass
class SubmitOptions:
    """What every job of one submission shares."""

    address: str
    working_dir: Path = PROJECT_ROOT
    python: str = "python"
    env_vars: dict[str, str] = field(default_factory=dict)
    pip_packages: list[str] = field(default_factory=list)
    runs_root: str | None = None
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    entrypoint_resources: dict[str, float] = field(default_factory=dict)


class JobClient(Protocol):
    """The part of `ray.job_submission.JobSubmissionClient` this module uses."""

    def submit_job(self, **kwargs: Any) -> str: ...

    def get_job_status(self, job_id: str) -> Any: ...

    def tail_job_logs(self, job_id: str) -> Any: ...


def expand_overrides(overrides: Sequence[str], multirun: bool) -> list[list[str]]:
    """Expand Hydra overrides into one override list per run, with Hydra's own parser and sweeper.

    Without `multirun`, a sweep override (`seed=0,1`) is an error, as it is for `riskpo-train`.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as error:
        raise ValueError(f"cannot parse overrides {list(overrides)}: {error}") from error
    if not multirun:
        sweeps = [override.input_line for override in parsed if override.is_sweep_override()]
        if sweeps:
            raise ValueError(f"sweep overrides {sweeps} need -m/--multirun (one job per run)")
        return [list(overrides)]
    try:
        (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    except HydraException as error:
        raise ValueError(f"cannot expand the sweep {list(overrides)}: {error}") from error
    return batch


def parse_env_assignments(assignments: Sequence[str]) -> dict[str, str]:
    """Turn `KEY=VALUE` strings into a dict; a string without `=` or with an empty key is an error."""
    env: dict[str, str] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--env {assignment!r}: expected KEY=VALUE")
        env[key.strip()] = value
    return env


def forwarded_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The submitter's variables that follow the job (wandb's settings and key)."""
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


def check_working_dir(working_dir: Path) -> Path:
    """The project checkout to ship: it must hold pyproject.toml and conf/ (an installed, not
    editable, copy of the package does not, and would ship site-packages instead)."""
    missing = [name for name in ("pyproject.toml", "conf") if not (working_dir / name).exists()]
    if missing:
        raise ValueError(f"working dir {working_dir} is not a RiskPO-RL checkout (no {missing}); "
                         "pass --working-dir PATH_TO_CHECKOUT")
    return working_dir


def project_extra_requirements(working_dir: Path, extras: Sequence[str]) -> list[str]:
    """The requirements of the project's optional extras (pyproject.toml), e.g. gpu -> vllm."""
    import tomllib

    optional = tomllib.loads((working_dir / "pyproject.toml").read_text())["project"].get(
        "optional-dependencies", {})
    requirements = []
    for extra in extras:
        if extra not in optional:
            raise ValueError(f"--extra {extra!r}: pyproject.toml has extras {sorted(optional)}")
        requirements.extend(optional[extra])
    return requirements


def build_runtime_env(options: SubmitOptions) -> dict[str, Any]:
    """The Ray runtime_env shared by every job: the code without .git/checkpoints/data/venvs,
    environment variables and extra pip packages."""
    runtime_env: dict[str, Any] = {
        "working_dir": str(options.working_dir),
        "excludes": list(WORKING_DIR_EXCLUDES),
    }
    if options.env_vars:
        runtime_env["env_vars"] = dict(options.env_vars)
    if options.pip_packages:
        runtime_env["pip"] = list(options.pip_packages)
    return runtime_env


def job_name(overrides: Sequence[str]) -> str:
    """A readable, unique Ray submission id built from a run's overrides."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(overrides).replace("=", "-"))
    slug = slug.strip("_")[:80]
    suffix = uuid.uuid4().hex[:8]
    return f"riskpo-{slug}-{suffix}" if slug else f"riskpo-{suffix}"


def plan_runs(overrides: Sequence[str], multirun: bool, options: SubmitOptions) -> list[RunSpec]:
    """One RunSpec per run; each run's entrypoint is `python -m launch.train OVERRIDES`."""
    runs = []
    for run_overrides in expand_overrides(overrides, multirun):
        submission_id = job_name(run_overrides)
        full_overrides = list(run_overrides)
        run_dir = _run_dir_override(run_overrides)
        if options.runs_root and run_dir is None:
            run_dir = f"{options.runs_root.rstrip('/')}/{submission_id}"
            full_overrides.append(f"run_dir={_hydra_quoted(run_dir)}")
        entrypoint = shlex.join([options.python, "-m", "launch.train", *full_overrides])
        runs.append(RunSpec(full_overrides, submission_id, entrypoint, run_dir))
    return runs


def _hydra_quoted(value: str) -> str:
    """A Hydra override value that stays one string whatever characters a path holds."""
    quote = "'" if "'" not in value else '"'
    if quote in value:
        raise ValueError(f"path {value!r} holds both kinds of quotes; Hydra cannot take it")
    return f"{quote}{value}{quote}"


def _run_dir_override(overrides: Sequence[str]) -> str | None:
    for override in overrides:
        key, sep, value = override.lstrip("+").partition("=")
        if sep and key == "run_dir":
            return value.strip("'\"")
    return None


def summarize_runs(runs: Sequence[RunSpec]) -> Path | None:
    """Write the sweep summary of these runs beside their run directories, when this machine sees
    them (a local cluster, shared storage); returns the file, or None when none is visible."""
    from launch.sweep_summary import is_run_dir, write_sweep_summary

    visible = [Path(run.run_dir) for run in runs if run.run_dir and is_run_dir(Path(run.run_dir))]
    if not visible:
        return None
    return write_sweep_summary(visible, visible[0].parent / "sweep_summary.md")


def submit_runs(client: JobClient, runs: Sequence[RunSpec], options: SubmitOptions) -> list[str]:
    """Submit each run as its own Ray job; returns the job ids in order."""
    runtime_env = build_runtime_env(options)
    job_ids = []
    for run in runs:
        job_id = client.submit_job(
            entrypoint=run.entrypoint,
            submission_id=run.submission_id,
            runtime_env=runtime_env,
            metadata={"riskpo_overrides": shlex.join(run.overrides)},
            entrypoint_num_cpus=options.entrypoint_num_cpus,
            entrypoint_num_gpus=options.entrypoint_num_gpus,
            entrypoint_resources=options.entrypoint_resources or None,
        )
        job_ids.append(job_id)
    return job_ids


async def _stream_logs(client: JobClient, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def follow_jobs(client: JobClient, job_ids: Sequence[str]) -> dict[str, str]:
    """Stream each job's log until it ends (one after another); returns job id -> final status."""
    statuses = {}
    for job_id in job_ids:
        print(f"--- logs of {job_id} ---", flush=True)
        asyncio.run(_stream_logs(client, job_id))
        status = client.get_job_status(job_id)
        statuses[job_id] = str(getattr(status, "value", status))  # JobStatus is a str Enum
    return statuses


def exit_code(statuses: Mapping[str, str]) -> int:
    """0 when every job succeeded, 1 otherwise."""
    return 0 if all(status == "SUCCEEDED" for status in statuses.values()) else 1


def _print_submitted(runs: Sequence[RunSpec], job_ids: Sequence[str], address: str) -> None:
    for run, job_id in zip(runs, job_ids, strict=True):
        print(f"submitted {job_id}: {shlex.join(run.overrides) or '(embedded default)'}")
    print(f"follow a job's log: ray job logs --address {address} --follow JOB_ID")
    print(f"status of a job:    ray job status --address {address} JOB_ID")
    print(f"stop a job:         ray job stop --address {address} JOB_ID")
    if not any(run.run_dir for run in runs):
        print("note: without --runs-root (or run_dir=...) a run writes inside the job's temporary "
              "working directory on the node that runs it")


def _parse_resources(pairs: Sequence[str]) -> dict[str, float]:
    resources = {}
    for name, value in parse_env_assignments(pairs).items():
        try:
            resources[name] = float(value)
        except ValueError as error:
            raise ValueError(f"--entrypoint-resource {name}={value!r}: not a number") from error
    return resources


def _fail(line: str) -> int:
    """One line on stderr, exit status 2: nothing was submitted (or is being followed)."""
    print(f"riskpo-submit: {line}", file=sys.stderr)
    return 2


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="riskpo-submit",
        description="Submit riskpo-train runs as Ray jobs (a -m sweep becomes one job per run).",
    )
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                        help="Ray dashboard address, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)")
    parser.add_argument("--no-wait", action="store_true",
                        help="return after submitting instead of following the job(s)")
    parser.add_argument("-m", "--multirun", action="store_true",
                        help="expand Hydra sweep overrides (a=1,2) into one job per run")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable for the job (repeatable); WANDB_* pass through")
    parser.add_argument("--pip", action="append", default=[], metavar="REQUIREMENT",
                        help="extra pip package installed in the job's environment (repeatable)")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME",
                        help="install the project's optional extra NAME (e.g. gpu) in the "
                             "job's environment (repeatable)")
    parser.add_argument("--runs-root", default=None,
                        help="directory on the cluster (shared storage) under which each job "
                             "gets run_dir=RUNS_ROOT/JOB_ID, unless the overrides set run_dir")
    parser.add_argument("--working-dir", type=Path, default=PROJECT_ROOT,
                        help="project checkout shipped to the cluster (default: this one)")
    parser.add_argument("--python", default="python",
                        help="interpreter on the cluster that runs launch.train (default: python)")
    parser.add_argument("--entrypoint-num-cpus", type=float, default=None)
    parser.add_argument("--entrypoint-num-gpus", type=float, default=None)
    parser.add_argument("--entrypoint-resource", action="append", default=[], metavar="NAME=N",
                        help="custom resource the driver process needs (repeatable)")
    parser.add_argument("--connect-timeout", type=float, default=15.0, metavar="SECONDS",
                        help="give up when the dashboard address does not answer within this "
                             "long (default: 15)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the jobs and runtime_env without contacting a cluster")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, exactly as riskpo-train")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `riskpo-submit`; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if not args.address and not args.dry_run:
        parser.error("no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    try:
        env_vars = {**forwarded_environment(os.environ), **parse_env_assignments(args.env)}
        working_dir = check_working_dir(args.working_dir.resolve())
        options = SubmitOptions(
            address=args.address or "",
            working_dir=working_dir,
            python=args.python,
            env_vars=env_vars,
            pip_packages=[*project_extra_requirements(working_dir, args.extra), *args.pip],
            runs_root=args.runs_root,
            entrypoint_num_cpus=args.entrypoint_num_cpus,
            entrypoint_num_gpus=args.entrypoint_num_gpus,
            entrypoint_resources=_parse_resources(args.entrypoint_resource),
        )
        runs = plan_runs(args.overrides, args.multirun, options)
    except ValueError as error:
        parser.error(str(error))
    if args.dry_run:
        print("runtime_env:", build_runtime_env(options))
        for run in runs:
            print(f"{run.submission_id}: {run.entrypoint}")
        return 0

    return submit_and_follow(runs, options, args.connect_timeout, wait=not args.no_wait)


def submit_and_follow(runs: Sequence[RunSpec], options: SubmitOptions, connect_timeout_s: float,
                      wait: bool = True) -> int:
    """Submits the runs and, with `wait`, follows them to the end; returns the exit status. A
    cluster that cannot be reached (within connect_timeout_s) or refuses is one line, status 2."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    problem = unreachable(options.address, connect_timeout_s)
    try:  # Ray heads require a token by default: RAY_AUTH_MODE=token and the head's token here
        if problem:
            raise ConnectionError(problem)
        client = JobSubmissionClient(options.address)
        job_ids = submit_runs(client, runs, options)
    except AuthenticationError as error:
        return _fail(f"{options.address}: {error}")
    except (ConnectionError, OSError) as error:  # requests' errors are OSErrors too
        return _fail(f"cannot reach the Ray dashboard at {options.address} ({_first_line(error)})"
                     " -> check that the head node is up (`ray status` there), the address and "
                     "the dashboard port (8265 by default), and firewalls")
    except RuntimeError as error:  # the dashboard answered with an error
        return _fail(f"the cluster at {options.address} did not take the job: {_first_line(error)}")
    _print_submitted(runs, job_ids, options.address)
    if not wait:
        return 0
    try:
        statuses = follow_jobs(client, job_ids)
    except (ConnectionError, OSError, RuntimeError) as error:
        return _fail(f"lost the connection to {options.address} while following the jobs "
                     f"({_first_line(error)}); they may still run: ray job status --address "
                     f"{options.address} JOB_ID")
    for job_id, status in statuses.items():
        print(f"{job_id}: {status}")
    summary = summarize_runs(runs)
    if summary is not None:
        print(summary.read_text(), end="")
        print(f"sweep summary written to {summary}")
    elif any(run.run_dir for run in runs):
        print("run directories are not visible from this machine: run "
              "`python -m launch.sweep_summary RUN_DIR...` where they are")
    return exit_code(statuses)

if __name__ == "__main__":
    sys.exit(main())
