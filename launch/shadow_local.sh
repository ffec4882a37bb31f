#!/usr/bin/env bash
# The shadow loop on one machine: a redis-server with persistence on, the primary, and the trainer.
#
#   VERIFIER=/models/Qwen3.5-9B DRAFTER=runs/stage_a TASKS=tasks.jsonl launch/shadow_local.sh [TRAIN KEY=VALUE ...]
#
# Environment: VERIFIER, DRAFTER, TASKS (required); TOKENIZER (default: VERIFIER); RUN (default runs/shadow: the
# trainer's run directory; Redis's files in RUN/redis, the primary's in RUN/primary); PORT (default: a free one);
# NPROC (trainer processes under torchrun, default 1: one plain process); PRIMARY_OVERRIDES (space-separated
# KEY=VALUE for clsd-ds shadow-primary). Arguments are the trainer's KEY=VALUE overrides (train.steps=..., ...).
# The trainer runs in the foreground; when it ends (finished, or stopped by SIGTERM/SIGUSR1 after a checkpoint,
# exit 75) the primary is stopped (it sends what it has queued), then Redis (its append-only file keeps the stream
# for the next start, which resumes where this one stopped).
set -uo pipefail
: "${VERIFIER:?set VERIFIER to the verifier checkpoint directory}"
: "${DRAFTER:?set DRAFTER to the starting drafter (an export or a run directory)}"
: "${TASKS:?set TASKS to the task set (clsd-ds shadow-tasks)}"
RUN=${RUN:-runs/shadow}
TOKENIZER=${TOKENIZER:-$VERIFIER}
PORT=${PORT:-$(python -c "from clsd_ds.shadow.redis_server import free_port; print(free_port())")}
URL="redis://127.0.0.1:$PORT/0"
read -r -a primary_overrides <<< "${PRIMARY_OVERRIDES:-}"
mkdir -p "$RUN/redis"

redis-server --port "$PORT" --bind 127.0.0.1 --dir "$RUN/redis" --appendonly yes --appendfsync always --save "" \
    >> "$RUN/redis/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 100); do redis-cli -p "$PORT" ping > /dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$PORT" ping > /dev/null || { echo "redis-server did not start: $RUN/redis/redis.log" >&2; exit 1; }
echo "[shadow] redis at $URL (pid $redis_pid)"

python -m clsd_ds shadow-primary verifier.path="$VERIFIER" drafter="$DRAFTER" tokenizer="$TOKENIZER" tasks="$TASKS" \
    shadow.redis="$URL" out="$RUN/primary" decode.num_candidates=1 decode.acceptance=guillotine \
    "${primary_overrides[@]}" >> "$RUN/primary.log" 2>&1 &
primary_pid=$!
echo "[shadow] primary pid $primary_pid (log $RUN/primary.log)"

if [ "${NPROC:-1}" -gt 1 ]; then
    trainer=(torchrun --nproc_per_node "$NPROC" -m clsd_ds)
else
    trainer=(python -m clsd_ds)
fi
"${trainer[@]}" train stage=shadow init_from="$DRAFTER" verifier.path="$VERIFIER" shadow.redis="$URL" \
    run_dir="$RUN" "$@" &
trainer_pid=$!
trap 'kill -TERM "$trainer_pid" 2>/dev/null' TERM INT USR1
while true; do
    wait "$trainer_pid"
    rc=$?
    kill -0 "$trainer_pid" 2>/dev/null || break  # `wait` also returns when a trapped signal arrives
done
echo "[shadow] trainer exited with $rc: stopping the primary, then redis"
kill -TERM "$primary_pid" 2>/dev/null
wait "$primary_pid"
redis-cli -p "$PORT" shutdown > /dev/null 2>&1 || kill "$redis_pid"
wait "$redis_pid"
exit "$rc"
