"""The learner group's options (the run config's `learner` group), declared once here, and
the LearnerSpec a rank is built from (those options, the loss's, device, temperature, seed)."""

from __future__ import annotations

from dataclasses import dataclass, field

from riskpo.algo.losses import LossConfig
from riskpo.models.config import LoraConfig
from riskpo.options import one_of, require
from workers.learner.logits import LOGIT_CHUNK_TOKENS

STRATEGIES = ("deepspeed",)  # learner backends; an FSDP2 module would add "fsdp2"
DEVICES = ("cpu", "gpu")
# what the learner computes in (fp16 needs loss scaling: not here); auto is settled at start-up
# (launch/settle.py: bfloat16 on a GPU or a CPU with native bf16, else float32)
DTYPES = ("auto", "float32", "bfloat16")
# what a LoRA policy's weight sync sends the engines (workers/learner/lora.py): the merged weights
# (base + scaling B A, through the bucketed path every engine takes), or the adapter's tensors
# alone, which the engines apply (ENGINE_CAPABILITIES lora_adapters)
LORA_SYNCS = ("merged", "adapter")


@dataclass
class LearnerConfig:
    """Parallelism and memory: num_ranks data-parallel ranks (one Ray actor each); zero_stage
    0-3; dtype float32 or bfloat16 (auto: settled at start-up, launch/settle.py); offload /
    offload_params move ZeRO state to host memory (GPU only in practice: DeepSpeed's CPU Adam
    JIT-builds). Each train step runs algorithm.loss.ppo_epochs passes over the batch, each
    split into num_mini_batches optimizer steps; a mini-batch is split per rank into
    micro-batches of at most micro_batch_token_budget padded tokens (gradient accumulation)."""

    num_ranks: int = 1
    strategy: str = "deepspeed"
    zero_stage: int = 1  # DeepSpeed ZeRO stage 0-3
    dtype: str = "auto"
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    warmup_steps: int = 0  # linear warm-up over optimizer steps, then constant
    num_mini_batches: int = 1  # optimizer steps per PPO epoch
    micro_batch_token_budget: int = 8192  # tokens per forward/backward micro-batch
    # tokens whose vocabulary-wide logits exist at once (workers/learner/logits.py)
    logit_chunk_tokens: int = LOGIT_CHUNK_TOKENS
    offload: bool = False  # ZeRO optimizer offload to CPU
    offload_params: bool = False  # ZeRO-3 parameter offload to CPU
    gradient_checkpointing: bool = False
    weight_sync_bucket_mb: float = 16.0  # see bench/weight_sync.py: 4-16 MB pipelines best on gloo
    weight_sync_timeout_s: float = 600.0
    lora_sync: str = "merged"  # with model.lora: see LORA_SYNCS

    def check(self, key: str) -> None:
        require(self.num_ranks >= 1, f"{key}.num_ranks", "must be >= 1")
        one_of(self.strategy, STRATEGIES, f"{key}.strategy")
        require(self.zero_stage in (0, 1, 2, 3), f"{key}.zero_stage",
                f"{self.zero_stage} is not a ZeRO stage", "use 0, 1, 2 or 3")
        one_of(self.dtype, DTYPES, f"{key}.dtype")
        require(self.lr > 0.0, f"{key}.lr", "must be > 0")
        require(self.weight_decay >= 0.0, f"{key}.weight_decay", "must be >= 0")
        require(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
                f"{key}.betas", f"{list(self.betas)}: need two values in [0, 1)")
        require(self.grad_clip >= 0.0, f"{key}.grad_clip", "must be >= 0 (0: off)")
        require(self.warmup_steps >= 0, f"{key}.warmup_steps", "must be >= 0")
        require(self.num_mini_batches >= 1, f"{key}.num_mini_batches", "must be >= 1")
        require(self.micro_batch_token_budget >= 1, f"{key}.micro_batch_token_budget", "must be >= 1")
        require(self.logit_chunk_tokens >= 1, f"{key}.logit_chunk_tokens", "must be >= 1")
        require(not self.offload or self.zero_stage >= 1, f"{key}.offload",
                "optimizer offload needs ZeRO stage >= 1", f"set {key}.zero_stage=1 or more")
        require(not self.offload_params or self.zero_stage == 3, f"{key}.offload_params",
                "parameter offload needs ZeRO stage 3", f"set {key}.zero_stage=3")
        require(self.weight_sync_bucket_mb >= 0, f"{key}.weight_sync_bucket_mb", "must be >= 0")
        require(self.weight_sync_timeout_s > 0, f"{key}.weight_sync_timeout_s", "must be > 0")
        one_of(self.lora_sync, LORA_SYNCS, f"{key}.lora_sync")


@dataclass(frozen=True)
class LearnerSpec:
    """Everything a learner rank needs besides the model path: its options, the loss, where it
    computes, the temperature the rollout sampled at (logits are divided by it), the seed, and
    the LoRA adapters it trains (model.lora; None: the whole model)."""

    config: LearnerConfig = field(default_factory=LearnerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    device: str = "cpu"  # cpu (gloo) | gpu (NCCL)
    temperature: float = 1.0
    seed: int = 0
    lora: LoraConfig | None = None

    def __post_init__(self) -> None:
        self.config.check("learner")
        if self.lora is not None:
            self.lora.check("model.lora")
            if not self.lora.enabled:
                raise ValueError("LearnerSpec.lora: give None for full fine-tuning, not a rank of None")
        self.loss.check("algorithm.loss")
        if self.device not in DEVICES:
            raise ValueError(f"LearnerSpec.device must be one of {DEVICES}, got {self.device!r}")
        if self.temperature <= 0:
            raise ValueError(f"LearnerSpec.temperature must be > 0, got {self.temperature}")
        if self.config.dtype == "auto":
            raise ValueError("LearnerSpec: learner.dtype=auto is settled before a rank starts "
                             "(launch/settle.py); give float32 or bfloat16")
