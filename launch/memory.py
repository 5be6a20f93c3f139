"""Memory per GPU of a run, from the code's real buffers: what one learner rank holds all step
(DeepSpeed's weights, master weights, Adam states and gradient buffers per ZeRO stage), what a
micro-batch adds at its peak (the activations each decoder layer saves, with and without
gradient checkpointing; the loss's vocabulary-wide copies of the logits; DeepSpeed's reduce
bucket during the backward), and the rollout engine's share of the GPU when colocated, awake
and asleep. launch/rehearse/probe.py measures the same buffers through the learner's code, and
every rehearsal prints the two side by side; bench/gpu_check.py does it on a GPU.

    python -m launch.memory            # docs/cluster.md's table, for the GPU recipes

Imports only torch and transformers (for a model's parameter count), so it runs anywhere the
learner does.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

GIB = 1 << 30
GPU_MEMORY_BYTES = int(79.2 * GIB)  # an 80 GB H100/A100 as torch.cuda reports its total
# DeepSpeed 0.19.8's zero_optimization defaults (deepspeed/runtime/zero/config.py), used where
# the learner's DeepSpeed config sets none (workers/learner/deepspeed_backend.py)
DEEPSPEED_REDUCE_BUCKET = int(5e8)
DEEPSPEED_ALLGATHER_BUCKET = int(5e8)

# The learner's copies of the logits (workers/learner/logits.py _chunk_stats): log-probs and
# entropy come from the final hidden states in chunks of learner.logit_chunk_tokens response
# tokens (LOGIT_CHUNK_TOKENS, ZeRO-3: one chunk a micro-batch), each chunk checkpointed, so at
# most one chunk's vocabulary-wide buffers exist at once. Bytes per chunk token per vocabulary
# entry at their peak, for bf16 logits (fp32 logits: .float() is the logits themselves);
# tests/launch/test_rehearse_memory.py measures them on the code.
# Training (with the entropy): the output layer's logits (2) and their fp32 copy divided by the
# temperature (4) stay while the entropy takes max-shifted logits (4), their softmax (4), the
# -inf test (1), zeros_like (4) and where's result (4).
TRAIN_LOGITS_BYTES = {"bfloat16": 23, "float32": 25.5}
# Log-prob passes without gradients (old / reference log-probs, no entropy): logits (2),
# .float() (4) and its division by the temperature (4) (fp32: 4 + 4, and logsumexp's
# temporary 4).
NO_GRAD_LOGITS_BYTES = {"bfloat16": 10, "float32": 12.5}
COMPUTE_BYTES = {"bfloat16": 2, "float32": 4}


@dataclass(frozen=True)
class TextShape:
    """A decoder's sizes (config.json's text part)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int


@dataclass(frozen=True)
class VisionShape:
    """A Qwen2-VL-style vision tower: blocks over patches, merge x merge patches per image token."""

    depth: int
    hidden: int
    intermediate: int
    heads: int
    merge: int


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    text: TextShape
    vision: VisionShape | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """From a config.json dict; the parameter count from the model built on the meta device."""
        import torch
        from transformers import CONFIG_MAPPING

        from riskpo.models.vlm import policy_model_class

        built = CONFIG_MAPPING[config["model_type"]].from_dict(dict(config))
        with torch.device("meta"):
            model = policy_model_class(built).from_config(built)
        parameters = sum(p.numel() for p in model.parameters())
        text = built.get_text_config()
        heads = text.num_attention_heads
        shape = TextShape(text.num_hidden_layers, text.hidden_size, text.intermediate_size, heads,
                          text.num_key_value_heads, getattr(text, "head_dim", None) or text.hidden_size // heads,
                          text.vocab_size)
        vision = getattr(built, "vision_config", None)
        if vision is None:
            return cls(parameters, shape)
        return cls(parameters, shape, VisionShape(vision.depth, vision.hidden_size, vision.intermediate_size,
                                                  vision.num_heads, vision.spatial_merge_size))


@dataclass(frozen=True)
class LearnerShape:
    """One rank of the learner: ranks, ZeRO stage, dtype, checkpointing, the micro-batch's
    padded tokens (the token budget) and DeepSpeed's bucket sizes."""

    ranks: int
    zero_stage: int
    dtype: str
    checkpointing: bool
    micro_batch_tokens: int
    reduce_bucket: int = DEEPSPEED_REDUCE_BUCKET
    allgather_bucket: int = DEEPSPEED_ALLGATHER_BUCKET
    overlap_comm: bool = False
    image_token_share: float = 0.0  # of a micro-batch's tokens, at most (a VLM's)
    logit_chunk_tokens: int = 512  # learner.logit_chunk_tokens
    adapters: AdapterShape | None = None  # model.lora's adapters (None: full fine-tuning)

    @property
    def chunk_tokens(self) -> int:
        """Tokens whose vocabulary-wide logits exist at once: a chunk, or under ZeRO-3 the
        whole micro-batch (each call of the output layer gathers its weight, a collective, so
        the learner makes one a micro-batch: workers/learner/deepspeed_backend.py)."""
        if self.zero_stage == 3:
            return self.micro_batch_tokens
        return min(self.logit_chunk_tokens, self.micro_batch_tokens)

    @property
    def trained(self) -> int | None:
        """Parameters with gradients and optimizer state: the adapters' (None: all of them)."""
        return None if self.adapters is None else self.adapters.parameters

    @classmethod
    def from_config(cls, learner: Any, image_token_share: float = 0.0,
                    adapters: AdapterShape | None = None) -> LearnerShape:
        """From a LearnerConfig, with the bucket sizes of the DeepSpeed config the learner
        builds from it (workers/learner/deepspeed_backend.deepspeed_config)."""
        zero = _deepspeed_zero_config(learner)
        stage = learner.zero_stage
        return cls(learner.num_ranks, stage, learner.dtype, learner.gradient_checkpointing,
                   learner.micro_batch_token_budget,
                   int(zero.get("reduce_bucket_size", DEEPSPEED_REDUCE_BUCKET)),
                   int(zero.get("allgather_bucket_size", DEEPSPEED_ALLGATHER_BUCKET)),
                   bool(zero.get("overlap_comm", stage == 3)), image_token_share,
                   learner.logit_chunk_tokens, adapters)


@dataclass(frozen=True)
class AdapterShape:
    """LoRA adapters (model.lora): their parameters (rank x (in + out) per adapted Linear),
    how many Linear modules carry one per decoder layer, the rank, and the widest adapted
    output (the largest out_features: PEFT's unmerged forward holds one more tensor that wide)."""

    parameters: int
    modules_per_layer: int
    rank: int
    widest_output: int = 0

    @classmethod
    def from_config(cls, config: dict[str, Any], lora: Any) -> AdapterShape:
        """On the model built on the meta device from its config.json dict."""
        import torch
        from transformers import CONFIG_MAPPING

        from riskpo.models.lora import lora_target_names
        from riskpo.models.vlm import policy_model_class

        built = CONFIG_MAPPING[config["model_type"]].from_dict(dict(config))
        with torch.device("meta"):
            model = policy_model_class(built).from_config(built)
        targets = lora_target_names(model, lora)
        modules = dict(model.named_modules())
        parameters = sum(lora.rank * (modules[name].in_features + modules[name].out_features) for name in targets)
        return cls(parameters, len(targets) // built.get_text_config().num_hidden_layers, lora.rank,
                   max(modules[name].out_features for name in targets))


def _deepspeed_zero_config(learner: Any) -> dict[str, Any]:
    from workers.learner.config import LearnerSpec
    from workers.learner.deepspeed_backend import deepspeed_config

    return deepspeed_config(LearnerSpec(config=learner, device="gpu"), learner.num_ranks)["zero_optimization"]


@dataclass(frozen=True)
class EngineShape:
    """The rollout engine beside a learner rank: its kind, whether it shares the GPU, its
    share while awake (vLLM: gpu_memory_utilization of the GPU) and its dtype."""

    engine: str
    colocated: bool
    gpu_memory_utilization: float
    dtype_bytes: int = 2


@dataclass(frozen=True)
class Term:
    name: str
    bytes: int
    formula: str


@dataclass
class MemoryEstimate:
    """Bytes per GPU: the learner's state held all step, a micro-batch's peak on top of it,
    and the engine's share awake and asleep."""

    state: list[Term] = field(default_factory=list)
    micro_batch: list[Term] = field(default_factory=list)
    no_grad_pass: list[Term] = field(default_factory=list)
    engine_awake: Term | None = None
    engine_asleep: Term | None = None

    @property
    def state_bytes(self) -> int:
        return sum(t.bytes for t in self.state)

    @property
    def micro_batch_bytes(self) -> int:
        return sum(t.bytes for t in self.micro_batch)

    @property
    def peak_training(self) -> int:
        asleep = self.engine_asleep.bytes if self.engine_asleep else 0
        return self.state_bytes + self.micro_batch_bytes + asleep

    @property
    def peak_generating(self) -> int:
        return self.state_bytes + (self.engine_awake.bytes if self.engine_awake else 0)


def state_terms(model: ModelShape, learner: LearnerShape, after_step: bool = True) -> list[Term]:
    """What a rank holds from initialisation on (DeepSpeed 0.19.8, torch AdamW): the module's
    weights in the learner's dtype (ZeRO-3: this rank's partition), the fp32 master partition
    (bf16, or any ZeRO stage: a copy), Adam's m and v (after the first update), and ZeRO-3's
    reduce bucket (allocated at initialisation). With LoRA the weights are the frozen base's
    and the adapters' (P + A), and master weights, Adam and gradients are the adapters' alone (A)."""
    p, r, stage = model.parameters, learner.ranks, learner.zero_stage
    share = 1 if stage == 0 else r
    width = COMPUTE_BYTES[learner.dtype]
    a, n = (p, "P") if learner.trained is None else (learner.trained, "A")
    held, held_name = (p, "P") if learner.trained is None else (p + a, "(P + A)")
    terms = [Term("weights", width * held // (r if stage == 3 else 1),
                  f"{width} B x {held_name}" + (" / R" if stage == 3 else ""))]
    if learner.dtype == "bfloat16" or stage >= 1:
        terms.append(Term("fp32 master weights", 4 * a // share, f"4 B x {n}" + (" / R" if share > 1 else "")))
    if after_step or (stage == 0 and learner.dtype == "bfloat16"):  # BF16_Optimizer makes them at init
        terms.append(Term("Adam m and v (fp32)", 8 * a // share, f"8 B x {n}" + (" / R" if share > 1 else "")))
    if stage == 3:
        terms.append(Term("ZeRO-3 gradient partition", width * a // r, f"{width} B x {n} / R"))
        terms.append(Term("ZeRO-3 reduce bucket", width * learner.reduce_bucket,
                          f"{width} B x reduce_bucket_size {learner.reduce_bucket:.0e}"))
    return terms


def layer_activation_bytes(text: TextShape, width: int) -> int:
    """Bytes per token one decoder layer saves for its backward without checkpointing
    (transformers' Qwen2/Llama layer, SDPA attention): each RMSNorm its fp32 input and output
    (2 x (4h + w h)), the projections' inputs as the CPU's bf16 linear copies them (2 x w h),
    q after RoPE (w h), k and v (2 w kv), attention's logsumexp (4 heads), the attention output
    into o_proj (w h), and the MLP's gate, SiLU, up and product (4 w i)."""
    h, kv = text.hidden, text.kv_heads * text.head_dim
    return 2 * (4 * h + 4 + width * h) + 2 * width * h + width * h + 2 * width * kv + 4 * text.heads \
        + width * h + 4 * width * text.intermediate


TAIL_TERM = "final norm and LM head input"


def activation_terms(model: ModelShape, learner: LearnerShape) -> list[Term]:
    """The micro-batch's saved activations: every layer's (above), or with checkpointing each
    layer's input plus one layer recomputed in the backward; the final norm and LM head's input;
    a VLM's vision blocks over the image tokens' patches."""
    text, tokens, width = model.text, learner.micro_batch_tokens, COMPUTE_BYTES[learner.dtype]
    layer = layer_activation_bytes(text, width)
    if learner.adapters is not None:  # frozen projections keep no copy of their inputs (measured
        layer -= 2 * width * text.hidden  # with saved-tensor hooks: tests/launch/test_rehearse_memory.py)
    if learner.checkpointing:
        saved = Term("activations (checkpointed)", tokens * (text.layers * width * text.hidden + layer),
                     f"T x ({text.layers} layers x {width} B x h + one layer recomputed {layer} B)")
    else:
        saved = Term("activations", tokens * text.layers * layer, f"T x {text.layers} layers x {layer} B")
    tail = Term(TAIL_TERM, tokens * (4 * text.hidden + 4 + 2 * width * text.hidden + 8),
                "T x (4h + 2 w h + ids)")
    terms = [saved, tail]
    if learner.adapters is not None:  # each adapter's A x, saved for B's backward
        per_token = learner.adapters.modules_per_layer * learner.adapters.rank * width
        layers = 1 if learner.checkpointing else text.layers
        terms.append(Term("LoRA A outputs", tokens * layers * per_token,
                          f"T x {layers} layers x {learner.adapters.modules_per_layer} modules x "
                          f"rank {learner.adapters.rank} x {width} B"))
    if model.vision is not None and learner.image_token_share > 0:
        terms.append(_vision_term(model.vision, learner, width))
    return terms


def _vision_term(vision: VisionShape, learner: LearnerShape, width: int) -> Term:
    patches = int(learner.micro_batch_tokens * learner.image_token_share) * vision.merge ** 2
    block = layer_activation_bytes(TextShape(1, vision.hidden, vision.intermediate, vision.heads,
                                             vision.heads, vision.hidden // vision.heads, 1), width)
    per_patch = vision.depth * width * vision.hidden + block if learner.checkpointing else vision.depth * block
    return Term("vision tower activations", patches * per_patch,
                f"{patches} patches ({learner.image_token_share:.2f} of T as image tokens x "
                f"{vision.merge}^2) x {per_patch} B")


def micro_batch_terms(model: ModelShape, learner: LearnerShape) -> list[Term]:
    """A micro-batch's peak on top of the state: its activations (with checkpointing, the
    backward's peak comes after the final norm freed its input), ZeRO-2's gradient partition
    (held from the mini-batch's first backward to its update), and the larger of what the
    forward's end adds (one chunk's logits copies; without checkpointing, the model's hidden
    states it returns) and DeepSpeed's reduce bucket with the norms' backward temporaries (the
    backward, from the first gradient on)."""
    text, tokens, width = model.text, learner.micro_batch_tokens, COMPUTE_BYTES[learner.dtype]
    terms = activation_terms(model, learner)
    if learner.zero_stage == 2:
        trained, name = (model.parameters, "P") if learner.trained is None else (learner.trained, "A")
        terms.append(Term("gradient partition", width * trained // learner.ranks, f"{width} B x {name} / R"))
    coefficient = TRAIN_LOGITS_BYTES[learner.dtype]
    forward = [Term("logits copies of a chunk", int(coefficient * learner.chunk_tokens * text.vocab),
                    f"{coefficient} B x {learner.chunk_tokens} chunk tokens x V")]
    if not learner.checkpointing:
        forward.append(Term("hidden states returned", tokens * text.layers * width * text.hidden,
                            f"T x {text.layers} layers x {width} B x h"))
    backward = [Term("norm backward temporaries", 16 * text.hidden * tokens, "T x 16h")]
    if learner.zero_stage in (1, 2):
        copies = 2 if learner.overlap_comm else 1
        backward.insert(0, Term("reduce bucket (backward)", copies * width * learner.reduce_bucket,
                                f"{copies} x {width} B x reduce_bucket_size {learner.reduce_bucket:.0e}"))
    if learner.adapters is not None and learner.zero_stage == 3:  # the chunk's logits kept for
        return [*terms, *forward, *backward]  # the backward (DeepSpeedBackend.recompute_logit_chunks)
    # with checkpointing the backward's peak is the last layer's recomputation, after the final
    # norm's backward has freed its input; with LoRA the reduce bucket comes with the first
    # adapter's gradient, also past the frozen output (measured: tests/launch/test_rehearse_memory.py)
    past_tail = learner.checkpointing or learner.adapters is not None
    backward_terms = [t for t in terms if t.name != TAIL_TERM] if past_tail else terms
    if sum(t.bytes for t in [*terms, *forward]) >= sum(t.bytes for t in [*backward_terms, *backward]):
        return [*terms, *forward]
    return [*backward_terms, *backward]


def no_grad_terms(model: ModelShape, learner: LearnerShape) -> list[Term]:
    """The old (and reference) log-prob passes: the larger of a layer's forward (the MLP's
    SiLU, up and product, 3 w i, beside the hidden states the model collects, the residual and
    its norm, (L + 2) w h) and the output's end (the L + 1 hidden states and one chunk's
    logits copies, no entropy)."""
    text, tokens, width = model.text, learner.micro_batch_tokens, COMPUTE_BYTES[learner.dtype]
    coefficient = NO_GRAD_LOGITS_BYTES[learner.dtype]
    # with LoRA each adapted Linear's output is the base's plus the adapter's, summed into a
    # new tensor: beside the MLP's three, one more as wide as the widest adapted output
    lora = 0 if learner.adapters is None else width * learner.adapters.widest_output
    layer = Term("a layer's forward (no grad)",
                 tokens * (3 * width * text.intermediate + lora + (text.layers + 2) * width * text.hidden),
                 f"T x (3 w i + {text.layers + 2} w h" + (f" + w x {learner.adapters.widest_output} (LoRA sum))"
                                                          if lora else ")"))
    output = Term("hidden states and a chunk's logits (no grad)",
                  tokens * (text.layers + 1) * width * text.hidden
                  + int(coefficient * learner.chunk_tokens * text.vocab),
                  f"T x {text.layers + 1} w h + {coefficient} B x {learner.chunk_tokens} x V")
    return [max(layer, output, key=lambda term: term.bytes)]


def engine_terms(model: ModelShape, engine: EngineShape, gpu_bytes: int) -> tuple[Term | None, Term | None]:
    """The engine's share of a shared GPU, awake and asleep (None: not colocated). vLLM takes
    gpu_memory_utilization of the GPU (its weights, activations and KV cache) and frees all but
    its allocator's remains when asleep (level 1 moves the weights to CPU memory, level 2 drops
    them); the transformers engine holds its weights and moves them to CPU memory asleep."""
    if not engine.colocated:
        return None, None
    if engine.engine == "vllm":
        awake = Term("vLLM engine", int(engine.gpu_memory_utilization * gpu_bytes),
                     f"gpu_memory_utilization {engine.gpu_memory_utilization} x {gpu_bytes / GIB:.1f} GiB")
        return awake, Term("vLLM engine asleep", 0, "weights offloaded or dropped, KV cache freed")
    awake = Term("transformers engine", engine.dtype_bytes * model.parameters, f"{engine.dtype_bytes} B x P")
    return awake, Term("transformers engine asleep", 0, "weights moved to CPU memory")


def estimate(model: ModelShape, learner: LearnerShape, engine: EngineShape | None = None,
             gpu_bytes: int = GPU_MEMORY_BYTES) -> MemoryEstimate:
    awake, asleep = engine_terms(model, engine, gpu_bytes) if engine else (None, None)
    return MemoryEstimate(state_terms(model, learner), micro_batch_terms(model, learner),
                          no_grad_terms(model, learner), awake, asleep)


def recipe_estimate(run: Any, config: dict[str, Any], gpu_bytes: int = GPU_MEMORY_BYTES) -> MemoryEstimate:
    """The estimate for a run config (RunConfig) of the model whose config.json is `config`."""
    model = ModelShape.from_config(config)
    longest = run.data.max_prompt_length + run.rollout.max_new_tokens
    share = run.data.max_prompt_length / longest if model.vision is not None else 0.0
    engine = EngineShape(run.rollout.engine, run.cluster.colocate, run.rollout.gpu_memory_utilization,
                         COMPUTE_BYTES.get(run.model.dtype, 2))
    adapters = None if run.model.adapters is None else AdapterShape.from_config(config, run.model.adapters)
    return estimate(model, LearnerShape.from_config(run.learner, share, adapters), engine, gpu_bytes)


CHECK_TOLERANCE = 0.05  # the formula against a rehearsal's measured phase (tests hold it to this)


def describe_check(model: ModelShape, learner: LearnerShape, measured: dict[str, Any]) -> str:
    """The formula beside what launch/rehearse/probe.py measured on one rank at the same scale:
    the state after initialisation and after the update, and each phase's peak above its start."""
    phases = measured["phases"]
    rows = [
        ("state after initialisation", state_terms(model, learner, after_step=False), phases["init"]["end"]),
        ("old log-probs pass (peak above state)", no_grad_terms(model, learner),
         phases["old_logprobs"]["peak"] - phases["old_logprobs"]["before"]),
        ("train step (peak above state)", micro_batch_terms(model, learner),
         phases["train_step"]["peak"] - phases["train_step"]["before"]),
        ("state after the update", state_terms(model, learner), phases["train_step"]["end"]),
    ]
    lines = [f"memory check at the rehearsal's scale (one rank, {measured['micro_batch_tokens']} tokens "
             f"a micro-batch, {model.parameters:,} parameters; MiB): formula vs measured"]
    late_bucket = Term("a reduce bucket released late", COMPUTE_BYTES[learner.dtype] * learner.reduce_bucket,
                       "DeepSpeed frees a micro-batch's bucket when its last gradient view goes, "
                       "at times after the next one's is made")
    for name, terms, actual in rows:
        formula = sum(t.bytes for t in terms)
        after_a_backward = learner.zero_stage in (1, 2) and ("step" in name or "update" in name)
        if after_a_backward and not _within(actual, formula) and _within(actual, formula + late_bucket.bytes):
            terms, formula = [*terms, late_bucket], formula + late_bucket.bytes
        lines.append(f"  {name:<40} {formula / 2**20:10.1f} {actual / 2**20:10.1f}   "
                     f"({actual / formula - 1:+.1%}; {', '.join(t.name for t in terms)})")
    return "\n".join(lines)


def _within(actual: int, formula: int) -> bool:
    return abs(actual - formula) <= CHECK_TOLERANCE * formula


def describe_estimate(memory: MemoryEstimate, title: str) -> str:
    """The estimate as lines: each term with its formula, then the two peaks."""
    lines = [f"memory per GPU of {title} (launch/memory.py; GiB):"]
    for heading, terms in (("held all step", memory.state), ("a micro-batch adds", memory.micro_batch)):
        lines.append(f"  {heading}:")
        lines += [f"    {t.name:<34} {t.bytes / GIB:8.2f}   {t.formula}" for t in terms]
    if memory.engine_awake:
        lines.append(f"  {memory.engine_awake.name:<36} {memory.engine_awake.bytes / GIB:8.2f}   "
                     f"{memory.engine_awake.formula}")
    lines.append(f"  peak while training {memory.peak_training / GIB:.1f} GiB, while generating "
                 f"{memory.peak_generating / GIB:.1f} GiB (CUDA context, ~0.5 GiB a process, not counted)")
    return "\n".join(lines)


GPU_RECIPES = ("qwen2.5-1.5b-math", "qwen2.5-1.5b-math-grpo", "r1-distill-1.5b-dapo",
               "r1-distill-1.5b-dapo-grpo", "qwen2.5-vl-3b-geo3k", "qwen2.5-7b-math-lora")
CUDA_CONTEXT_BYTES = GIB // 2  # a process's CUDA context, about


def recipe_table(gpu_bytes: int = GPU_MEMORY_BYTES) -> str:
    """docs/cluster.md's table: each GPU recipe's memory per GPU, computed by this module from
    the recipe's composed config and its model's config.json facts (conf/model/configs/)."""
    from launch.config import compose_config, validate
    from launch.rehearse.models import model_facts

    rows = ["| recipe | model, GPUs | learner state | micro-batch (T tokens) | engine awake | "
            "peak training | peak generating | free at the peak |", "|---|---|---|---|---|---|---|---|"]
    for name in GPU_RECIPES:
        run = validate(_without_files(compose_config([f"experiment={name}"])))
        config = model_facts(run.model.path).config
        memory = recipe_estimate(run, config, gpu_bytes)
        model = ModelShape.from_config(config)
        awake = memory.engine_awake.bytes if memory.engine_awake else 0
        free = gpu_bytes - CUDA_CONTEXT_BYTES - max(memory.peak_training, memory.peak_generating)
        rows.append(f"| `{name}` | {model.parameters / 1e9:.2f}B, {run.learner.num_ranks} | "
                    f"{memory.state_bytes / GIB:.1f} | {memory.micro_batch_bytes / GIB:.1f} "
                    f"({run.learner.micro_batch_token_budget}) | {awake / GIB:.1f} | "
                    f"{memory.peak_training / GIB:.1f} | {memory.peak_generating / GIB:.1f} | {free / GIB:.1f} |")
    return "\n".join(rows)


def _without_files(cfg: Any) -> Any:
    """A recipe's config with its data splits pointed at nothing that must exist (the table
    needs only its shapes): the rehearsal's rows stand in where the recipe's files are absent."""
    from launch.rehearse.data import substitute_missing_data

    substitute_missing_data(cfg)
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu-memory-gib", type=float, default=GPU_MEMORY_BYTES / GIB)
    args = parser.parse_args(argv)
    print(recipe_table(int(args.gpu_memory_gib * GIB)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
