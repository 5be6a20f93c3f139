#!/usr/bin/env bash
# Creates (or reuses) .venv-vl: the environment where the VL recipe rehearses on CPU
# (riskpo-train experiment=qwen2.5-vl-3b-geo3k rehearse=true). transformers' Qwen2-VL image
# processor imports torchvision, and PyPI's torchvision for our torch 2.13 is a CUDA build that
# cannot load beside the CPU torch; torch 2.14.1 with torchvision 0.29.1 (CUDA builds that run on
# a CPU) import together. Idempotent: a stamp newer than pyproject.toml and this script.
set -euo pipefail

VENV="${VL_VENV:-.venv-vl}"
PINS="torch==2.14.1
torchvision==0.29.1"
source "$(dirname "$0")/venv_prologue.sh"
"$BIN/pip" install -q -c "$CONSTRAINTS" torch==2.14.1 torchvision==0.29.1
# This project with all of its dependencies (pyproject allows torch < 2.15) and what the
# rehearsal's test imports, resolved under the constraints that keep the pair.
"$BIN/pip" install -q -c "$CONSTRAINTS" -e . pytest==9.2.0 pytest-timeout==2.4.0 hypothesis==6.170.15
# Triton compiles GPU kernels (nothing on a CPU imports it): 0.9 GB of the venv's 6.7 GB.
"$BIN/pip" uninstall -q -y triton 2>/dev/null || true
"$BIN/python" - <<'PY'
import deepspeed, hydra, math_verify, omegaconf, ray, torch, torchvision, transformers  # noqa: F401
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor  # noqa: F401

assert torch.__version__.startswith("2.14.1"), f"torch {torch.__version__}: the constraints failed"
assert torchvision.__version__.startswith("0.29.1"), f"torchvision {torchvision.__version__}"
print("torch", torch.__version__, "torchvision", torchvision.__version__, "transformers", transformers.__version__)
PY
touch "$STAMP"
