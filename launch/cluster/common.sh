#!/usr/bin/env bash
# Shared by start_head.sh and start_worker.sh: parse the node's resources and run `ray start`.
# Flags: --num-gpus N (default: GPUs nvidia-smi lists, else 0), --num-cpus N (default: all),
# --verifier-slots N (custom resource `verifier_node`: how many verifier actors the node hosts;
# default 0), --driver-slots N (custom resource `riskpo_driver`: how many training drivers may
# run here at once when jobs ask for it with `riskpo-submit --entrypoint-resource
# riskpo_driver=1`; default 0). Anything after `--` goes to `ray start` unchanged.
set -euo pipefail

detect_gpus() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --list-gpus | grep -c '^GPU' || true
    else
        echo 0
    fi
}

require_count() {  # NAME VALUE: a non-negative integer, or exit naming the flag
    if [[ ! "$2" =~ ^[0-9]+$ ]]; then
        echo "$(basename "$0"): $1 must be a non-negative integer, got '$2'" >&2
        exit 2
    fi
}

parse_node_flags() {  # sets NUM_GPUS NUM_CPUS VERIFIER_SLOTS DRIVER_SLOTS RAY_EXTRA_ARGS from "$@"
    NUM_GPUS=$(detect_gpus)
    NUM_CPUS=$(nproc)
    VERIFIER_SLOTS=${VERIFIER_SLOTS:-0}
    DRIVER_SLOTS=${DRIVER_SLOTS:-0}
    RAY_EXTRA_ARGS=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --num-gpus) NUM_GPUS=${2:?--num-gpus needs a value}; shift 2 ;;
            --num-cpus) NUM_CPUS=${2:?--num-cpus needs a value}; shift 2 ;;
            --verifier-slots) VERIFIER_SLOTS=${2:?--verifier-slots needs a value}; shift 2 ;;
            --driver-slots) DRIVER_SLOTS=${2:?--driver-slots needs a value}; shift 2 ;;
            --) shift; RAY_EXTRA_ARGS=("$@"); break ;;
            *) echo "$(basename "$0"): unknown flag '$1' (ray start flags go after --)" >&2; exit 2 ;;
        esac
    done
    require_count --num-gpus "$NUM_GPUS"
    require_count --num-cpus "$NUM_CPUS"
    require_count --verifier-slots "$VERIFIER_SLOTS"
    require_count --driver-slots "$DRIVER_SLOTS"
}

resource_args() {  # prints the ray start arguments for this node's resources, one per line
    echo "--num-gpus=$NUM_GPUS"
    echo "--num-cpus=$NUM_CPUS"
    local custom=()
    [[ "$VERIFIER_SLOTS" -gt 0 ]] && custom+=("\"verifier_node\": $VERIFIER_SLOTS")
    [[ "$DRIVER_SLOTS" -gt 0 ]] && custom+=("\"riskpo_driver\": $DRIVER_SLOTS")
    if [[ ${#custom[@]} -gt 0 ]]; then
        local joined
        joined=$(IFS=,; echo "${custom[*]}")
        echo "--resources={${joined//,/, }}"
    fi
}
