"""Precision `auto` (model.dtype, learner.dtype): bfloat16 where the hardware makes it pay, float32
elsewhere (issue 25). The one resolver for the engines' and the learner's dtype; launch/settle.py
settles every `auto` at start-up, so a run's config.yaml holds the dtype it computed in and
reproduces elsewhere.

What pays differs by role, by measurement (bench/learner_precision.py, bench/smollm2_engine.py):
the engines decode a few sequences at a time, bound by reading the weights, so bf16's halved
bytes pay on any CPU whose vector units compute bf16 (AVX512-BF16) or with AMX; the learner's
forward and backward are matrix multiplies over thousands of tokens, bound by arithmetic, so bf16
pays on a CPU only with AMX's matrix units. On a Xeon with AVX512-BF16 and no AMX (2 threads), a
SmolLM2 learner step took 23.6 s in bf16 against 13.4 s in float32 (oneDNN's AVX512-BF16 matmul
ran at 0.56x float32's rate) while the engine generated 1.45x faster in bf16; with AMX the
learner's forward and backward took 4.5 s in bf16 against 11.8 s in float32.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

AUTO = "auto"
ROLES = ("engine", "learner")
# /proc/cpuinfo flags with which bf16 pays, by role: any bf16 instructions for the engines
# (AMX or AVX512-BF16: Sapphire Rapids, Cooper Lake, Zen 4), AMX's matrix units for the learner
BF16_CPU_FLAGS = {"engine": ("amx_bf16", "avx512_bf16"), "learner": ("amx_bf16",)}
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty where /proc/cpuinfo is absent)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def bf16_pays_on_cpu(role: str, flags: Iterable[str] | None = None) -> bool:
    """Whether bf16 is faster than float32 for `role` (engine | learner) on the CPU whose flags
    are given (default: this machine's)."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: one of {ROLES}")
    present = cpu_flags() if flags is None else frozenset(flags)
    return any(flag in present for flag in BF16_CPU_FLAGS[role])


def resolve_dtype(value: str, on_gpu: bool, role: str, flags: Iterable[str] | None = None) -> str:
    """value itself, or for `auto`: bfloat16 on a GPU or a CPU where bf16 pays for `role`
    (flags given, or this machine's), float32 elsewhere."""
    if value != AUTO:
        return value
    return "bfloat16" if on_gpu or bf16_pays_on_cpu(role, flags) else "float32"
