#!/usr/bin/env bash
# torchrun on this node (NNODES/NODE_RANK/MASTER_ADDR for several nodes, started once per node):
#   NPROC=8 launch/torchrun.sh configs/stage_a_9b.yaml verifier.path=/models/Qwen3.5-9B
set -euo pipefail
config=${1:?usage: $0 CONFIG [KEY=VALUE ...]}; shift
cd "$(dirname "$0")/.."
cmd=(torchrun --nproc_per_node "${NPROC:-8}" --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}"
     --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}"
     -m clsd_ds train --config "$config" "$@")
echo "+ ${cmd[*]}"
exec "${cmd[@]}"
