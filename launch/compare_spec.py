"""A comparison spec (conf/compare/*.yaml): studies x arms x seeds, each run composed and
validated before any starts, and the fairness rule (arms may differ only under `algorithm.`,
and in the value a study's sweep chose for each arm). A study may first sweep one key (the
learning rate) per arm on a split fixed in advance (the validation split), pick each arm's
best value by a named metric, then run its seeds at that value. Read by the runner
(launch/compare.py) and the report (launch/compare_report.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from launch.config import CONF_DIR, RunConfig, compose_config, validate
from launch.sweep_summary import differing_keys, flatten
from riskpo.options import ConfigError

DEFAULT_SPEC = CONF_DIR / "compare" / "full.yaml"
# Keys that differ between arms of a study by construction.
BOOKKEEPING_KEYS = ("run_dir", "seed", "experiment_name")
FAIR_PREFIX = "algorithm."


@dataclass
class Arm:
    name: str
    overrides: list[str]


@dataclass
class Sweep:
    """Each arm runs once per value of `key` (seed `seed`, plus `overrides`, e.g. the
    validation split); the value with the best final `metric` is the arm's for the seeds."""

    key: str
    values: list[Any]
    seed: int = 0
    overrides: list[str] = field(default_factory=list)
    metric: str = "eval/pass@1"


@dataclass
class Study:
    name: str
    title: str
    overrides: list[str]
    seeds: list[int]
    target: float  # avg@1 the "steps to target" column counts to
    arms: list[Arm]
    baseline: str | None = None  # the arm the others are compared with in the findings
    sweep: Sweep | None = None
    notes: str = ""  # written by hand once the numbers are in: what was tried, how to read them


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
        """study/arm/seed<N>, or study/arm/<key>_<value> for a sweep's run (its directory)."""
        return f"{self.study}/{self.arm}/{self.run_dir.name}"

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
        baseline=baseline, sweep=_sweep(path, name, body.get("sweep")),
        notes=str(body.get("notes", "")).strip(),
    )


def _sweep(path: Path, study: str, body: Any) -> Sweep | None:
    if body is None:
        return None
    where = f"{path}: studies.{study}.sweep"
    if not isinstance(body, dict) or not isinstance(body.get("key"), str):
        raise ConfigError(where, "a mapping with key (the override to sweep), values, seed, "
                          "overrides and metric")
    values = body.get("values")
    if not isinstance(values, list) or len(values) < 2:
        raise ConfigError(f"{where}.values", "at least two values to choose from")
    return Sweep(body["key"], values, int(body.get("seed", 0)),
                 _str_list(path, f"studies.{study}.sweep.overrides", body.get("overrides", [])),
                 str(body.get("metric", "eval/pass@1")))


def _str_list(path: Path, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: {key}", f"a list of override strings, got {value!r}")
    return list(value)


def plan_sweeps(spec: Spec, runs_dir: Path) -> dict[str, list[PlannedRun]]:
    """The sweep runs of every study that has a sweep (arm x value, the sweep's seed), under
    runs_dir/<study>/sweep/<arm>/<key>_<value>/; composed, validated and checked for fairness."""
    runs_dir, by_key, studies = runs_dir.resolve(), {}, {}
    for study in spec.studies:
        if study.sweep is None:
            continue
        sweep = study.sweep
        studies[study.name] = [
            _planned(by_key, study.name, arm.name, sweep.seed,
                     [*spec.common, *study.overrides, *arm.overrides, *sweep.overrides,
                      f"{sweep.key}={value}", f"seed={sweep.seed}"],
                     runs_dir / study.name / "sweep" / arm.name / f"{sweep.key}_{value}")
            for arm in study.arms for value in sweep.values]
        check_fair(study, studies[study.name], (sweep.key,))
        reference = _composed(PlannedRun(study.name, study.arms[0].name, study.seeds[0], [
            *spec.common, *study.overrides, *study.arms[0].overrides, f"seed={study.seeds[0]}"],
            runs_dir / study.name / "reference"))
        check_same_start(study, studies[study.name], reference)
    return studies


def check_same_start(study: Study, sweep_runs: Sequence[PlannedRun], reference: PlannedRun) -> None:
    """Refuse a sweep whose runs would start from another model than the study's seed runs: a
    warm start never trains on the held-out splits, so a sweep that evaluates on a split of its
    own (data.eval.seed=...) gets a warm start of its own, and chooses for another model."""
    from riskpo.models.warmstart import settings_key

    def start(run: PlannedRun) -> str:
        return f"{run.config.model.path}:{settings_key(run.config.model, run.config.data)}"

    if any(start(run) != start(reference) for run in sweep_runs):
        raise ConfigError(f"studies.{study.name}.sweep.overrides",
                          "the sweep's runs would start from another warm-started model than the "
                          "seed runs (their data splits differ, and the warm start never trains "
                          "on a held-out split)", "evaluate the sweep on the task's validation "
                          "split: data.eval_on=validation (the data config declares it)")


def plan(spec: Spec, runs_dir: Path,
         chosen: dict[str, dict[str, Any]] | None = None) -> dict[str, list[PlannedRun]]:
    """Every study's runs, composed and validated; identical runs across studies are shared.
    A study with a sweep runs each arm at the value chosen for it (chosen[study][arm]); its
    arms not chosen yet (their sweep unfinished) have no runs."""
    runs_dir, by_key, studies = runs_dir.resolve(), {}, {}
    for study in spec.studies:
        studies[study.name] = []
        for arm in study.arms:
            extra = []
            if study.sweep is not None:
                value = (chosen or {}).get(study.name, {}).get(arm.name)
                if value is None:
                    continue
                extra = [f"{study.sweep.key}={value}"]
            for seed in study.seeds:
                overrides = [*spec.common, *study.overrides, *arm.overrides, *extra, f"seed={seed}"]
                studies[study.name].append(_planned(
                    by_key, study.name, arm.name, seed, overrides,
                    runs_dir / study.name / arm.name / f"seed{seed}"))
        check_fair(study, studies[study.name], (study.sweep.key,) if study.sweep else ())
    return studies


def _planned(by_key: dict[str, PlannedRun], study: str, arm: str, seed: int,
             overrides: list[str], run_dir: Path) -> PlannedRun:
    """The run of these overrides (composed once), seen from this study and arm."""
    key = hashlib.sha256(json.dumps(overrides).encode()).hexdigest()[:12]
    if key not in by_key:
        by_key[key] = _composed(PlannedRun(study, arm, seed, overrides, run_dir))
    return _alias(by_key[key], study, arm)


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


def check_fair(study: Study, runs: Sequence[PlannedRun], swept: Sequence[str] = ()) -> None:
    """Refuse a study whose arms differ outside `algorithm.` (model, data, steps, samples...)
    and the swept key (each arm's chosen learning rate)."""
    configs = [flatten(run.resolved) for run in runs]
    unfair = [key for key in differing_keys(configs)
              if not key.startswith(FAIR_PREFIX) and key not in BOOKKEEPING_KEYS
              and key not in swept]
    if unfair:
        raise ConfigError(f"studies.{study.name}", "its arms must differ only in algorithm.*"
                          + (f" and {', '.join(swept)}" if swept else "")
                          + f", but these differ too: {', '.join(unfair)}")


def choose(study: Study, sweep_runs: Sequence[PlannedRun]) -> dict[str, Any]:
    """Each arm's best sweep value by the sweep's final metric (ties: the first value in the
    spec's order); an arm whose sweep has an unfinished run has no choice yet."""
    if study.sweep is None:
        return {}
    chosen = {}
    for arm in study.arms:
        scores = []
        for value in study.sweep.values:
            run = next(r for r in sweep_runs if r.arm == arm.name and
                       r.run_dir.name == f"{study.sweep.key}_{value}")
            if not run.finished():
                break
            final = json.loads((run.run_dir / "summary.json").read_text()).get("final", {})
            score = final.get(study.sweep.metric)
            scores.append((score if isinstance(score, int | float) else float("-inf"), value))
        else:
            best = max(score for score, _ in scores)
            chosen[arm.name] = next(value for score, value in scores if score == best)
    return chosen


def unique_runs(studies: dict[str, list[PlannedRun]]) -> list[PlannedRun]:
    seen: dict[Path, PlannedRun] = {}
    for runs in studies.values():
        for run in runs:
            seen.setdefault(run.run_dir, run)
    return list(seen.values())
