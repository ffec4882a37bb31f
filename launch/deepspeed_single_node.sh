#!/usr/bin/env bash
# One node (one B200, or 8 GPUs) with the DeepSpeed launcher:
#   NGPUS=1 launch/deepspeed_single_node.sh configs/stage_a_9b.yaml verifier.path=/models/Qwen3.5-9B
# Extra KEY=VALUE arguments override the config. MASTER_PORT defaults to 29500.
set -euo pipefail
config=${1:?usage: $0 CONFIG [KEY=VALUE ...]}; shift
cd "$(dirname "$0")/.."
cmd=(python -m deepspeed.launcher.runner --num_gpus "${NGPUS:-8}" --master_port "${MASTER_PORT:-29500}"
     --module clsd_ds train --config "$config" "$@")
echo "+ ${cmd[*]}"
exec "${cmd[@]}"
