#!/usr/bin/env bash
# Python install steps of the CPU image (docker/Dockerfile.cpu runs this; tests/launch runs it in a
# fresh virtual environment so the test exercises exactly what the image does).
#
# Usage: docker/install_cpu.sh [PROJECT_DIR]   (default: the current directory)
# Environment:
#   PYTHON           interpreter whose environment receives the packages (default: python3)
#   TORCH_INDEX_URL  where the CPU build of torch comes from (default: the PyTorch CPU index);
#                    set it empty to take torch from pip's own configuration (a local wheel).
#   PROJECT_EXTRAS   extras of the project to install (default: dev, what CI needs)
set -euo pipefail

project_dir=${1:-.}
python=${PYTHON:-python3}
torch_index_url=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
extras=${PROJECT_EXTRAS-dev}
constraints="$project_dir/constraints.txt"

# torch's version has one home: the constraints file that also keeps pip from swapping it later.
torch_pin=$(grep -E '^torch==' "$constraints" || true)
if [[ -z "$torch_pin" ]]; then
    echo "install_cpu.sh: no 'torch==VERSION' line in $constraints" >&2
    exit 1
fi

torch_source=()
if [[ -n "$torch_index_url" ]]; then
    torch_source=(--index-url "$torch_index_url")
fi

"$python" -m pip install --upgrade pip==26.3
# torch first, CPU build only: resolving it through the project would pull a multi-GB CUDA build.
"$python" -m pip install "${torch_source[@]}" "$torch_pin"

project_spec="$project_dir"
if [[ -n "$extras" ]]; then
    project_spec="$project_dir[$extras]"
fi
# Editable, as `make install` does: the image keeps its sources (and conf/) in place.
"$python" -m pip install -c "$constraints" -e "$project_spec"

# Fail the build here, not at the first training run, if the install is not usable.
"$python" - <<'PY'
import hydra, ray, riskpo, torch  # noqa: F401

if not torch.__version__.endswith("+cpu"):
    raise SystemExit(f"install_cpu.sh: expected a CPU build of torch, got {torch.__version__}")
print("installed torch", torch.__version__, "ray", ray.__version__)
PY
