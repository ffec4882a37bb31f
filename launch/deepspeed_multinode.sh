#!/usr/bin/env bash
# Several nodes with the DeepSpeed launcher and a hostfile ("node-a slots=8" per line; passwordless ssh between
# nodes, and the same checkout and environment at the same path on each):
#   HOSTFILE=hosts.txt launch/deepspeed_multinode.sh configs/stage_a_9b.yaml verifier.path=/models/Qwen3.5-9B
set -euo pipefail
config=${1:?usage: $0 CONFIG [KEY=VALUE ...]}; shift
cd "$(dirname "$0")/.."
hostfile=${HOSTFILE:?set HOSTFILE to a DeepSpeed hostfile}
master=${MASTER_ADDR:-$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$hostfile")}
cmd=(python -m deepspeed.launcher.runner --hostfile "$hostfile" --master_addr "$master"
     --master_port "${MASTER_PORT:-29500}" --module clsd_ds train --config "$config" "$@")
echo "+ ${cmd[*]}"
exec "${cmd[@]}"
