"""Precision auto (riskpo/models/precision.py): bfloat16 on a GPU, and on a CPU where it pays for
the role (the engines: AMX or AVX512-BF16; the learner: AMX, or AVX512-BF16 on AMD), float32 elsewhere; explicit values stay; validate() settles model.dtype=auto and records it in
the composed config that config.yaml is written from."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from launch.config import compose_config, validate
from riskpo.models import precision
from riskpo.models.precision import bf16_pays_on_cpu, cpu_flags, cpu_vendor, resolve_dtype
from riskpo.options import ConfigError

SAPPHIRE_RAPIDS = ["fpu", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
COOPER_LAKE = ["fpu", "avx512f", "avx512_bf16"]
SKYLAKE = ["fpu", "avx2", "avx512f", "avx512bw"]


INTEL, AMD = "GenuineIntel", "AuthenticAMD"


@pytest.mark.parametrize(("flags", "vendor", "on_gpu", "role", "expected"), [
    (SAPPHIRE_RAPIDS, INTEL, False, "engine", "bfloat16"),
    (SAPPHIRE_RAPIDS, INTEL, False, "learner", "bfloat16"),
    (COOPER_LAKE, INTEL, False, "engine", "bfloat16"),
    (COOPER_LAKE, INTEL, False, "learner", "float32"),  # Intel without AMX: bf16 matmuls ran slower
    (COOPER_LAKE, AMD, False, "learner", "bfloat16"),  # Zen 4's AVX512-BF16: they ran faster
    (SKYLAKE, INTEL, False, "engine", "float32"),
    (SKYLAKE, AMD, False, "learner", "float32"),
    (SKYLAKE, INTEL, True, "engine", "bfloat16"),
    (SKYLAKE, INTEL, True, "learner", "bfloat16"),
    ([], "", False, "learner", "float32"),
])
def test_auto_is_bf16_where_it_pays_for_the_role(flags: list[str], vendor: str, on_gpu: bool, role: str,
                                                 expected: str) -> None:
    assert resolve_dtype("auto", on_gpu, role, flags, vendor) == expected


def test_an_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="trainer"):
        bf16_pays_on_cpu("trainer", SAPPHIRE_RAPIDS)


@pytest.mark.parametrize("explicit", ["float32", "bfloat16", "float16"])
def test_explicit_dtypes_stay(explicit: str) -> None:
    assert resolve_dtype(explicit, on_gpu=False, role="learner", flags=SAPPHIRE_RAPIDS) == explicit
    assert resolve_dtype(explicit, on_gpu=True, role="engine", flags=[]) == explicit


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\n"
                       "flags\t\t: fpu avx512_bf16 amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx512_bf16 amx_bf16\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx512_bf16", "amx_bf16"} and cpu_vendor(cpuinfo) == "GenuineIntel"
    assert bf16_pays_on_cpu("learner", cpu_flags(cpuinfo), cpu_vendor(cpuinfo))
    assert cpu_flags(tmp_path / "absent") == frozenset() and cpu_vendor(tmp_path / "absent") == ""


@pytest.mark.parametrize(("flags", "expected"), [(SAPPHIRE_RAPIDS, "bfloat16"), (SKYLAKE, "float32")])
def test_validate_settles_model_dtype_and_records_it(monkeypatch: pytest.MonkeyPatch, flags: list[str],
                                                     expected: str) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: frozenset(flags))
    cfg = compose_config(["model.dtype=auto"])
    run = validate(cfg)
    assert run.model.dtype == expected
    assert OmegaConf.to_container(cfg, resolve=True)["model"]["dtype"] == expected  # config.yaml


def test_validate_leaves_an_explicit_model_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda cpuinfo=None: frozenset(SAPPHIRE_RAPIDS))
    cfg = compose_config([])
    assert validate(cfg).model.dtype == "float32" == cfg.model.dtype  # the default run is unchanged


def test_an_unknown_model_dtype_is_refused() -> None:
    with pytest.raises(ConfigError, match="model.dtype"):
        validate(compose_config(["model.dtype=fp8"]))
