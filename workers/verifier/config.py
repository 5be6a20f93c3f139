"""The verifier pool's options (the run config's `verifier` group), declared once here, and the
limits the pool and its actors are built with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from riskpo.options import one_of, require

if TYPE_CHECKING:
    from workers.verifier.ray_pool import VerifierLimits

SANDBOX_MODES = ("auto", "strict")  # auto: strongest available, reported; strict: refuse if degraded


@dataclass
class VerifierConfig:
    """How many verifier actors of each kind, their worker processes, deadlines and memory."""

    num_math_actors: int = 1
    num_code_actors: int = 0  # >= 1 when any dataset has code rows
    workers_per_actor: int = 1  # worker processes / sandbox slots per actor
    math_timeout_s: float = 5.0  # per answer
    code_timeout_s: float = 5.0  # per test case
    request_timeout_s: float = 60.0  # per batch sent to one actor
    memory_mb: int = 1024  # address-space limit of a worker
    code_output_mb: float = 64.0  # cap on a code run's stdout and on its stderr (MiB)
    sandbox: str = "auto"  # see SANDBOX_MODES

    def check(self, key: str) -> None:
        require(self.num_math_actors >= 0, f"{key}.num_math_actors", "must be >= 0")
        require(self.num_code_actors >= 0, f"{key}.num_code_actors", "must be >= 0")
        require(self.workers_per_actor >= 1, f"{key}.workers_per_actor", "must be >= 1")
        for name in ("math_timeout_s", "code_timeout_s", "request_timeout_s"):
            require(getattr(self, name) > 0, f"{key}.{name}", "must be > 0 seconds")
        require(self.memory_mb >= 64, f"{key}.memory_mb", f"{self.memory_mb} MB is too little to run Python")
        require(self.code_output_mb > 0, f"{key}.code_output_mb", "must be > 0 MiB",
                "real judges allow tens of MB, e.g. 64")
        one_of(self.sandbox, SANDBOX_MODES, f"{key}.sandbox")

    @property
    def actor_counts(self) -> dict[str, int]:
        return {"math": self.num_math_actors, "code": self.num_code_actors}

    def limits(self, actor_num_cpus: float = 1.0,
               actor_resources: dict[str, float] | None = None) -> VerifierLimits:
        """The pool's limits: per-answer and per-test deadlines, memory caps, slots per actor,
        and the Ray resources each actor asks for."""
        from workers.verifier.code import CodeLimits
        from workers.verifier.executor import ExecLimits
        from workers.verifier.math_verifier import MathLimits
        from workers.verifier.ray_pool import VerifierLimits

        return VerifierLimits(
            code=CodeLimits(test_timeout_s=self.code_timeout_s, request_timeout_s=self.request_timeout_s),
            sandbox=ExecLimits(max_timeout_s=max(10.0, self.code_timeout_s), memory_mb=self.memory_mb,
                               output_bytes=max(1, int(self.code_output_mb * (1 << 20)))),
            math=MathLimits(timeout_s=max(1, int(self.math_timeout_s)), hard_timeout_s=2 * self.math_timeout_s,
                            memory_mb=max(self.memory_mb, 1024), workers=self.workers_per_actor),
            code_slots_per_actor=self.workers_per_actor,
            strict_sandbox=self.sandbox == "strict",
            actor_num_cpus=actor_num_cpus,
            actor_resources=dict(actor_resources or {}))
