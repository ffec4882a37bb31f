#!/usr/bin/env bash
# The shadow loop on a Slurm cluster, job 1 of 2: Redis (persistence on, a password) and the primary, on one node.
#   RUN=runs/shadow_9b CONFIG=configs/shadow_primary_9b.yaml OVERRIDES="verifier.path=/models/Qwen3.5-9B" \
#       jid=$(sbatch --parsable slurm/shadow_primary.sh)
#   RUN=runs/shadow_9b CONFIG=configs/shadow_trainer_9b.yaml sbatch --dependency=after:$jid --nodes=2 \
#       slurm/shadow_trainer.sh
# RUN must be on a filesystem both jobs see: this job writes the Redis address to RUN/redis.url (mode 600, the
# password in it) and the trainer job reads it. Redis's files go to RUN/redis: a resubmitted job restarts Redis
# from its append-only file, and the loop continues where it stopped. PORT (default 6379), OVERRIDES: KEY=VALUE
# for clsd-ds shadow-primary. `scancel --signal=TERM --full JOB` stops the primary after the task in hand,
# then Redis (the job completes); a plain scancel also stops both, as a cancelled job.
#SBATCH --job-name=clsd-shadow-primary
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
: "${CONFIG:?set CONFIG to a primary config (configs/shadow_primary_9b.yaml)}"
RUN=${RUN:-runs/shadow}
PORT=${PORT:-6379}
read -r -a overrides <<< "${OVERRIDES:-}"
mkdir -p "$RUN/redis"
password_file="$RUN/redis/password"
[ -s "$password_file" ] || (umask 077; python -c "import secrets; print(secrets.token_hex(16))" > "$password_file")
password=$(cat "$password_file")
host=$(hostname)
redis-server --port "$PORT" --bind 0.0.0.0 --requirepass "$password" --dir "$RUN/redis" --appendonly yes \
    --appendfsync always --save "" >> "$RUN/redis/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 100); do REDISCLI_AUTH=$password redis-cli -p "$PORT" ping > /dev/null 2>&1 && break; sleep 0.1; done
(umask 077; echo "redis://:$password@$host:$PORT/0" > "$RUN/redis.url.tmp") && mv "$RUN/redis.url.tmp" "$RUN/redis.url"
echo "[shadow] redis on $host:$PORT (job ${SLURM_JOB_ID:-?}); address in $RUN/redis.url"
python -m clsd_ds shadow-primary --config "$CONFIG" shadow.redis="redis://:$password@127.0.0.1:$PORT/0" \
    out="$RUN/primary" "${overrides[@]}" &
primary_pid=$!
trap 'kill -TERM "$primary_pid" 2>/dev/null' TERM INT USR1
while true; do
    wait "$primary_pid"
    rc=$?
    kill -0 "$primary_pid" 2>/dev/null || break  # `wait` also returns when a trapped signal arrives
done
echo "[shadow] primary exited with $rc: stopping redis"
REDISCLI_AUTH=$password redis-cli -p "$PORT" shutdown > /dev/null 2>&1 || kill "$redis_pid"
wait "$redis_pid"
exit "$rc"
