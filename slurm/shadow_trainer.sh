#!/usr/bin/env bash
# The shadow loop on a Slurm cluster, job 2 of 2: the trainer (clsd-ds train stage=shadow), one task per GPU,
# submitted with --dependency=after:<the primary's job> (slurm/shadow_primary.sh has the two commands). It waits
# for RUN/redis.url, then runs as every training job does (slurm/run_train.sh: signals forwarded, checkpoint,
# exit 75, requeue, resume).
#SBATCH --job-name=clsd-shadow-trainer
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
RUN=${RUN:-runs/shadow}
for _ in $(seq 600); do [ -s "$RUN/redis.url" ] && break; sleep 1; done
[ -s "$RUN/redis.url" ] || { echo "no $RUN/redis.url after 10 minutes: is the primary's job running?" >&2; exit 1; }
CONFIG=${CONFIG:-configs/shadow_trainer_9b.yaml} OVERRIDES="${OVERRIDES:-} run_dir=$RUN shadow.redis=$(cat "$RUN/redis.url")" \
    exec slurm/run_train.sh "$@"
