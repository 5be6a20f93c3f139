"""A LoRA adapter handed to vLLM, which (0.32) loads adapters from a directory: PEFT's layout
(adapter_config.json, adapter_model.safetensors in PEFT's tensor names) written to shared memory
(/dev/shm: RAM, no disk), one directory per weight version, the previous one removed once the
next is written. The engine arguments that enable LoRA at engine start are here too."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

SHARED_MEMORY = Path("/dev/shm")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
PEFT_PREFIX = "base_model.model."  # what PEFT's saved names start with
ADAPTER_NAME = ".default"  # PEFT's adapter name inside a live model's names, absent from saved ones


def lora_engine_args(max_lora_rank: int | None) -> dict[str, Any]:
    """vLLM's arguments for one LoRA adapter of rank up to max_lora_rank (the smallest rank
    limit vLLM offers that holds it); none without LoRA."""
    if not max_lora_rank:
        return {}
    limit = next((rank for rank in VLLM_LORA_RANKS if rank >= max_lora_rank), None)
    if limit is None:
        raise ValueError(f"vLLM takes LoRA ranks up to {VLLM_LORA_RANKS[-1]}, not {max_lora_rank}")
    return {"enable_lora": True, "max_lora_rank": limit, "max_loras": 1}


def peft_saved_name(name: str) -> str:
    """model.layers.0.self_attn.q_proj.lora_A.default.weight -> PEFT's saved name
    base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight."""
    return PEFT_PREFIX + name.replace(ADAPTER_NAME, "")


class AdapterFiles:
    """The adapter directories of one engine; `current` is (directory, version) of the last."""

    def __init__(self, base_model: str) -> None:
        parent = SHARED_MEMORY if SHARED_MEMORY.is_dir() else None
        self.root = Path(tempfile.mkdtemp(prefix="riskpo-lora-", dir=parent))
        atexit.register(shutil.rmtree, self.root, ignore_errors=True)
        self.base_model = base_model
        self.current: tuple[Path, int] | None = None

    def write(self, options: dict[str, Any], weights: Iterable[tuple[str, torch.Tensor]],
              version: int) -> Path:
        directory = self.root / f"v{version}"
        directory.mkdir(exist_ok=False)
        tensors = {peft_saved_name(name): tensor.detach().to("cpu").contiguous().clone()
                   for name, tensor in weights}
        save_file(tensors, directory / "adapter_model.safetensors")
        config = {"peft_type": "LORA", "r": options["r"], "lora_alpha": options["lora_alpha"],
                  "target_modules": list(options["target_modules"]), "lora_dropout": 0.0,
                  "bias": "none", "base_model_name_or_path": self.base_model}
        (directory / "adapter_config.json").write_text(json.dumps(config))
        previous, self.current = self.current, (directory, version)
        if previous is not None:
            shutil.rmtree(previous[0], ignore_errors=True)
        return directory
