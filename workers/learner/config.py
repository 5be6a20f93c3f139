"""The learner group's configuration: one dataclass, validated once, mirrored by the driver's
`learner` and `loss` config groups (same key names)."""

from __future__ import annotations

from dataclasses import dataclass, field

STRATEGIES = ("deepspeed",)  # learner backends; an FSDP2 module would add "fsdp2"
DEVICES = ("cpu", "gpu")
DTYPES = ("float32", "bfloat16")
AGGREGATIONS = ("token_mean", "seq_mean_token_sum", "seq_mean_token_mean")
KL_KINDS = ("k1", "k2", "k3", "low_var_kl")


@dataclass
class LearnerConfig:
    """Everything a learner rank needs besides the model path.

    Parallelism and memory: num_ranks data-parallel ranks (one Ray actor each); zero_stage 0-3;
    dtype float32 (CPU) or bfloat16 (CPU or GPU); offload_optimizer / offload_params move ZeRO
    state to host memory (GPU only in practice: DeepSpeed's CPU Adam JIT-builds); device cpu
    runs gloo and a torch AdamW, gpu runs NCCL. PPO: each train_step runs ppo_epochs passes over
    the batch, each split into num_mini_batches optimizer steps; a mini-batch is split per rank
    into micro-batches of at most micro_batch_token_budget padded tokens (gradient accumulation).
    Loss keys are those of riskpo.losses.policy_loss; kl_coef > 0 loads a frozen reference model.
    """

    num_ranks: int = 1
    strategy: str = "deepspeed"
    device: str = "cpu"  # cpu (gloo) | gpu (NCCL)
    zero_stage: int = 2
    dtype: str = "float32"
    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    warmup_steps: int = 0  # linear warm-up over optimizer steps, then constant
    ppo_epochs: int = 1
    num_mini_batches: int = 1
    micro_batch_token_budget: int = 8192
    gradient_checkpointing: bool = False
    offload_optimizer: bool = False
    offload_params: bool = False  # ZeRO-3 only
    temperature: float = 1.0  # the sampling temperature: logits are divided by it
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = 3.0
    aggregation: str = "token_mean"
    kl_coef: float = 0.0
    kl_kind: str = "k3"
    entropy_coef: float = 0.0
    tis_cap: float | None = None
    weight_sync_bucket_mb: float = 16.0  # see bench/weight_sync.py: 4-16 MB pipelines best on gloo
    weight_sync_timeout_s: float = 600.0
    seed: int = 0

    def validate(self) -> None:
        """Raises ValueError naming the first key that is out of range."""
        _check(self.num_ranks >= 1, "num_ranks", f"must be >= 1, got {self.num_ranks}")
        _check(self.strategy in STRATEGIES, "strategy", f"must be one of {STRATEGIES}, got {self.strategy!r}")
        _check(self.device in DEVICES, "device", f"must be one of {DEVICES}, got {self.device!r}")
        _check(self.zero_stage in (0, 1, 2, 3), "zero_stage", f"must be 0-3, got {self.zero_stage}")
        _check(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(len(self.betas) == 2, "betas", f"needs two values, got {self.betas}")
        _check(self.grad_clip >= 0, "grad_clip", f"must be >= 0, got {self.grad_clip}")
        _check(self.ppo_epochs >= 1, "ppo_epochs", f"must be >= 1, got {self.ppo_epochs}")
        _check(self.num_mini_batches >= 1, "num_mini_batches", f"must be >= 1, got {self.num_mini_batches}")
        _check(
            self.micro_batch_token_budget >= 1,
            "micro_batch_token_budget",
            f"must be >= 1, got {self.micro_batch_token_budget}",
        )
        _check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        _check(
            self.aggregation in AGGREGATIONS,
            "aggregation",
            f"must be one of {AGGREGATIONS}, got {self.aggregation!r}",
        )
        _check(self.kl_kind in KL_KINDS, "kl_kind", f"must be one of {KL_KINDS}, got {self.kl_kind!r}")
        _check(self.kl_coef >= 0, "kl_coef", f"must be >= 0, got {self.kl_coef}")
        _check(
            not self.offload_params or self.zero_stage == 3,
            "offload_params",
            "needs zero_stage 3",
        )
        _check(self.weight_sync_bucket_mb >= 0, "weight_sync_bucket_mb", "must be >= 0")

    @property
    def uses_reference_model(self) -> bool:
        return self.kl_coef > 0


def _check(condition: bool, key: str, problem: str) -> None:
    if not condition:
        raise ValueError(f"learner.{key}: {problem}")
