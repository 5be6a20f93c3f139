"""Vision-language models on both sides of a step: which model class a checkpoint is, its
processor, and how a multimodal prompt (riskpo.messages.Prompt with images) becomes model
inputs. The rollout engines, the learner and the driver's prompt-length check all render
image prompts here, so the image tokens they count are the same.

A prompt's text carries one "<image>" placeholder per image (the row format's). Rendering puts
the model's own image text there (LLaVA: "<image>"; Qwen2-VL: "<|vision_start|><|image_pad|>
<|vision_end|>"), and the processor expands each into as many image tokens as the vision
encoder makes features for that image. Pixel inputs are the image processor's outputs for the
images in prompt order, concatenated over rows along the first dimension: the layout every
transformers VLM (LLaVA's [images, 3, H, W], Qwen2-VL's flattened patches with image_grid_thw)
reads them in.
"""

from __future__ import annotations

import inspect
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from riskpo.data.rows import IMAGE_PLACEHOLDER
from riskpo.messages import Prompt, render_prompt

# The text one image is in a model's prompt before the processor expands it, where it is not
# the processor's bare image token.
IMAGE_TEXT_BY_MODEL_TYPE = {
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
}
# The policy of a VLM never writes its image token: it marks where image features go, and one
# in a response would be taken for an image slot when the learner recomputes log-probs. The
# engines suppress it when sampling and the learner masks its logit the same way, so both see
# one distribution (suppressed_token_ids, mask_suppressed).
# forward() arguments derived from input_ids (Qwen2-VL's M-RoPE needs to know which tokens are
# image tokens: 1 there, 0 elsewhere)
TOKEN_TYPE_ARGUMENT = "mm_token_type_ids"


@dataclass
class ImagePrompt:
    """A rendered multimodal prompt: token ids with every image's tokens expanded, the decoded
    images (PIL, RGB) in order, the ids before expansion (one image text per image: what vLLM
    takes and expands itself), and the pixel inputs of its images (image_inputs)."""

    token_ids: list[int]
    images: list[Any]
    unexpanded_ids: list[int]
    pixels: dict[str, torch.Tensor]


def decode_image(data: bytes) -> Any:
    """An encoded image as an RGB PIL image (the rows were checked at load time)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def has_vision_config(config: Any) -> bool:
    """True for a vision-language model's config (a transformers config or its dict)."""
    if isinstance(config, dict):
        return config.get("vision_config") is not None
    return getattr(config, "vision_config", None) is not None


@lru_cache(maxsize=32)
def is_vision_model(path_or_hub_id: str) -> bool:
    """Whether the checkpoint is a vision-language model (reads config.json; a hub id is asked
    through AutoConfig)."""
    config_path = Path(path_or_hub_id).expanduser() / "config.json"
    if config_path.is_file():
        return has_vision_config(json.loads(config_path.read_text()))
    from transformers import AutoConfig

    return has_vision_config(AutoConfig.from_pretrained(path_or_hub_id))


def policy_model_class(config: Any) -> Any:
    """The transformers auto class that loads a policy with its language-model head:
    image-text-to-text for a VLM (vision tower included), causal LM otherwise."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    return AutoModelForImageTextToText if has_vision_config(config) else AutoModelForCausalLM


def load_processor(path_or_hub_id: str | Path) -> Any | None:
    """The checkpoint's processor (tokenizer + image processor) for a VLM; None otherwise."""
    if not is_vision_model(str(path_or_hub_id)):
        return None
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path_or_hub_id)


def is_processor(tokenizer_or_processor: Any) -> bool:
    return getattr(tokenizer_or_processor, "image_processor", None) is not None


def text_tokenizer(tokenizer_or_processor: Any) -> Any:
    """The text tokenizer inside a processor, or the tokenizer itself."""
    return getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)


def image_text(processor: Any) -> str:
    """What one image is in the model's prompt text before expansion."""
    model_type = _processor_model_type(processor)
    return IMAGE_TEXT_BY_MODEL_TYPE.get(model_type, processor.image_token)


def prompt_text(prompt: Prompt, processor: Any, index: int = 0) -> str:
    """The prompt's text (messages through the chat template, with a generation prompt) with
    each "<image>" placeholder replaced by the model's image text."""
    if prompt.token_ids is not None or (prompt.text is None) == (prompt.messages is None):
        raise ValueError(f"prompt {index}: an image prompt needs exactly one of text or messages")
    if prompt.text is not None:
        text = prompt.text
    else:
        template_owner = text_tokenizer(processor)
        if not getattr(template_owner, "chat_template", None):
            template_owner = processor
        text = template_owner.apply_chat_template(prompt.messages, add_generation_prompt=True,
                                                  tokenize=False)
    count = text.count(IMAGE_PLACEHOLDER)
    if count != len(prompt.images or []):
        raise ValueError(f"prompt {index}: {len(prompt.images or [])} image(s) but {count} "
                         f"{IMAGE_PLACEHOLDER} placeholder(s)")
    return text.replace(IMAGE_PLACEHOLDER, image_text(processor))


def render_image_prompt(prompt: Prompt, processor: Any, index: int = 0) -> ImagePrompt:
    """Token ids (image tokens expanded by the processor), decoded images and pixel inputs of
    one prompt, from one processor call."""
    text = prompt_text(prompt, processor, index)
    images = [decode_image(data) for data in prompt.images or []]
    expanded = processor(text=[text], images=images, return_tensors="pt")
    unexpanded = text_tokenizer(processor)(text)["input_ids"]
    return ImagePrompt(expanded["input_ids"][0].tolist(), images, list(unexpanded),
                       _image_features(processor, expanded))


def render_image_prompts(prompts: Sequence[Prompt], processor: Any
                         ) -> tuple[list[list[int]], dict[str, torch.Tensor]]:
    """Token ids of each prompt (image tokens expanded) and the pixel inputs of all their
    images in order, from one batched processor call (the warm start's hot path)."""
    texts = [prompt_text(prompt, processor, i) for i, prompt in enumerate(prompts)]
    images = [decode_image(data) for prompt in prompts for data in prompt.images or []]
    out = processor(text=texts, images=images, return_tensors="pt", padding=True)
    token_ids = [row[mask.bool()].tolist() for row, mask in zip(out["input_ids"],
                                                                out["attention_mask"], strict=True)]
    return token_ids, _image_features(processor, out)


def concat_image_inputs(parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pixel inputs of several prompts (or images) in order: each key concatenated along its
    first dimension, the layout the models read (images, or Qwen2-VL's patches)."""
    parts = [part for part in parts if part]
    if not parts:
        return {}
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def render_any_prompt(prompt: Prompt, tokenizer_or_processor: Any, index: int = 0) -> list[int]:
    """Token ids of a prompt with or without images (image tokens expanded): what the
    driver's prompt-length check counts."""
    if prompt.images:
        if not is_processor(tokenizer_or_processor):
            raise ValueError(f"prompt {index} has images, but the model has no image processor "
                             "(model.path is not a vision-language model)")
        return render_image_prompt(prompt, tokenizer_or_processor, index).token_ids
    return render_prompt(prompt, text_tokenizer(tokenizer_or_processor), index)


def training_inputs(processor: Any, prompts: Sequence[Prompt], responses: Sequence[str],
                    ignore_index: int = -100) -> dict[str, torch.Tensor]:
    """Supervised inputs of image prompts with their reference responses (+ EOS), right-padded:
    input_ids, attention_mask, labels (ignore_index outside the responses) and pixel inputs."""
    tokenizer = text_tokenizer(processor)
    prompt_ids, pixels = render_image_prompts(prompts, processor)
    sequences, labels = [], []
    for ids, response in zip(prompt_ids, responses, strict=True):
        response_ids = [*tokenizer.encode(response, add_special_tokens=False), tokenizer.eos_token_id]
        sequences.append(ids + response_ids)
        labels.append([ignore_index] * len(ids) + response_ids)
    width = max(map(len, sequences))
    pad = [tokenizer.pad_token_id]
    return {
        "input_ids": torch.tensor([s + pad * (width - len(s)) for s in sequences]),
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences]),
        "labels": torch.tensor([t + [ignore_index] * (width - len(t)) for t in labels]),
        **pixels,
    }


def generation_inputs(processor: Any, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
    """Left-padded image prompts for model.generate: input_ids, attention_mask, pixel inputs."""
    prompt_ids, pixels = render_image_prompts(prompts, processor)
    width = max(map(len, prompt_ids))
    pad = [text_tokenizer(processor).pad_token_id]
    return {
        "input_ids": torch.tensor([pad * (width - len(ids)) + ids for ids in prompt_ids]),
        "attention_mask": torch.tensor([[0] * (width - len(ids)) + [1] * len(ids)
                                        for ids in prompt_ids]),
        **pixels,
    }


def image_inputs(processor: Any, images: Sequence[Any]) -> dict[str, torch.Tensor]:
    """The image processor's outputs for images (decoded, in prompt order), as the model's
    forward() keyword arguments; empty when there are none."""
    if not images:
        return {}
    return _image_features(processor, processor.image_processor(images=list(images),
                                                                 return_tensors="pt"))


def _image_features(processor: Any, features: Any) -> dict[str, torch.Tensor]:
    """The image-level tensors of a processor's output (its image processor's input names:
    pixel_values, and image_grid_thw or image_sizes where the model has them)."""
    names = processor.image_processor.model_input_names
    return {name: features[name] for name in names
            if name in features and isinstance(features[name], torch.Tensor)}


def token_type_inputs(model: Any, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """forward() arguments some VLMs derive from the token ids (Qwen2-VL's mm_token_type_ids:
    1 at image tokens); empty for models that take none."""
    if TOKEN_TYPE_ARGUMENT not in _forward_parameters(type(model)):
        return {}
    return {TOKEN_TYPE_ARGUMENT: (input_ids == image_token_id(model.config)).int()}


def image_token_id(config: Any) -> int:
    """The id of the image token in a VLM's config (image_token_id or image_token_index)."""
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise ValueError(f"{type(config).__name__} names no image token id")


def suppressed_token_ids(config: Any) -> list[int]:
    """Token ids a policy never samples: a VLM's image token; none for a text model."""
    return [image_token_id(config)] if has_vision_config(config) else []


def mask_suppressed(logits: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """Logits [..., V] with the suppressed tokens at -inf, out of place: probability exactly 0
    in every precision and at any temperature (as the engines' suppression sets them). The
    dtype's lowest finite value would overflow to -inf anyway once divided by a temperature
    below 1; the learner's log-probs and entropy leave -inf entries out
    (riskpo.algo.losses)."""
    if not token_ids:
        return logits
    index = torch.tensor(list(token_ids), device=logits.device)
    return logits.index_fill(-1, index, float("-inf"))


@lru_cache(maxsize=16)
def _forward_parameters(model_class: type) -> frozenset[str]:
    return frozenset(inspect.signature(model_class.forward).parameters)


def _processor_model_type(processor: Any) -> str:
    name = type(processor).__name__.lower()
    if name.startswith("qwen2_5_vl"):
        return "qwen2_5_vl"
    return "qwen2_vl" if name.startswith("qwen2vl") or name.startswith("qwen2_vl") else name
