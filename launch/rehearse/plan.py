"""What a rehearsal changes in a recipe, and why: every setting a CPU can hold is the recipe's;
the model, the sequence and batch sizes, the step count and what only a GPU has are scaled or
replaced, each with one line saying so (`Line`). Pure: a plan is computed from the validated
recipe and the machine's core count, and applied as dotted overrides to the composed config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from launch.config import RunConfig

REHEARSAL_STEPS = 2
REHEARSAL_NEW_TOKENS = 32  # response tokens per sample (the random model rarely stops earlier)
REHEARSAL_EVAL_PROMPTS = 4
MIN_RANKS = 2  # at least two ZeRO ranks over gloo, so partitioning and collectives really run
NON_BUNDLE_PROMPTS = 8


@dataclass(frozen=True)
class Line:
    """One setting of the rehearsal against the recipe: kept, scaled or replaced."""

    kind: str  # kept | scaled | replaced
    key: str
    recipe: Any
    rehearsal: Any
    why: str

    def __str__(self) -> str:
        if self.kind == "kept":
            return f"kept      {self.key} = {self.recipe}: {self.why}"
        return f"{self.kind:<9} {self.key}: {self.recipe} -> {self.rehearsal} ({self.why})"


@dataclass
class RehearsalPlan:
    """The overrides that turn the recipe into its rehearsal, the lines that say what they do,
    and how many simulated GPUs the local Ray cluster advertises (colocation's bundles)."""

    overrides: dict[str, Any] = field(default_factory=dict)
    lines: list[Line] = field(default_factory=list)
    simulated_gpus: int = 0

    def scale(self, key: str, recipe: Any, value: Any, why: str, kind: str = "scaled") -> None:
        self.overrides[key] = value
        self.lines.append(Line(kind, key, recipe, value, why))

    def keep(self, key: str, value: Any, why: str) -> None:
        self.lines.append(Line("kept", key, value, value, why))


def plan_rehearsal(recipe: RunConfig, model_dir: str, model_note: str, cpu_count: int,
                   engine_note: str | None = None) -> RehearsalPlan:
    """The rehearsal of a validated recipe on a machine of cpu_count cores, with the scaled
    model at model_dir (model_note says what was scaled and kept in it). engine_note: why the
    recipe's engine is replaced here (None: it is kept)."""
    plan = RehearsalPlan()
    scaled_model = model_dir != recipe.model.path
    if scaled_model:
        plan.scale("model.path", recipe.model.path, model_dir, model_note)
    else:
        plan.keep("model.path", recipe.model.path, model_note)
    if scaled_model and recipe.model.tokenizer:
        plan.scale("model.tokenizer", recipe.model.tokenizer, None, "the scaled model's directory holds its tokenizer")
    _plan_steps(plan, recipe, scaled_model)
    _plan_workers(plan, recipe, cpu_count, engine_note)
    _plan_learner(plan, recipe)
    _plan_kept(plan, recipe)
    return plan


def _plan_steps(plan: RehearsalPlan, recipe: RunConfig, scaled_model: bool) -> None:
    """Steps, prompts, response length and held-out problems (a model kept as it is keeps its
    held-out split: the tiny models' warm start is cached by it)."""
    t, d, r = recipe.trainer, recipe.data, recipe.rollout
    plan.scale("trainer.total_steps", t.total_steps, REHEARSAL_STEPS, "two steps: the second trains on synced weights")
    plan.scale("trainer.eval_every", t.eval_every, REHEARSAL_STEPS, "the last step evaluates")
    plan.scale("trainer.save_every", t.save_every, REHEARSAL_STEPS, "the last step checkpoints and exports")
    bundle = getattr(recipe.algorithm.options, "bundle_size", None)
    if bundle:
        prompts = bundle + t.prompts_per_step % bundle
        why = (f"one bundle of {bundle} plus the recipe's last bundle of {t.prompts_per_step % bundle}"
               if t.prompts_per_step % bundle else f"one bundle of {bundle}")
    else:
        prompts, why = min(t.prompts_per_step, NON_BUNDLE_PROMPTS), "a few groups"
    if prompts != t.prompts_per_step:
        plan.scale("trainer.prompts_per_step", t.prompts_per_step, prompts, why)
    plan.keep("trainer.samples_per_prompt", t.samples_per_prompt, "the group size the estimator sees")
    if r.max_new_tokens > REHEARSAL_NEW_TOKENS:
        plan.scale("rollout.max_new_tokens", r.max_new_tokens, REHEARSAL_NEW_TOKENS,
                   "responses of a random model; the learner's budget below is the recipe's")
    else:
        plan.keep("rollout.max_new_tokens", r.max_new_tokens, "response tokens")
    if scaled_model and (d.eval.size is None or d.eval.size > REHEARSAL_EVAL_PROMPTS):
        plan.scale("data.eval.size", d.eval.size, REHEARSAL_EVAL_PROMPTS, "held-out problems evaluated")
    plan.keep("data.eval_samples", d.eval_samples, "samples per held-out problem (avg@k, pass@k)")
    plan.keep("data.max_prompt_length", d.max_prompt_length, "checked on every row at load time")


def _plan_workers(plan: RehearsalPlan, recipe: RunConfig, cpu_count: int, engine_note: str | None) -> None:
    c, r, learner = recipe.cluster, recipe.rollout, recipe.learner
    ranks = min(learner.num_ranks, max(MIN_RANKS, cpu_count // 2))
    actors = ranks if c.colocate else min(r.num_actors, ranks)
    for key, recipe_value, value in (("learner.num_ranks", learner.num_ranks, ranks),
                                     ("rollout.num_actors", r.num_actors, actors)):
        if value != recipe_value:
            plan.scale(key, recipe_value, value, f"{cpu_count} cores here; at least {MIN_RANKS} ranks on gloo")
        else:
            plan.keep(key, value, "the recipe's, which the cores allow")
    if engine_note:
        plan.scale("rollout.engine", r.engine, "hf", engine_note, kind="replaced")
    else:
        plan.keep("rollout.engine", r.engine, "the CPU build (.venv-vllm)" if r.engine == "vllm" else "on CPU")
    if r.engine == "vllm" and not engine_note:
        plan.scale("rollout.enforce_eager", r.enforce_eager, True,
                   "vLLM's torch.compile takes minutes on a CPU; the GPU run compiles", kind="replaced")
        plan.keep("rollout.gpu_memory_utilization", r.gpu_memory_utilization,
                  "a GPU's share; on a CPU the KV cache holds the run's sequences (rollout.kv_cache_gib)")
    if c.address:
        plan.scale("cluster.address", c.address, None, "a local Ray cluster on this machine", kind="replaced")
    plan.scale("cluster.device", c.device, "cpu", "actors compute on CPUs; their GPUs are placement labels",
               kind="replaced")
    if c.colocate:
        plan.simulated_gpus = ranks
        plan.keep("cluster.colocate", True,
                  f"rollout actor i and learner rank i share bundle i and its GPU: the local Ray cluster "
                  f"advertises {ranks} simulated GPUs (RAY_OVERRIDE_RESOURCES), so placement is the "
                  "recipe's; the loop puts the engines to sleep and wakes them in the recipe's order")
        plan.keep("rollout.sleep_level", r.sleep_level,
                  "reaches the engines; on a CPU sleeping frees nothing (vLLM has no sleep mode off "
                  "CUDA/ROCm/XPU), it only refuses work until wake_up, as on a GPU")
    else:
        plan.simulated_gpus = int(max(c.rollout_gpus_per_actor * actors, 0) + max(c.learner_gpus_per_rank * ranks, 0))
    plan.keep("cluster.placement_strategy", c.placement_strategy, "one placement group, as on the cluster")


def _plan_learner(plan: RehearsalPlan, recipe: RunConfig) -> None:
    learner = recipe.learner
    for key in ("zero_stage", "dtype", "gradient_checkpointing", "num_mini_batches",
                "micro_batch_token_budget", "lr", "offload"):
        plan.keep(f"learner.{key}", getattr(learner, key), "the recipe's learner")


def _plan_kept(plan: RehearsalPlan, recipe: RunConfig) -> None:
    a = recipe.algorithm
    plan.keep("algorithm.name", a.name, "the estimator and its options")
    plan.keep("algorithm.loss", f"{a.loss.name}, ratio {a.loss.ratio}, clip [{a.loss.clip_low}, "
              f"{a.loss.clip_high}], {a.loss.aggregation}", "the loss")
    plan.keep("data.template", recipe.data.template, "prompts through the model's chat template")
    plan.keep("verifier.num_math_actors", recipe.verifier.num_math_actors, "the math verifier grades every response")
    plan.keep("model.dtype", recipe.model.dtype, "the engines' dtype")
