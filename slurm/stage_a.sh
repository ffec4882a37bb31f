#!/usr/bin/env bash
# Stage A on a Slurm cluster: one task per GPU started by srun; each task reads its rank from SLURM_PROCID,
# SLURM_NTASKS and SLURM_LOCALID (clsd_ds/train/distributed.py), so no launcher runs inside the job.
#   sbatch --nodes=4 slurm/stage_a.sh                      # defaults below, 8 GPUs per node
#   CONFIG=configs/stage_a_9b.yaml OVERRIDES="verifier.path=/models/Qwen3.5-9B" sbatch slurm/stage_a.sh
# The run resumes by itself from <run_dir>/checkpoints when resubmitted.
#SBATCH --job-name=clsd-stage-a
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
CONFIG=${CONFIG:-configs/stage_a_9b.yaml}
read -r -a overrides <<< "${OVERRIDES:-}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
cmd=(srun --kill-on-bad-exit=1 python -m clsd_ds train --config "$CONFIG" "${overrides[@]}")
echo "+ ${cmd[*]}"
"${cmd[@]}"
