"""Summarise a sweep: read each run directory's summary.json and resolved config, and write a
markdown table of final metrics per run, with the config values that differ between runs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from riskpo.run.record import CONFIG_FILE, SUMMARY_FILE

SUMMARY_TABLE_FILE = "sweep_summary.md"
# Where a run directory keeps its resolved config, in order of preference: the driver's own
# copy (riskpo/run/record.py), then the one Hydra writes beside it.
RESOLVED_CONFIG_FILES = (CONFIG_FILE, ".hydra/config.yaml")
# Keys that differ between runs by construction and say nothing about the experiment.
IGNORED_CONFIG_KEYS = ("run_dir", "hydra", "resume")
MISSING = "—"


@dataclass
class RunRecord:
    """What the table needs from one run directory."""

    run_dir: Path
    config: dict[str, Any]  # flattened: "algorithm.options.beta" -> 0.9
    summary: dict[str, Any] | None  # None when the run left no summary.json (failed, running)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def resolved_config_path(run_dir: Path) -> Path:
    """The run directory's resolved config file; an error names the directory if there is none."""
    for name in RESOLVED_CONFIG_FILES:
        if (run_dir / name).is_file():
            return run_dir / name
    raise FileNotFoundError(f"{run_dir}: no resolved config (looked for {RESOLVED_CONFIG_FILES})")


def load_run(run_dir: Path) -> RunRecord:
    """Read one run directory."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.load(resolved_config_path(run_dir)), resolve=False)
    summary_path = run_dir / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    if summary is not None and not isinstance(summary.get("final"), Mapping):
        raise ValueError(f"{summary_path}: expected a 'final' object of metrics")
    return RunRecord(run_dir, flatten(config), summary)


def find_run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Run directories among `paths`: a path with a resolved config is a run; otherwise its
    immediate subdirectories that have one are (a Hydra sweep directory, a --runs-root)."""
    run_dirs: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: not a directory")
        if is_run_dir(path):
            run_dirs.append(path)
            continue
        children = sorted((c for c in path.iterdir() if is_run_dir(c)), key=_natural_key)
        if not children:
            raise FileNotFoundError(f"{path}: neither a run directory nor a folder of them")
        run_dirs.extend(children)
    return run_dirs


def is_run_dir(path: Path) -> bool:
    """Whether `path` is a run directory (it holds a resolved config)."""
    return path.is_dir() and any((path / name).is_file() for name in RESOLVED_CONFIG_FILES)


def _natural_key(path: Path) -> tuple[int, int | str]:
    return (0, int(path.name)) if path.name.isdigit() else (1, path.name)


def differing_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Config keys whose values are not the same in every run (ignoring run bookkeeping)."""
    keys = sorted(set().union(*configs)) if configs else []
    ignored = tuple(f"{k}." for k in IGNORED_CONFIG_KEYS)
    return [
        key for key in keys
        if key not in IGNORED_CONFIG_KEYS and not key.startswith(ignored)
        and len({json.dumps(c.get(key, MISSING), sort_keys=True, default=str) for c in configs}) > 1
    ]


def _cell(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def summary_table(runs: Sequence[RunRecord]) -> str:
    """A markdown table: one row per run, the differing config values, then the final metrics."""
    if not runs:
        raise ValueError("no runs to summarise")
    config_keys = differing_keys([run.config for run in runs])
    metric_keys = sorted({k for run in runs if run.summary for k in run.summary["final"]})
    header = ["run", *config_keys, *(f"final {k}" for k in metric_keys), "steps", "wall_s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        final = run.summary["final"] if run.summary else {}
        steps = run.summary.get("steps") if run.summary else "no summary.json"
        wall_s = run.summary.get("wall_s") if run.summary else None
        cells = [
            run.run_dir.name,
            *(_cell(run.config.get(k)) for k in config_keys),
            *(_cell(final.get(k)) for k in metric_keys),
            _cell(steps),
            _cell(wall_s),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_sweep_summary(paths: Sequence[Path], output: Path | None = None) -> Path:
    """Summarise the runs under `paths` into `output` (default: sweep_summary.md in the first
    path); returns the file written."""
    runs = [load_run(run_dir) for run_dir in find_run_dirs(paths)]
    output = output or paths[0] / SUMMARY_TABLE_FILE
    count = f"{len(runs)} run" + ("" if len(runs) == 1 else "s")
    output.write_text(f"# Sweep summary ({count})\n\n{summary_table(runs)}")
    return output


class SweepSummaryCallback(Callback):
    """Hydra callback that writes the summary when `riskpo-train -m ...` ends; enable it with
    `hydra.callbacks.sweep_summary._target_: launch.sweep_summary.SweepSummaryCallback`."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        # runs live in run_dir/<job number> when run_dir is given, else in Hydra's sweep dir
        sweep_dir = Path(config.get("run_dir") or config.hydra.sweep.dir)
        output = write_sweep_summary([sweep_dir])
        print(f"sweep summary: {output}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m launch.sweep_summary SWEEP_DIR [RUN_DIR ...] [--output FILE]`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("paths", nargs="+", type=Path,
                        help="a sweep directory (multirun/<time>, a --runs-root) or run directories")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"markdown file to write (default: PATHS[0]/{SUMMARY_TABLE_FILE})")
    args = parser.parse_args(argv)
    try:
        output = write_sweep_summary(args.paths, args.output)
    except (FileNotFoundError, ValueError) as error:
        print(f"sweep_summary: {error}", file=sys.stderr)
        return 1
    print(output.read_text(), end="")
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
