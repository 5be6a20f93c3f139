"""The rehearsal's model: a randomly initialised model of the recipe model's architecture class,
with its module names, built here from the config.json facts the repository ships
(conf/model/configs/<org>--<name>.json: the hub cannot be reached from here) with few layers and
a small width, and a byte-level BPE tokenizer (Qwen2's pre-tokenizer, merges learned from the
recipes' kind of text) with the recipe model's special tokens in their order, its eos/pad and a
chat template of its format. A vision-language recipe gets its processor too (the image
processor's PIL backend: no torchvision)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from riskpo.options import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # launch/config.py's (no Hydra here)
FACTS_DIR = CONF_DIR / "model" / "configs"
BUILD_VERSION = 1  # bump when what build_model writes changes (the cache key holds it)

CHAT_TEMPLATES = {
    # Qwen2.5's ChatML, its default system message when the messages bring none
    "chatml": (
        "{%- if messages[0]['role'] == 'system' %}"
        "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
        "{%- else %}{{- '<|im_start|>system\\n' + DEFAULT_SYSTEM + '<|im_end|>\\n' }}{%- endif %}"
        "{%- for message in messages %}{%- if not (loop.first and message['role'] == 'system') %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"),
    # DeepSeek-R1-Distill: bos, the system text bare, <｜User｜>/<｜Assistant｜> turns, and a
    # generation prompt that opens the reasoning block
    "deepseek_r1": (
        "{{ bos_token }}{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{%- endif %}"
        "{%- for message in messages %}{%- if message['role'] == 'user' %}"
        "{{ '<｜User｜>' + message['content'] }}{%- elif message['role'] == 'assistant' %}"
        "{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{%- endif %}"),
}
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "vision_start_token_id",
                 "vision_end_token_id", "vision_token_id", "image_token_id", "video_token_id")


@dataclass(frozen=True)
class ModelFacts:
    """A hub model's published config.json and tokenizer facts (conf/model/configs/)."""

    hub_id: str
    config: dict[str, Any]
    tokenizer: dict[str, Any]
    path: Path

    @property
    def is_vision(self) -> bool:
        return self.config.get("vision_config") is not None


@dataclass(frozen=True)
class ModelScale:
    """What the rehearsal shrinks (head_dim 64: vLLM's CPU attention wants >= 64)."""

    num_layers: int = 2
    hidden_size: int = 128
    num_heads: int = 2
    num_kv_heads: int = 1
    intermediate_size: int = 384
    bpe_vocab: int = 1024  # byte-level merges up to this many tokens, then the special tokens
    vision: dict[str, int] = field(default_factory=lambda: {
        "depth": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128})


def facts_file(hub_id: str) -> Path:
    return FACTS_DIR / f"{hub_id.replace('/', '--')}.json"


def model_facts(hub_id: str, key: str = "model.path") -> ModelFacts:
    """The shipped facts of a hub model; a ConfigError naming `key` when none are shipped."""
    path = facts_file(hub_id)
    if not path.is_file():
        known = sorted(p.stem.replace("--", "/") for p in FACTS_DIR.glob("*.json"))
        raise ConfigError(key, f"no config.json facts are shipped for {hub_id!r} (the rehearsal "
                          "builds a random model of its architecture from them)",
                          f"add {path.relative_to(CONF_DIR.parent)} (its config.json and tokenizer "
                          f"facts by hand), or rehearse one of {', '.join(known)}")
    raw = json.loads(path.read_text())
    return ModelFacts(raw["hub_id"], raw["config"], raw["tokenizer"], path)


def scaled_config_dict(facts: ModelFacts, scale: ModelScale | None, token_ids: dict[str, int],
                       vocab_size: int) -> dict[str, Any]:
    """The recipe model's config.json with its sizes scaled (scale None: kept, vocabulary
    too); architecture, module layout, rope, tie_word_embeddings and the rest kept. Token ids
    follow the rehearsal tokenizer."""
    config = json.loads(json.dumps(facts.config))
    first = facts.tokenizer["first_special_id"]
    for name in TOKEN_ID_KEYS:
        if isinstance(config.get(name), int) and config[name] >= first:
            config[name] = token_ids[facts.tokenizer["special_tokens"][config[name] - first]]
    if scale is None:
        return config
    config.update(hidden_size=scale.hidden_size, intermediate_size=scale.intermediate_size,
                  num_hidden_layers=scale.num_layers, num_attention_heads=scale.num_heads,
                  num_key_value_heads=scale.num_kv_heads, vocab_size=vocab_size,
                  max_window_layers=min(config.get("max_window_layers", scale.num_layers), scale.num_layers))
    rope = config.get("rope_scaling") or {}
    if "mrope_section" in rope:  # M-RoPE's sections split head_dim / 2 in the recipe's proportions
        half, section = scale.hidden_size // scale.num_heads // 2, rope["mrope_section"]
        scaled = [part * half // sum(section) for part in section]
        scaled[-1] += half - sum(scaled)
        config["rope_scaling"] = {**rope, "mrope_section": scaled}
    if facts.is_vision:
        vision = dict(config["vision_config"])
        depth = scale.vision["depth"]
        vision.update({name: value for name, value in scale.vision.items()},
                      out_hidden_size=scale.hidden_size, fullatt_block_indexes=[depth - 1])
        config["vision_config"] = vision
    return config


def build_tokenizer(facts: ModelFacts, bpe_vocab: int, texts: list[str]) -> Any:
    """A byte-level BPE tokenizer in Qwen2's class (its pre-tokenizer and byte-level decoding),
    merges learned from `texts`, the recipe model's special tokens appended in their order, its
    bos/eos/pad tokens and a chat template of its format."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer

    spec = facts.tokenizer
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=bpe_vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    learned = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(vocab=learned["vocab"], merges=[tuple(pair) for pair in learned["merges"]],
                               unk_token=None, bos_token=None, eos_token=None, pad_token=None)
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)
                          for token in spec["special_tokens"]], special_tokens=True)
    tokenizer.add_special_tokens({name: spec[name] for name in ("bos_token", "eos_token", "pad_token")
                                  if spec.get(name)})
    template = CHAT_TEMPLATES[spec["chat_format"]]
    tokenizer.chat_template = template.replace("DEFAULT_SYSTEM", json.dumps(spec.get("default_system", "")))
    return tokenizer


def build_model(facts: ModelFacts, scale: ModelScale | None, texts: list[str], out_dir: Path) -> Path:
    """Writes the scaled random model (scale None: at the recipe model's full size and
    vocabulary) in bf16 safetensors, as the hub's, with its tokenizer, generation config and (a
    VLM) processor to out_dir; returns out_dir."""
    import torch
    from transformers import CONFIG_MAPPING, GenerationConfig

    from riskpo.models.vlm import policy_model_class

    tokenizer = build_tokenizer(facts, (scale or ModelScale()).bpe_vocab, texts)
    token_ids = {token: tokenizer.convert_tokens_to_ids(token) for token in facts.tokenizer["special_tokens"]}
    vocab_size = -(-len(tokenizer) // 64) * 64  # padded, as the hub's 151,936 pads 151,665 tokens
    raw = scaled_config_dict(facts, scale, token_ids, vocab_size)
    config = CONFIG_MAPPING[raw["model_type"]].from_dict(raw)
    torch.manual_seed(0)
    model = policy_model_class(config).from_config(config, dtype=torch.bfloat16)
    eos = [token_ids[token] for token in facts.tokenizer["generation_eos_tokens"]]
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=tokenizer.bos_token_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    if facts.is_vision:
        _processor(facts, tokenizer).save_pretrained(out_dir)
    else:
        tokenizer.save_pretrained(out_dir)
    return out_dir


def _processor(facts: ModelFacts, tokenizer: Any) -> Any:
    """Qwen2.5-VL's processor: the image processor's PIL backend with the hub's pixel bounds,
    the video processor with the hub's patch layout (transformers requires one; it imports
    torchvision), the rehearsal tokenizer and the chat template."""
    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    pixels = facts.tokenizer["image_processor"]
    layout = {key: pixels[key] for key in ("patch_size", "merge_size", "temporal_patch_size")}
    image_processor = Qwen2VLImageProcessorPil(min_pixels=pixels["min_pixels"], max_pixels=pixels["max_pixels"],
                                               **layout)
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=Qwen2VLVideoProcessor(**layout),
                               chat_template=tokenizer.chat_template)


def rehearsal_model_dir(facts: ModelFacts, scale: ModelScale, texts: list[str], cache: Path) -> Path:
    """The scaled model's directory under `cache`, built once per (facts, scale, corpus) and
    moved into place whole, so concurrent rehearsals never see half a model."""
    key = hashlib.sha256(json.dumps([BUILD_VERSION, facts.config, facts.tokenizer, repr(scale), texts],
                                    sort_keys=True).encode()).hexdigest()[:16]
    target = cache / f"{facts.hub_id.replace('/', '--')}-{key}"
    if (target / "config.json").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache))
    try:
        build_model(facts, scale, texts, staging)
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").is_file():  # not another process's finished copy
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
