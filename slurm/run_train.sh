#!/usr/bin/env bash
# The body shared by slurm/stage_*.sh: one task per GPU under srun, each reading its rank from SLURM_PROCID,
# SLURM_NTASKS and SLURM_LOCALID (clsd_ds/train/distributed.py), so no launcher runs inside the job.
# Environment: CONFIG (required), OVERRIDES (space-separated KEY=VALUE), OMP_NUM_THREADS (default 8).
set -euo pipefail
: "${CONFIG:?set CONFIG to a trainer config file}"
read -r -a overrides <<< "${OVERRIDES:-}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
cmd=(srun --kill-on-bad-exit=1 python -m clsd_ds train --config "$CONFIG" "${overrides[@]}" "$@")
echo "+ ${cmd[*]}"
"${cmd[@]}"
