"""Where LoRA adapters go (model.lora): the full names of the Linear modules of the policy's
language model whose last name is one of model.lora.target_modules, found on the model itself or,
at start-up, on a copy built on the meta device from its config (no weights read), so a target
the model does not have is refused before any worker starts. A vision-language model's vision
tower and projector get no adapters: they stay frozen at their loaded weights."""

from __future__ import annotations

import torch
from transformers import AutoConfig, PreTrainedModel

from riskpo.models.config import LoraConfig
from riskpo.models.vlm import policy_model_class
from riskpo.options import ConfigError


def lora_target_names(model: PreTrainedModel, lora: LoraConfig, key: str = "model.lora") -> list[str]:
    """The full names of the language model's Linear modules the adapters go on; a ConfigError
    naming `key`.target_modules when one of them matches no Linear module there."""
    decoder = model.get_decoder()
    prefix = next(name for name, module in model.named_modules() if module is decoder)
    linear = [name for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and name.startswith(f"{prefix}.")]
    wanted = set(lora.target_modules)
    missing = sorted(wanted - {name.rpartition(".")[2] for name in linear})
    if missing:
        known = sorted({name.rpartition(".")[2] for name in linear})
        raise ConfigError(f"{key}.target_modules",
                          f"{missing} are no Linear modules of {type(model).__name__}'s language model",
                          f"choose among {known}")
    return [name for name in linear if name.rpartition(".")[2] in wanted]


def check_lora_targets(model_path: str, lora: LoraConfig, key: str = "model.lora") -> list[str]:
    """lora_target_names on the model at model_path built on the meta device from its config."""
    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = policy_model_class(config).from_config(config)
    return lora_target_names(model, lora, key)
