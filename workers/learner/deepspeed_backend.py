"""DeepSpeed learner backend: ZeRO 0-3, float32 or bfloat16, gloo on CPU and NCCL on GPU,
a torch AdamW (no JIT-built ops on CPU), optional offload and gradient checkpointing. A
vision-language policy trains whole (vision tower, projector, language model), takes its
micro-batches' pixel inputs in forward, and exports with its processor. With model.lora the
policy carries PEFT adapters on its language model and trains them alone (workers/learner/lora.py):
the optimizer holds their state only, the reference model is the policy with its adapters
disabled, checkpoints hold the adapters and their optimizer state (the frozen base weights are
model_path's), and the engines get the merged weights."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import deepspeed
import deepspeed.ops
import torch
from transformers import AutoTokenizer, PreTrainedModel

from riskpo.models.loading import load_policy
from riskpo.models.vlm import (
    load_processor,
    suppressed_token_ids,
    token_type_inputs,
)
from workers.learner.base import LearnerBackend, ensure_directory
from workers.learner.config import LearnerConfig, LearnerSpec
from workers.learner.lora import (
    ADAPTER_SUBDIR,
    adapter_options,
    adapter_parameters,
    attach_lora,
    weight_groups,
)
from workers.learner.microbatch import MicroBatch
from workers.learner.vision import ImageInputs
from workers.weight_sync import TensorSpec

CHECKPOINT_TAG = "learner"
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# ZeRO 1-2's gradient staging bucket and stage 1-2's parameter all-gather bucket, in elements
# (DeepSpeed's defaults, 5e8 and 5e9, stage up to 2 GB of float32 per rank: all of it on a GPU,
# which commits what it reserves; on a CPU the pages touched, min(bucket, parameters) x 4 B);
# 5e7 elements, 200 MB of float32, moves a 1.5B model's gradients in 30 collectives
BUCKET_ELEMENTS = 50_000_000


def disable_shared_memory_comm_build() -> None:
    """DeepSpeed's CPU accelerator JIT-builds a shared-memory all-reduce op (~40 s) when its
    comm backend starts; marking the op incompatible makes it use plain gloo instead.
    Must run before deepspeed.init_distributed."""
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def deepspeed_config(spec: LearnerSpec, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config for one learner rank (gradient accumulation is driven by the
    caller through the boundary flag, so the batch sizes here are nominal)."""
    config, on_gpu = spec.config, spec.device == "gpu"
    zero: dict[str, Any] = {"stage": config.zero_stage, "contiguous_gradients": True,
                            "reduce_bucket_size": BUCKET_ELEMENTS, "allgather_bucket_size": BUCKET_ELEMENTS}
    if config.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if config.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    ds_config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "gradient_clipping": config.grad_clip,
        "zero_optimization": zero,
        # immediate_grad_update: BF16_Optimizer (below) adds each parameter's bf16 gradient into
        # its float32 accumulator by a hook as soon as the backward produces it, then frees it:
        # the bf16 gradients are never all held at once, the sums are the same
        "bf16": {"enabled": config.dtype == "bfloat16", "immediate_grad_update": True},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if float32_gradient_accumulation(config):
        ds_config["data_types"] = {"grad_accum_dtype": "fp32"}
    if config.offload:  # ZeRO offload needs DeepSpeed's own CPU Adam (JIT-built)
        ds_config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": config.lr, "betas": list(config.betas), "weight_decay": config.weight_decay},
        }
    return ds_config


def float32_gradient_accumulation(config: LearnerConfig) -> bool:
    """Whether a bf16 learner sums its micro-batches' gradients in float32: at ZeRO stage 1
    without offload, where DeepSpeed then takes its BF16_Optimizer (flat float32 master
    weights, gradient accumulators and optimizer state; one AdamW step on one flat tensor).
    Elsewhere DeepSpeed sums them in bf16: at stage 0 its FP16_UnfusedOptimizer (float32 master
    weights, the gradients cast and checked for inf/nan one tensor at a time at each step; it
    refuses float32 accumulation), at stages 2-3 its ZeRO optimizer."""
    return config.dtype == "bfloat16" and config.zero_stage == 1 and not config.offload


class DeepSpeedBackend(LearnerBackend):
    """One DeepSpeed rank: the policy engine plus an optional frozen reference model."""

    def initialize(self, model_path: str, spec: LearnerSpec, rank: int, world_size: int) -> None:
        self.spec, self.rank, self.world_size = spec, rank, world_size
        config = spec.config
        on_gpu = spec.device == "gpu"
        self.device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        torch.manual_seed(spec.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.pad_token_id = _pad_token_id(self.tokenizer)
        self.processor = load_processor(model_path)  # a vision-language model's; else None
        self.images = None if self.processor is None else ImageInputs(self.processor)
        self.model_path = model_path
        model = self._policy(model_path)
        optimizer = None
        if not config.offload:
            optimizer = torch.optim.AdamW(
                [param for param in model.parameters() if param.requires_grad],
                lr=config.lr,
                betas=tuple(config.betas),
                weight_decay=config.weight_decay,
                fused=on_gpu,
            )
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=([param for param in model.parameters() if param.requires_grad]
                              if optimizer is None else None),
            optimizer=optimizer,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, self._warmup_factor),
            config=deepspeed_config(spec, world_size),
        )
        self.reference = None  # with LoRA the policy with its adapters disabled
        if spec.loss.needs.reference_model and spec.lora is None:
            self.reference = self._load_model(model_path, TORCH_DTYPES[config.dtype]).to(self.device)
            self.reference.requires_grad_(False)

    def hidden_states(self, micro: MicroBatch, *,
                      reference: bool = False) -> tuple[torch.Tensor, torch.nn.Module]:
        """Through the DeepSpeed engine (its backward hooks) for the policy; the model keeps the
        logits of the last position only (logits_to_keep=1): the learner's chunked pass makes
        the rest from the final hidden states (after the final norm, as the output layer takes
        them)."""
        model, module = self.engine, self.engine.module
        base = contextlib.nullcontext()
        if reference:
            if not self.spec.loss.needs.reference_model:
                raise ValueError("reference log-probs asked for, but kl_coef is 0 (no reference model)")
            if self.spec.lora is None:
                model = module = self.reference
            else:  # the base weights: the same module without its adapters
                base = module.disable_adapter()
        with base:
            output = model(
                input_ids=micro.input_ids,
                attention_mask=micro.attention_mask,
                use_cache=False,
                output_hidden_states=True,
                logits_to_keep=1,
                **self._vision_kwargs(micro),
            )
        return output.hidden_states[-1], module.get_output_embeddings()

    def logit_chunk_tokens(self) -> int | None:
        """ZeRO-3 gathers the output layer's weight at every call, a collective: one chunk per
        micro-batch keeps the calls equal on every rank (their token counts differ)."""
        return None if self.spec.config.zero_stage == 3 else self.spec.config.logit_chunk_tokens

    def recompute_logit_chunks(self) -> bool:
        """Not with LoRA under ZeRO-3: the output layer is frozen there, and DeepSpeed does not
        gather a frozen module's weight again for the backward's recomputation (it would run
        on the empty partition); the chunk -- one per micro-batch under ZeRO-3 -- keeps its
        logits instead."""
        return not (self.spec.lora is not None and self.spec.config.zero_stage == 3)

    def _vision_kwargs(self, micro: MicroBatch) -> dict[str, torch.Tensor]:
        """Pixel inputs (floats in the learner's dtype) and token-type ids of a VLM's rows."""
        if not micro.vision:
            return {}
        dtype = TORCH_DTYPES[self.spec.config.dtype]
        pixels = {name: value.to(dtype) if value.is_floating_point() else value
                  for name, value in micro.vision.items()}
        return {**pixels, **token_type_inputs(self._hf_model(), micro.input_ids)}

    def backward(self, loss: torch.Tensor, *, last_micro_batch: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(last_micro_batch)
        self.engine.backward(loss)

    def optimizer_step(self) -> dict[str, float]:
        """lr is the rate this update used, read before the step moves the scheduler on to the
        next update's. Also reports whether DeepSpeed skipped the update: its ZeRO optimizer
        does when the gradient norm is not finite (overflow), and counts it in
        engine.skipped_steps (BF16_Optimizer, ZeRO's stage 0 in bf16, does the same). Without
        ZeRO in float32 DeepSpeed steps the torch optimizer as it is: it keeps no norm and skips
        nothing, so the gradients' own norm is taken first, and a non-finite one skips the
        update here (gradients dropped, the scheduler not moved, as DeepSpeed's skip does)."""
        skipped_before = self.engine.skipped_steps
        lr = float(self.engine.get_lr()[0])
        if self.spec.config.zero_stage == 0 and self.spec.config.dtype == "float32":
            grad_norm = _gradient_norm(self.engine.module)
            if not math.isfinite(grad_norm):
                self.engine.zero_grad()
                return {"grad_norm": grad_norm, "lr": lr, "skipped": 1.0}
            self.engine.step()
            return {"grad_norm": grad_norm, "lr": lr, "skipped": 0.0}
        self.engine.step()
        grad_norm = self.engine.get_global_grad_norm()
        return {
            "grad_norm": float("nan") if grad_norm is None else float(grad_norm),
            "lr": lr,
            "skipped": float(self.engine.skipped_steps > skipped_before),
        }

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """With LoRA each adapter merged into its base weight (out of place)."""
        for group in weight_groups(self._hf_model()):
            with self._gathered(group.to_gather):
                yield from group.tensors()

    def parameter_specs(self) -> list[TensorSpec]:
        return [
            TensorSpec(name, tuple(getattr(param, "ds_shape", param.shape)), param.dtype)
            for group in weight_groups(self._hf_model())
            for name, param in group.named
        ]

    def adapter_tensors(self, *, peft_names: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
        """The adapters' tensors in the transformers model's names (the adapter sync's), or in
        the PeftModel's (an export's adapter directory)."""
        params = adapter_parameters(self.engine.module if peft_names else self._hf_model())
        with self._gathered([param for _, param in params]):
            for name, param in params:
                yield name, param.data

    def adapter_specs(self) -> tuple[list[TensorSpec], dict[str, Any]]:
        """The adapter sync's tensors (names, full shapes, dtypes) and the adapter's PEFT options."""
        specs = [TensorSpec(name, tuple(getattr(param, "ds_shape", param.shape)), param.dtype)
                 for name, param in adapter_parameters(self._hf_model())]
        return specs, adapter_options(self.engine.module)

    def save(self, path: str, extra: dict[str, Any]) -> None:
        """With LoRA the module state saved is the adapters' (the base is model_path's)."""
        ensure_directory(path)
        self.engine.save_checkpoint(path, tag=CHECKPOINT_TAG, client_state={"extra": extra},
                                    exclude_frozen_parameters=self.spec.lora is not None)

    def load(self, path: str) -> dict[str, Any]:
        load_path, client_state = self.engine.load_checkpoint(
            path, tag=CHECKPOINT_TAG, load_optimizer_states=True, load_lr_scheduler_states=True,
            load_module_strict=self.spec.lora is None,
        )
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint with tag {CHECKPOINT_TAG!r} under {path}")
        return client_state["extra"]

    def export_hf(self, path: str) -> None:
        """The policy as a HF directory (with LoRA: the merged model, and in adapter/ the
        directory PEFT loads onto model_path's base)."""
        state = {name: tensor.detach().to("cpu", copy=True) for name, tensor in self.named_parameters()}
        adapters = ({name: tensor.detach().to("cpu", copy=True)
                     for name, tensor in self.adapter_tensors(peft_names=True)}
                    if self.spec.lora is not None else None)
        if self.rank != 0:
            return
        directory = ensure_directory(path)
        model: PreTrainedModel = self._hf_model()
        model.config.use_cache = True
        try:
            model.save_pretrained(directory, state_dict=state)
        finally:
            model.config.use_cache = False
        (self.processor or self.tokenizer).save_pretrained(directory)
        if adapters is not None:
            peft_model = self.engine.module
            peft_model.peft_config["default"].base_model_name_or_path = self.model_path
            peft_model.save_pretrained(directory / ADAPTER_SUBDIR, state_dict=adapters)

    # ---------------------------------------------------------------- helpers

    def _load_model(self, model_path: str, dtype: torch.dtype) -> PreTrainedModel:
        return load_policy(model_path, dtype)

    def _policy(self, model_path: str) -> torch.nn.Module:
        """The policy in float32 (DeepSpeed casts it for bf16), in training mode: from_pretrained
        returns it in eval mode, where transformers skips gradient checkpointing (its layers
        checkpoint only while self.training). Checkpointing is non-reentrant: with LoRA the
        embeddings are frozen, and reentrant checkpointing would give the adapters of a layer
        whose inputs need no gradient none (tests/workers/learner/test_lora.py)."""
        model = self._load_model(model_path, torch.float32)
        self.suppressed = suppressed_token_ids(model.config)  # never sampled (riskpo/models/vlm.py)
        model.train()
        if self.spec.config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        return model if self.spec.lora is None else attach_lora(model, self.spec.lora)

    def _hf_model(self) -> PreTrainedModel:
        """The transformers model (inside PEFT's wrapper with LoRA), in HF parameter names."""
        module = self.engine.module
        return module if self.spec.lora is None else module.get_base_model()

    def _warmup_factor(self, optimizer_step: int) -> float:
        warmup = self.spec.config.warmup_steps
        return 1.0 if warmup == 0 else min(1.0, (optimizer_step + 1) / warmup)

    def _gathered(self, params: list[torch.nn.Parameter]) -> contextlib.AbstractContextManager:
        if self.spec.config.zero_stage == 3:
            return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        return contextlib.nullcontext()


def _gradient_norm(model: torch.nn.Module) -> float:
    """The global L2 norm of the model's accumulated gradients (inf or nan when one is)."""
    gradients = [param.grad for param in model.parameters() if param.grad is not None]
    return float(torch.nn.utils.get_total_norm(gradients)) if gradients else 0.0


def _pad_token_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad with")
