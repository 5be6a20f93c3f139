#!/usr/bin/env bash
# Start the head node of a RiskPO Ray cluster (GCS on --port, job API/dashboard on 8265).
# Usage: launch/cluster/start_head.sh [--num-gpus N] [--num-cpus N] [--verifier-slots N]
#                                     [--driver-slots N] [-- RAY_START_ARGS...]
# Environment: RAY_PORT (6379), DASHBOARD_PORT (8265).
# Then submit from any machine: RAY_ADDRESS=http://HEAD_IP:8265 riskpo-submit ...
set -euo pipefail
source "$(dirname "$0")/common.sh"
parse_node_flags "$@"
mapfile -t resources < <(resource_args)

echo "starting the head; workers join with: launch/cluster/start_worker.sh $(hostname -I | awk '{print $1}'):${RAY_PORT:-6379}" >&2
exec ray start --head \
    --port="${RAY_PORT:-6379}" \
    --dashboard-host=0.0.0.0 \
    --dashboard-port="${DASHBOARD_PORT:-8265}" \
    --disable-usage-stats \
    "${resources[@]}" \
    "${RAY_EXTRA_ARGS[@]}"
