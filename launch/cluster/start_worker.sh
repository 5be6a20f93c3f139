#!/usr/bin/env bash
# Join a worker node to a RiskPO Ray cluster.
# Usage: launch/cluster/start_worker.sh HEAD_IP:PORT [--num-gpus N] [--num-cpus N]
#                                       [--verifier-slots N] [-- RAY_START_ARGS...]
# A GPU node (rollout engines, learner ranks):  start_worker.sh 10.0.0.1:6379
# A CPU verifier node (hosts verifier actors):  start_worker.sh 10.0.0.1:6379 --num-gpus 0 \
#                                                   --verifier-slots 16
set -euo pipefail
source "$(dirname "$0")/common.sh"
head_address=${1:?usage: start_worker.sh HEAD_IP:PORT [flags]}
shift
parse_node_flags "$@"
mapfile -t resources < <(resource_args)

exec ray start --address="$head_address" --disable-usage-stats "${resources[@]}" "${RAY_EXTRA_ARGS[@]}"
