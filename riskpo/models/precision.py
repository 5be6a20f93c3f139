"""Precision `auto` (model.dtype, learner.dtype): bfloat16 where the hardware computes it
natively -- a GPU, or a CPU with AMX or AVX512-BF16 -- and float32 elsewhere (issue 25). The one
resolver for the engines' and the learner's dtype; launch/config.py settles every `auto` at
start-up, so a run's config.yaml holds the dtype it computed in and reproduces elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

AUTO = "auto"
# /proc/cpuinfo flags of a CPU with bf16 matrix or vector instructions (Sapphire Rapids' AMX,
# Cooper Lake's and Zen 4's AVX512-BF16): there bf16 runs 2-5x faster than fp32 (measured on
# this repository's 2-core Xeon: a SmolLM2 forward and backward 11.8 s fp32, 4.5 s bf16)
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
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


def cpu_has_native_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU (flags given, or this machine's) has AMX-BF16 or AVX512-BF16."""
    present = cpu_flags() if flags is None else frozenset(flags)
    return any(flag in present for flag in NATIVE_BF16_CPU_FLAGS)


def resolve_dtype(value: str, on_gpu: bool, flags: Iterable[str] | None = None) -> str:
    """value itself, or for `auto`: bfloat16 on a GPU or a CPU with native bf16 (flags given,
    or this machine's), float32 elsewhere."""
    if value != AUTO:
        return value
    return "bfloat16" if on_gpu or cpu_has_native_bf16(flags) else "float32"
