#!/usr/bin/env bash
# The body shared by slurm/stage_*.sh (they `exec` it, so this shell is the job's batch shell).
#
# One task per GPU under srun, each reading its rank from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID
# (clsd_ds/train/distributed.py): no launcher process inside the job, so Slurm's signals and accounting reach the
# training processes themselves, and node/GPU counts are just sbatch's.
#
# Stopping: `--signal=B:USR1@300` (time limit ahead), `scancel --signal=USR1 [--full]` and preemption (TERM) all
# make the trainer save a checkpoint at the next step boundary and exit with 75; this script forwards the batch
# shell's signals to srun and, on 75, requeues the job, which resumes from the run directory.
# Environment: CONFIG (required), OVERRIDES (space-separated KEY=VALUE), OMP_NUM_THREADS (default 8).
set -uo pipefail
: "${CONFIG:?set CONFIG to a trainer config file}"
read -r -a overrides <<< "${OVERRIDES:-}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
cmd=(srun --kill-on-bad-exit=1 python -m clsd_ds train --config "$CONFIG" "${overrides[@]}" "$@")
echo "+ ${cmd[*]}   (job ${SLURM_JOB_ID:-?}, restart ${SLURM_RESTART_COUNT:-0})"
"${cmd[@]}" &
pid=$!
forward() {
    echo "[slurm] SIG$1 received at $(date +%T): asking the run to checkpoint and stop"
    kill -"$1" "$pid" 2>/dev/null
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
while true; do
    wait "$pid"
    rc=$?
    kill -0 "$pid" 2>/dev/null || break  # `wait` also returns when a trapped signal arrives
done
if [ "$rc" -eq 75 ]; then
    echo "[slurm] the run saved a checkpoint and stopped at $(date +%T): requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
exit "$rc"
