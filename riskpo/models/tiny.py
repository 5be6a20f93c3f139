"""Models without a hub: a character tokenizer, tiny randomly initialised Llama/Qwen2 models,
and a tiny LLaVA-style vision-language model (a small CLIP vision tower and a projector in front
of the tiny Llama, with its processor)."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from riskpo.data.rows import IMAGE_PLACEHOLDER
from riskpo.models.config import TINY_ARCHS, TINY_VISION_ARCHS, TinyVisionConfig
from riskpo.models.vlm import policy_model_class

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
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config  # model code: ~3 s

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
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

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
