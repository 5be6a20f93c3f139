"""Precision auto (riskpo/models/precision.py): bfloat16 on a GPU or a CPU with AMX/AVX512-BF16,
float32 elsewhere; explicit values stay; validate() settles model.dtype=auto and records it in
the composed config that config.yaml is written from."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from launch.config import compose_config, validate
from riskpo.models import precision
from riskpo.models.precision import cpu_flags, cpu_has_native_bf16, resolve_dtype
from riskpo.options import ConfigError

SAPPHIRE_RAPIDS = ["fpu", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
COOPER_LAKE = ["fpu", "avx512f", "avx512_bf16"]
SKYLAKE = ["fpu", "avx2", "avx512f", "avx512bw"]


@pytest.mark.parametrize(("flags", "on_gpu", "expected"), [
    (SAPPHIRE_RAPIDS, False, "bfloat16"),
    (COOPER_LAKE, False, "bfloat16"),
    (SKYLAKE, False, "float32"),
    (SKYLAKE, True, "bfloat16"),
    ([], False, "float32"),
])
def test_auto_is_bf16_only_on_native_bf16_hardware(flags: list[str], on_gpu: bool, expected: str) -> None:
    assert resolve_dtype("auto", on_gpu, flags) == expected


@pytest.mark.parametrize("explicit", ["float32", "bfloat16", "float16"])
def test_explicit_dtypes_stay(explicit: str) -> None:
    assert resolve_dtype(explicit, on_gpu=False, flags=SAPPHIRE_RAPIDS) == explicit
    assert resolve_dtype(explicit, on_gpu=True, flags=[]) == explicit


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx512_bf16 amx_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx512_bf16 amx_bf16\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx512_bf16", "amx_bf16"}
    assert cpu_has_native_bf16(cpu_flags(cpuinfo))
    assert cpu_flags(tmp_path / "absent") == frozenset()


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
