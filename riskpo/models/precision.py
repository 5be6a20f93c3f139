"""Precision `auto` (model.dtype, learner.dtype): bfloat16 where the hardware makes it pay, float32
elsewhere (issue 25). The one resolver for the engines' and the learner's dtype; launch/settle.py
settles every `auto` at start-up, so a run's config.yaml holds the dtype it computed in and
reproduces elsewhere.

What pays differs by role and by CPU, by measurement (bench/learner_precision.py,
bench/smollm2_engine.py): the engines decode a few sequences at a time, bound by reading the
weights, so bf16's halved bytes pay on any CPU whose vector units compute bf16 (AVX512-BF16) or
with AMX; the learner's forward and backward are matrix multiplies over thousands of tokens,
bound by arithmetic, so bf16 pays only where the CPU multiplies bf16 matrices faster than
float32 ones: with AMX's matrix units (4.5 s against 11.8 s for a SmolLM2 forward and backward),
and on AMD's AVX512-BF16 (an EPYC, Zen 4: a pilot-shaped learner step 8.3 s in bf16 against
13.2 s, 2 threads), but not on a Xeon whose hypervisor exposed AVX512-BF16 without AMX (23.6 s
against 13.4 s: oneDNN's bf16 matmul ran at 0.56x float32's rate there).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

AUTO = "auto"
ROLES = ("engine", "learner")
# (vendor_id, flag) pairs of /proc/cpuinfo with which bf16 pays, by role (vendor None: any):
# any bf16 instructions for the engines (AMX or AVX512-BF16: Sapphire Rapids, Cooper Lake, Zen 4);
# for the learner AMX's matrix units, or AVX512-BF16 on AMD (Zen 4 and later)
BF16_CPUS = {"engine": ((None, "amx_bf16"), (None, "avx512_bf16")),
             "learner": ((None, "amx_bf16"), ("AuthenticAMD", "avx512_bf16"))}
CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_field(names: tuple[str, ...], cpuinfo: Path) -> str | None:
    """The first processor's value of the first of `names` in /proc/cpuinfo (None: absent)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in names:
            return value.strip()
    return None


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty where /proc/cpuinfo is absent)."""
    return frozenset((_cpuinfo_field(("flags", "Features"), cpuinfo) or "").split())


def cpu_vendor(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's vendor_id (GenuineIntel, AuthenticAMD; empty where Linux names none)."""
    return _cpuinfo_field(("vendor_id",), cpuinfo) or ""


def bf16_pays_on_cpu(role: str, flags: Iterable[str] | None = None, vendor: str | None = None) -> bool:
    """Whether bf16 is faster than float32 for `role` (engine | learner) on the CPU whose flags
    and vendor are given (default: this machine's)."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: one of {ROLES}")
    present = cpu_flags() if flags is None else frozenset(flags)
    maker = cpu_vendor() if vendor is None else vendor
    return any(flag in present and wanted in (None, maker) for wanted, flag in BF16_CPUS[role])


def resolve_dtype(value: str, on_gpu: bool, role: str, flags: Iterable[str] | None = None,
                  vendor: str | None = None) -> str:
    """value itself, or for `auto`: bfloat16 on a GPU or a CPU where bf16 pays for `role`
    (flags and vendor given, or this machine's), float32 elsewhere."""
    if value != AUTO:
        return value
    return "bfloat16" if on_gpu or bf16_pays_on_cpu(role, flags, vendor) else "float32"
