#!/usr/bin/env bash
# Stage A on a Slurm cluster (8 GPUs per node by default):
#   CONFIG=configs/stage_a_9b.yaml OVERRIDES="verifier.path=/models/Qwen3.5-9B" sbatch --nodes=4 slurm/stage_a.sh
# Submit from the repository root with its environment active. The run resumes by itself from
# <run_dir>/checkpoints when resubmitted or requeued.
#SBATCH --job-name=clsd-stage-a
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
CONFIG=${CONFIG:-configs/stage_a_9b.yaml} exec slurm/run_train.sh "$@"
