"""LoRA in the learner (model.lora): the policy wrapped by PEFT with adapters on its language
model's Linear modules (riskpo/models/lora.py), everything else frozen; the weights as the
engines hold them, in HF names, with each adapter merged into its base weight out of place
(W + scaling B A computed in float32 into a new tensor: the base weight is never written, so
no bf16 merge-and-unmerge round trip drifts it); and the adapter tensors alone, in PEFT's names,
for the adapter sync and the adapter directory of an export.

The reference model of a KL term is the same module with its adapters disabled
(PeftModel.disable_adapter): the base weights, not a second copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import peft
import torch
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel

from riskpo.models.config import LoraConfig
from riskpo.models.lora import lora_target_names

ADAPTER = "default"  # PEFT's name of the one adapter
ADAPTER_SUBDIR = "adapter"  # the PEFT adapter directory inside an HF export (beside the merged model)


def attach_lora(model: PreTrainedModel, lora: LoraConfig) -> peft.PeftModel:
    """The model with adapters on its language model's target Linear modules (B = 0: the
    policy starts as the base model); only the adapters require gradients."""
    config = peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=lora_target_names(model, lora), bias="none")
    return peft.get_peft_model(model, config)


@dataclass
class WeightGroup:
    """The weights of one module, gathered together under ZeRO-3: its own parameters in HF
    names and, for a LoRA layer, the adapter to merge into its base weight."""

    named: list[tuple[str, torch.nn.Parameter]]
    lora: LoraLayer | None = None

    @property
    def to_gather(self) -> list[torch.nn.Parameter]:
        params = [param for _, param in self.named]
        if self.lora is not None:
            params += [self.lora.lora_A[ADAPTER].weight, self.lora.lora_B[ADAPTER].weight]
        return params

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The group's weights as an engine loads them (gathered first under ZeRO-3)."""
        for name, param in self.named:
            if self.lora is None or not name.endswith(".weight"):
                yield name, param.data
            else:
                yield name, merged_weight(self.lora, param.data)


def merged_weight(layer: LoraLayer, base: torch.Tensor) -> torch.Tensor:
    """base + scaling B A, a new tensor in base's dtype (the sum taken in float32)."""
    a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
    delta = (b.data.float() @ a.data.float()) * layer.scaling[ADAPTER]
    return (base.float() + delta).to(base.dtype)


def weight_groups(model: torch.nn.Module) -> Iterator[WeightGroup]:
    """The parameters of model.named_parameters(), in its order and names, grouped by the module
    that owns them (tied parameters once, under their first name); inside a model with LoRA
    layers each such layer is one group named as the layer it replaced (q_proj.weight, not
    q_proj.base_layer.weight) carrying its adapter, whose own tensors are not listed."""
    seen: set[int] = set()
    inside: str | None = None  # the LoRA layer whose submodules are being passed over
    for prefix, module in model.named_modules():
        if inside is not None and prefix.startswith(f"{inside}."):
            continue
        inside = None
        owner = module
        if isinstance(module, LoraLayer):
            inside, owner = prefix, module.get_base_layer()
        named = []
        for local_name, param in owner.named_parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                named.append((f"{prefix}.{local_name}" if prefix else local_name, param))
        if named:
            yield WeightGroup(named, module if inside is not None else None)


def adapter_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The adapters' parameters in the model's names: a PeftModel's for an export
    (base_model.model....lora_A.default.weight), the transformers model's inside it for a sync
    (model.layers.0.self_attn.q_proj.lora_A.default.weight: where an engine that injects the
    same adapter into its own transformers model has them)."""
    return [(name, param) for name, param in model.named_parameters() if param.requires_grad]


def adapter_options(model: peft.PeftModel) -> dict[str, Any]:
    """The adapter's PEFT options an engine rebuilds it from (a sync's manifest carries them)."""
    config = model.peft_config[ADAPTER]
    return {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules)}
