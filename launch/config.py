"""The run configuration: the Hydra tree under conf/ composes into RunConfig, whose groups are
the option dataclasses declared beside the code that uses them (riskpo/ for the algorithm and
the driver, workers/ for the actors, launch/placement.py for the cluster). `validate` checks
every group and the rules that span groups, once, before anything starts. The schema composes
without refusing keys (Hydra's struct mode is off in it), so that validate() is the one place a
key that its group does not declare is refused, however it arrives (`key=`, `+key=`, a yaml),
naming the nearest declared key, or the new key of one that moved (MOVED_KEYS).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from launch.placement import ClusterConfig
from launch.settle import record_settled, settle_auto
from riskpo.algo.config import AlgorithmConfig, check_step_shape, group_estimators
from riskpo.algo.losses import POLICY_LOSSES, LossConfig
from riskpo.algo.registry import estimators, estimators_with_option
from riskpo.data.loaders import DataConfig
from riskpo.data.registry import task_named, tiny_model_tasks
from riskpo.loop.trainer import TrainerConfig
from riskpo.messages import SamplingConfig
from riskpo.models.config import TINY_MODEL, ModelConfig
from riskpo.options import ConfigError, join, one_of, require
from riskpo.run.record import LoggerConfig
from workers.learner.config import LearnerConfig
from workers.rollout import ENGINE_CAPABILITIES, EngineConfig
from workers.verifier.config import VerifierConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
RUN_DIR_POLICIES = ("refuse", "overwrite", "new")

# Keys that moved (old dotted key -> new key). A composed config (command line or yaml), a run's
# config.yaml being resumed (launch/run_dir.py) or a comparison spec that uses an old key is
# refused in one line naming the new one; no old key is accepted.
MOVED_KEYS: dict[str, str] = {
    # each estimator's options under algorithm.options (riskpo/algo/estimators/)
    "algorithm.alpha": "algorithm.options.alpha",
    "algorithm.beta": "algorithm.options.beta",
    "algorithm.w_mix": "algorithm.options.w_mix",
    "algorithm.natural_baseline": "algorithm.options.natural_baseline",
    "algorithm.mix_cvar": "algorithm.options.mix_cvar",
    "algorithm.risk_seeking": "algorithm.options.risk_seeking",
    "algorithm.risk_seeking_u": "algorithm.options.risk_seeking_u",
    "algorithm.std_normalize": "algorithm.options.std_normalize",
    "algorithm.advantage_form": "algorithm.options.advantage_form",
    "algorithm.credit": "algorithm.options.credit",
    "algorithm.pairing": "algorithm.options.pairing",
    "algorithm.bundle_size": "algorithm.options.bundle_size",
    "algorithm.drop_last_bundle": "algorithm.options.drop_last_bundle",
    "algorithm.ragged_last_bundle": "algorithm.options.ragged_last_bundle",
    "algorithm.allow_surplus_responses": "algorithm.options.allow_surplus_responses",
    "algorithm.quantile_source": "algorithm.options.quantile_source",
    "algorithm.tracker_lr": "algorithm.options.tracker_lr",
    "algorithm.tracker_schedule": "algorithm.options.tracker_schedule",
    "algorithm.tracker_update": "algorithm.options.tracker_update",
    "algorithm.w_reinforce.positive_weight": "algorithm.options.positive_weight",
    "algorithm.pkpo.k": "algorithm.options.k",
    "algorithm.pkpo.k_end": "algorithm.options.k_end",
    "algorithm.pkpo.anneal_start": "algorithm.options.anneal_start",
    "algorithm.pkpo.anneal_steps": "algorithm.options.anneal_steps",
    "algorithm.pkpo.baseline": "algorithm.options.baseline",
    "algorithm.rs_grpo.beta": "algorithm.options.beta",
}
# each task's options under data.<split>.options (riskpo/data/tasks/): the knobs that were
# data.<split>.<arithmetic|code|countdown|visual>.*, and the file tasks' data.<split>.files
_OLD_TASK_KNOBS = {
    "arithmetic": "min_digits max_digits min_terms max_terms operators",
    "code": "forms coef_range num_examples num_hidden_cases",
    "countdown": "num_numbers min_number max_number min_target max_target dominant_template "
                 "rare_template rare_fraction train_rare_only_fraction train_both_fraction "
                 "eval_rare_only_fraction eval_both_fraction validation_size heldout_size seed",
    "visual": "digits cell scale jitter colours",
}
MOVED_KEYS.update({f"data.{split}.{task}.{knob}": f"data.{split}.options.{knob}"
                   for split in ("train", "eval", "validation")
                   for task, knobs in _OLD_TASK_KNOBS.items() for knob in knobs.split()})
MOVED_KEYS.update({f"data.{split}.files": f"data.{split}.options.files"
                   for split in ("train", "eval", "validation")})
# the policy loss by name, its own options under algorithm.loss.options (riskpo/algo/losses.py)
MOVED_KEYS["algorithm.loss.entropy_control"] = "algorithm.loss.name"
MOVED_KEYS.update({f"algorithm.loss.{loss}.{knob}": f"algorithm.loss.options.{knob}"
                   for loss, knobs in (("clip_cov", "fraction low high"), ("kl_cov", "fraction coef"))
                   for knob in knobs.split()})


@dataclass
class RolloutConfig(EngineConfig, SamplingConfig):
    """`rollout.*`: the engines (EngineConfig) and how the driver samples (SamplingConfig)."""

    def check(self, key: str) -> None:
        EngineConfig.check(self, key)
        SamplingConfig.check(self, key)


@dataclass
class RunConfig:
    seed: int = 0
    run_dir: str | None = None  # null: Hydra's output directory
    resume: str = "never"  # never | auto (latest checkpoint in run_dir) | <checkpoint dir>
    # A fresh run into a run_dir that already holds a run (launch/run_dir.py): refuse (say what
    # to do) | overwrite (delete that run first) | new (write to run_dir-2, -3, ...)
    run_dir_policy: str = "refuse"
    # true: run the recipe for 2 steps on this machine's CPUs, scaling only what a CPU cannot
    # hold, one line per substitution (launch/rehearse); config.yaml is the rehearsal's
    rehearse: bool = False
    experiment_name: str = "embedded"
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    @property
    def name(self) -> str:
        """The run's name: logger.run_name, or <experiment>-<algorithm>-seed<seed>."""
        return self.logger.run_name or f"{self.experiment_name}-{self.algorithm.name}-seed{self.seed}"


def register_configs() -> None:
    """Registers the schema as `riskpo_schema` (conf/config.yaml lists it first in its defaults),
    each registered estimator's options class as `algorithm/options/<estimator>` and the loss of
    its recipe as `algorithm/loss/<estimator>` (a preset in conf/algorithm/ selects its
    estimator's in its defaults list and states only what differs)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="riskpo_schema", node=run_schema())
    for name, estimator in estimators().items():
        store.store(group="algorithm/options", name=name, node=_open(OmegaConf.structured(estimator.options)))
        # the loss of its recipe: a preset selects algorithm/loss=<estimator> and states the rest
        store.store(group="algorithm/loss", name=name,
                    node=_open(OmegaConf.structured(LossConfig(**estimator.loss))))
    for name, loss in POLICY_LOSSES.items():  # a preset selects algorithm/loss/options=<loss>
        if loss.options_class is not None:
            store.store(group="algorithm/loss/options", name=name,
                        node=_open(OmegaConf.structured(loss.options_class)))


def run_schema() -> DictConfig:
    """RunConfig as a typed node that accepts keys it does not declare (validate() refuses
    them), with algorithm.options and algorithm.loss empty: the preset's options schema and
    recipe loss fill them (a preset that selects no loss gets its estimator's recipe)."""
    schema = OmegaConf.structured(RunConfig)
    schema.algorithm.options = None
    schema.algorithm.loss = None
    return _open(schema)


def _open(node: DictConfig) -> DictConfig:
    """node with Hydra's struct mode off in it and every group under it."""
    OmegaConf.set_struct(node, False)
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none():
            _open(child)
    return node


def _first_set(value: Any, fallback: Any) -> Any:
    return fallback if value in (None, "") else value


def _output_dir(run_dir: Any, fallback: Any) -> Any:
    """Hydra's output directory: run_dir when given and creatable, else `fallback` when run_dir
    is not given, else the temp dir (Hydra writes nothing there: no .hydra/, no log file), so
    that an unwritable run_dir is reported by launch/run_dir.py in one line, not by Hydra's
    mkdir as a traceback."""
    if run_dir in (None, ""):
        return fallback
    return run_dir if _can_create_dir(Path(str(run_dir)).expanduser()) else tempfile.gettempdir()


def _can_create_dir(path: Path) -> bool:
    """Whether Hydra's mkdir of `path` will succeed: an existing directory this user can write,
    or a missing one that can be made. That is tried (the missing directories are made, then
    removed again): permission bits do not show every place that refuses a directory, such as
    /proc for root or a name that is too long."""
    made: list[Path] = []
    try:
        if path.exists():
            return path.is_dir() and os.access(path, os.W_OK | os.X_OK)
        missing = [path]
        while not missing[-1].parent.exists() and missing[-1].parent != missing[-1]:
            missing.append(missing[-1].parent)
        for directory in reversed(missing):
            directory.mkdir()
            made.append(directory)
        return True
    except OSError:
        return False
    finally:
        for directory in reversed(made):
            with contextlib.suppress(OSError):
                directory.rmdir()


if not OmegaConf.has_resolver("riskpo_first_set"):
    OmegaConf.register_new_resolver("riskpo_first_set", _first_set)
if not OmegaConf.has_resolver("riskpo_output_dir"):
    # conf/config.yaml: hydra.run.dir follows run_dir when it is given.
    OmegaConf.register_new_resolver("riskpo_output_dir", _output_dir)
register_configs()


# --------------------------------------------------------------------------- composing


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The run config for `overrides` (what `riskpo-train` takes), composed without Hydra's
    main: for tests and tools. Not validated: call validate() on it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))


def to_dataclass(cfg: DictConfig | RunConfig) -> RunConfig:
    """The typed RunConfig of a composed config (interpolations resolved); a key that its
    group does not declare is refused first (refuse_undeclared_keys)."""
    if isinstance(cfg, RunConfig):
        return cfg
    refuse_undeclared_keys(cfg)
    merged = OmegaConf.merge(run_schema(), cfg)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def resolve_run_dir(cfg: RunConfig) -> Path:
    """The run directory: run_dir when given (in a Hydra sweep, run_dir/<job number>), else
    Hydra's output directory."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_config = HydraConfig.get() if HydraConfig.initialized() else None
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir).expanduser()
        if hydra_config is not None and hydra_config.mode == RunMode.MULTIRUN:
            run_dir = run_dir / str(hydra_config.job.num)
        return run_dir
    if hydra_config is None or not hydra_config.runtime.output_dir:
        raise ConfigError("run_dir", "is not set and Hydra has no output directory", "pass run_dir=PATH")
    return Path(hydra_config.runtime.output_dir)


# --------------------------------------------------------------------------- validation


def validate(cfg: DictConfig | RunConfig) -> RunConfig:
    """Checks the whole run config once, before any actor starts; returns it typed. The keys
    of launch/settle.py SETTLED_KEYS settle their `auto` here, in the run returned and in cfg
    when it is a DictConfig (the config.yaml written from it records the values the run used).

    Raises ConfigError naming the first offending key and what would work."""
    run = to_dataclass(cfg)
    _check_run(run)
    run.trainer.check("trainer")
    run.algorithm.check("algorithm")
    check_step_shape(run.algorithm, run.trainer.prompts_per_step, run.trainer.samples_per_prompt)
    run.model.check("model")
    if run.model.path == TINY_MODEL:
        _check_tiny_model_inputs(run)
    run.data.check("data")
    _check_verifiers_for_data(run)
    run.rollout.check("rollout")
    if run.algorithm.name in group_estimators():
        require(run.rollout.temperature > 0.0, "rollout.temperature",
                f"0 (greedy) makes all {run.trainer.samples_per_prompt} samples of a prompt identical",
                "sample with a temperature > 0 (1.0 is the paper's)")
    run.learner.check("learner")
    _check_lora_sync(run)
    _check_learner_fits_step(run)
    run.verifier.check("verifier")
    run.cluster.check("cluster")
    if run.cluster.colocate:
        require(run.rollout.num_actors == run.learner.num_ranks, "cluster.colocate",
                f"{run.rollout.num_actors} rollout actors cannot pair with {run.learner.num_ranks} "
                "learner ranks on shared GPUs", "use rollout.num_actors == learner.num_ranks")
        require(run.trainer.off_policy_steps == 0, "trainer.off_policy_steps",
                f"{run.trainer.off_policy_steps} overlaps generation with training, but with "
                "cluster.colocate=true the engines and the learner take turns on the same GPUs",
                "use trainer.off_policy_steps=0, or cluster.colocate=false")
    run.logger.check("logger")
    settle_auto(run)  # dtypes, thread shares, importance correction (launch/settle.py)
    _check_truncated_sampling(run)
    if isinstance(cfg, DictConfig):
        record_settled(cfg, run)
    return run


def _check_truncated_sampling(run: RunConfig) -> None:
    """Importance weights against the engines' log-probs need the distribution the learner
    scores (the full softmax at the sampling temperature); with top-p < 1 or top-k > 0 the
    engines return the log-probs of the truncated one, and on-policy weights would average the
    kept mass instead of 1. So a correction (after `auto` is settled) refuses truncation."""
    correction, rollout = run.algorithm.loss.importance_correction, run.rollout
    if correction == "none" or (rollout.top_p >= 1.0 and rollout.top_k == 0):
        return
    raise ConfigError(
        "rollout.top_p" if rollout.top_p < 1.0 else "rollout.top_k",
        f"rollout.top_p={rollout.top_p} and rollout.top_k={rollout.top_k} truncate the sampling "
        f"distribution, but algorithm.loss.importance_correction={correction} (trainer.off_policy_steps="
        f"{run.trainer.off_policy_steps}) weighs by the engines' log-probs of it against the "
        "learner's full softmax (on-policy weights would average the kept mass, not 1)",
        "sample with rollout.top_p=1.0 and rollout.top_k=0, or set "
        "algorithm.loss.importance_correction=none")


def _check_run(run: RunConfig) -> None:
    require(run.seed >= 0, "seed", f"{run.seed} is negative", "use a seed >= 0")
    one_of(run.run_dir_policy, RUN_DIR_POLICIES, "run_dir_policy")
    if run.resume not in ("never", "auto"):
        require(Path(run.resume).expanduser().is_dir(), "resume",
                f"{run.resume!r} is not a checkpoint directory",
                "use resume=never, resume=auto (latest in run_dir) or an existing checkpoint dir")


def _check_tiny_model_inputs(run: RunConfig) -> None:
    """The tiny character model knows only the plain prompts of the tasks that declare it
    (tiny_model "text"; the tiny VLM those that declare "vision", drawn at its tower's image
    size), and its context holds the longest prompt plus the response."""
    d, tiny = run.data, run.model.tiny
    tasks = tiny_model_tasks("vision" if tiny.is_vision else "text")
    for split in ("train", "eval"):
        dataset = getattr(d, split)
        task_named(dataset.source, f"data.{split}.source")  # a known task, or its nearest name
        require(dataset.source in tasks, f"data.{split}.source",
                f"{dataset.source!r}: the tiny {tiny.arch} model only knows the tasks {tasks}",
                f"use one of {', '.join(tasks)}, or a real model (model.path=...)")
        if tiny.is_vision:
            dataset.task.check_image_size(dataset.task_options(f"data.{split}"),
                                          tiny.vision.image_size, f"data.{split}")
    require(d.template == "plain", "data.template",
            "the tiny model is trained on plain text prompts", "use data.template=plain")
    longest = d.max_prompt_length + run.rollout.max_new_tokens
    require(longest <= tiny.max_position_embeddings, "data.max_prompt_length",
            f"prompt ({d.max_prompt_length}) + rollout.max_new_tokens ({run.rollout.max_new_tokens}) "
            f"exceed model.tiny.max_position_embeddings ({tiny.max_position_embeddings})",
            "shorten one or raise max_position_embeddings")


def _check_verifiers_for_data(run: RunConfig) -> None:
    """Each split's task names the verifier kind that grades it (a file task's rows say it
    row by row, checked as they are graded)."""
    needed: dict[str, list[str]] = {}
    for split in run.data.splits.values():
        if split.task.verifier is not None:
            needed.setdefault(split.task.verifier, []).append(split.source)
    if "code" in needed:
        require(run.verifier.num_code_actors >= 1, "verifier.num_code_actors",
                f"the data has code problems ({', '.join(sorted(set(needed['code'])))}) but no "
                "code verifier", "set verifier.num_code_actors=1 or more")
    if "math" in needed:
        require(run.verifier.num_math_actors >= 1, "verifier.num_math_actors",
                "the data has math problems but no math verifier", "set verifier.num_math_actors=1")


def _check_lora_sync(run: RunConfig) -> None:
    """learner.lora_sync=adapter sends the LoRA adapter alone: it needs adapters, and engines
    that apply them (ENGINE_CAPABILITIES lora_adapters)."""
    if run.learner.lora_sync != "adapter":
        return
    require(run.model.adapters is not None, "learner.lora_sync",
            "adapter sends a LoRA adapter, but model.lora.rank is null (full fine-tuning)",
            "set model.lora.rank, or learner.lora_sync=merged")
    require(ENGINE_CAPABILITIES[run.rollout.engine]["lora_adapters"], "learner.lora_sync",
            f"the {run.rollout.engine} engine cannot take a LoRA adapter sent alone",
            "use learner.lora_sync=merged (the merged weights, every engine), or rollout.engine=hf")


def _check_learner_fits_step(run: RunConfig) -> None:
    learner = run.learner
    if learner.zero_stage == 3:
        require(ENGINE_CAPABILITIES[run.rollout.engine]["streamed_weight_load"], "learner.zero_stage",
                f"ZeRO-3 weights are gathered layer by layer, and the {run.rollout.engine} engine "
                "cannot load them as a stream", "use learner.zero_stage=2 or an engine that can")
    samples = run.trainer.prompts_per_step * run.trainer.samples_per_prompt
    require(learner.num_mini_batches <= samples, "learner.num_mini_batches",
            f"{learner.num_mini_batches} mini-batches for {samples} samples per step",
            f"use 1..{samples}")
    require(learner.num_mini_batches * learner.num_ranks <= samples, "learner.num_ranks",
            f"{learner.num_ranks} ranks x {learner.num_mini_batches} mini-batches > {samples} samples",
            "use fewer ranks or mini-batches")
    longest = run.data.max_prompt_length + run.rollout.max_new_tokens
    require(learner.micro_batch_token_budget >= longest, "learner.micro_batch_token_budget",
            f"{learner.micro_batch_token_budget} tokens cannot hold one sequence of up to {longest}",
            f"use at least {longest}")


# --------------------------------------------------------------------------- declared keys


def refuse_undeclared_keys(cfg: DictConfig) -> None:
    """Walks the composed config against the schema (every dataclass of every group, nested,
    an estimator's options against the options class its preset selected) and raises a
    ConfigError for the first key its group does not declare: naming the new key when the key
    moved (MOVED_KEYS), else the nearest declared one."""
    _walk(cfg, RunConfig, "")


def moved_key_error(key: str, where: str = "") -> ConfigError | None:
    """The refusal of an old key (MOVED_KEYS), or None when `key` did not move."""
    if key not in MOVED_KEYS:
        return None
    new = MOVED_KEYS[key]
    return ConfigError(key, f"{where}moved to {new}", f"write {new}=... instead")


def _walk(node: DictConfig, schema: type, prefix: str) -> None:
    declared = {f.name for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key in node:
        path, child = join(prefix, str(key)), node._get_node(key)
        if key not in declared:
            raise _undeclared(path, child, schema, _declared_below(node, declared))
        for item, item_path, item_schema in _nested(child, hints[key], path):
            _walk(item, item_schema, item_path)


def _nested(child: Any, hint: Any, path: str) -> list[tuple[DictConfig, str, type]]:
    """The groups under a field to walk: a dataclass-typed group (an `Any` field by the type its
    node was composed with, as algorithm.options), or the dataclass items of a list."""
    if isinstance(child, ListConfig) and not child._is_none():
        item_hint = next(iter(typing.get_args(hint)), Any)
        return [walked for index, item in enumerate(child._iter_ex(resolve=False))
                for walked in _nested(item, item_hint, f"{path}[{index}]")]
    if not isinstance(child, DictConfig) or child._is_none() or child._is_interpolation():
        return []
    schema = _dataclass_in(hint) or _dataclass_in(OmegaConf.get_type(child))
    return [(child, path, schema)] if schema else []


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass a type hint names (alone or in an Optional), else None."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found = [arg for arg in typing.get_args(hint) if _dataclass_in(arg)]
        return found[0] if len(found) == 1 else None
    return None


def _undeclared(path: str, value: Any, schema: type, candidates: list[str]) -> ConfigError:
    """The refusal of an undeclared key: where it moved (itself or a key under it), else the
    nearest of `candidates` (its group's keys and the keys of the groups in it)."""
    leaves = [path]
    if isinstance(value, DictConfig):
        leaves += [f"{path}.{leaf}" for leaf in _leaf_keys(value)]
    for leaf in leaves:
        moved = moved_key_error(leaf)
        if moved is not None:
            return moved
    group, _, name = path.rpartition(".")
    problem = f"{schema.__name__} declares no option {name!r}"
    if group == "algorithm.options":
        owners = estimators_with_option(name)
        problem += f" ({name} is an option of {', '.join(owners)})" if owners else ""
    by_name = {candidate.rpartition(".")[2]: candidate for candidate in reversed(candidates)}
    nearest = difflib.get_close_matches(name, list(by_name), n=1)
    own = [candidate for candidate in candidates if "." not in candidate]
    fix = (f"did you mean {join(group, by_name[nearest[0]])}?" if nearest else
           f"{group or 'the top level'} declares: {', '.join(own)}")
    return ConfigError(path, problem, fix)


def _declared_below(node: DictConfig, declared: set[str]) -> list[str]:
    """A group's declared keys, then the keys of the groups in it ("options.alpha")."""
    nested = [f"{key}.{inner}" for key in sorted(declared) if key in node
              and isinstance(child := node._get_node(key), DictConfig) and not child._is_none()
              for inner in child]
    return sorted(declared) + nested


def _leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in node:
        child = node._get_node(key)
        name = join(prefix, str(key))
        keys += _leaf_keys(child, name) if isinstance(child, DictConfig) else [name]
    return keys
