"""The shadow loop with real processes and a real Redis: ``clsd-ds shadow-primary`` and ``clsd-ds train
stage=shadow`` meeting only in redis-server. The trainer killed with SIGKILL mid-run, Redis restarted under both,
the primary killed, and bad trajectories injected: each time the loop goes on, and the ledger of what every
checkpointed update used has every trajectory id exactly once (none lost, none used twice)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli

from clsd_ds.shadow import redis_server
from clsd_ds.shadow.redis_server import RedisServer
from clsd_ds.shadow.trajectory import FORMAT, VERSION, encode
from clsd_ds.shadow.transport import Transport

WHY = redis_server.available()
pytestmark = pytest.mark.skipif(WHY is not None, reason=str(WHY))
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", WANDB_MODE="offline")


@pytest.fixture
def server(tmp_path):
    s = RedisServer(tmp_path / "redis").start()
    yield s
    s.stop(signal.SIGKILL)


def primary(files: Path, verifier_dir: Path, url: str, out: Path) -> subprocess.Popen:
    args = [f"verifier.path={verifier_dir}", f"drafter={files / 'drafter'}", f"tasks={files / 'tasks.jsonl'}",
            "rollouts=2", "decode.max_new_tokens=8", "decode.block_len=4", "decode.num_candidates=1",
            "decode.acceptance=guillotine", f"shadow.redis={url}", f"out={out}",
            "sandbox.wall_s=5"]
    return subprocess.Popen([sys.executable, "-m", "clsd_ds", "shadow-primary", *args], cwd=REPO, env=ENV,
                            stdout=open(out.with_suffix(".log"), "ab"), stderr=subprocess.STDOUT)


def trainer(files: Path, verifier_dir: Path, url: str, run_dir: Path, steps: int) -> subprocess.Popen:
    args = ["stage=shadow", f"init_from={files / 'drafter'}", f"verifier.path={verifier_dir}", f"shadow.redis={url}",
            "shadow.poll_ms=200", f"run_dir={run_dir}", f"train.steps={steps}", "train.batch_size=1",
            "train.save_every=2", "train.log_every=1", "train.ds_config=ds_configs/cpu_zero1.json",
            "log.progress=false", "optim.warmup_steps=1", "optim.lr=1e-3"]
    return subprocess.Popen([sys.executable, "-m", "clsd_ds", "train", *args], cwd=REPO, env=ENV,
                            stdout=open(run_dir.with_suffix(".log"), "ab"), stderr=subprocess.STDOUT)


def wait_for(check, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def trained_steps(run_dir: Path) -> int:
    return max((e["step"] for e in lines(run_dir / "metrics.jsonl") if e["kind"] == "train"), default=0)


def ledger_ids(run_dir: Path) -> list[str]:
    return [i for entry in lines(run_dir / "used.jsonl") for i in entry["ids"]]


def finish(proc: subprocess.Popen, log: Path, timeout: float = 240.0) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"did not finish; its log:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_trainer_killed_mid_run_resumes_and_uses_every_trajectory_exactly_once(shadow_files, verifier_dir, server,
                                                                               tmp_path):
    steps, run_dir = 6, tmp_path / "trainer"
    p = primary(shadow_files, verifier_dir, server.url, tmp_path / "primary")
    t = trainer(shadow_files, verifier_dir, server.url, run_dir, steps)
    try:
        wait_for(lambda: lines(run_dir / "used.jsonl"), "the first checkpoint")  # step 2 checkpointed
        wait_for(lambda: trained_steps(run_dir) >= 3, "an update after it")
        t.send_signal(signal.SIGKILL)  # mid-run: step 3 (and maybe 4) applied but not checkpointed
        t.wait()
        transport = Transport(server.url)
        read_unacked = transport.stats()["pending"]
        drafted = len(lines(tmp_path / "primary" / "metrics.jsonl"))
        wait_for(lambda: len(lines(tmp_path / "primary" / "metrics.jsonl")) >= drafted + 2,
                 "the primary drafting on while the trainer is down", 60)
        t = trainer(shadow_files, verifier_dir, server.url, run_dir, steps)  # the same run directory: resume
        assert finish(t, run_dir.with_suffix(".log")) == 0
        ids = ledger_ids(run_dir)
        assert len(ids) == len(set(ids)) == steps  # batch 1: one trajectory per update, each used once
        assert read_unacked >= 1 and transport.stats()["pending"] == 0  # what the crash lost was used again
        meta = lines(run_dir / "metrics.jsonl")
        assert max(e["restart"] for e in meta) == 1
        assert abs(next(e for e in meta if e["kind"] == "train")["ratio"] - 1) < 1e-3  # the trainer recomputes
        # the primary's log-probabilities: same weights, same number
        wait_for(lambda: max(e["version"] for e in lines(tmp_path / "primary" / "metrics.jsonl")) > 0,
                 "the primary switching to a published version", 60)
    finally:
        stop(p)
        stop(t)


def test_redis_restart_under_both_roles_loses_nothing(shadow_files, verifier_dir, server, tmp_path):
    steps, run_dir = 4, tmp_path / "trainer"
    p = primary(shadow_files, verifier_dir, server.url, tmp_path / "primary")
    t = trainer(shadow_files, verifier_dir, server.url, run_dir, steps)
    try:
        wait_for(lambda: trained_steps(run_dir) >= 1, "a first update")
        sent = lines(tmp_path / "primary" / "metrics.jsonl")[-1]["sent"]
        server.restart(signal.SIGKILL, down_s=2.0)
        assert finish(t, run_dir.with_suffix(".log")) == 0
        ids = ledger_ids(run_dir)
        assert len(ids) == len(set(ids)) == steps
        wait_for(lambda: lines(tmp_path / "primary" / "metrics.jsonl")[-1]["sent"] > sent + 1,
                 "the primary sending again after the restart", 60)
        assert "redis unavailable" in run_dir.with_suffix(".log").read_text()  # the trainer retried, then went on
        metrics = lines(tmp_path / "primary" / "metrics.jsonl")
        assert max(m["queued"] for m in metrics) >= 1 and metrics[-1]["queue_dropped"] == 0  # it drafted on, queued
        assert Transport(server.url).stats()["added"] >= metrics[-1]["sent"]  # and every queued one arrived
    finally:
        stop(p)
        stop(t)


def test_primary_killed_the_trainer_drains_waits_and_a_new_primary_continues(shadow_files, verifier_dir, server,
                                                                             tmp_path):
    steps, run_dir = 4, tmp_path / "trainer"
    p = primary(shadow_files, verifier_dir, server.url, tmp_path / "primary")
    wait_for(lambda: len(lines(tmp_path / "primary" / "metrics.jsonl")) >= 2, "two trajectories")
    p.send_signal(signal.SIGKILL)
    p.wait()
    sent = Transport(server.url).stats()["added"]
    assert sent < steps
    t = trainer(shadow_files, verifier_dir, server.url, run_dir, steps)
    try:
        wait_for(lambda: trained_steps(run_dir) >= sent, "the trainer draining what is there")
        time.sleep(3)
        assert t.poll() is None and trained_steps(run_dir) == sent  # waiting, not crashed
        p = primary(shadow_files, verifier_dir, server.url, tmp_path / "primary2")
        assert finish(t, run_dir.with_suffix(".log")) == 0
        assert len(set(ledger_ids(run_dir))) == steps
    finally:
        stop(p)
        stop(t)


def test_bad_trajectories_are_refused_with_a_reason_and_the_trainer_goes_on(shadow_files, verifier_dir, server,
                                                                            tmp_path):
    run_dir, transport = tmp_path / "trainer", Transport(server.url)
    good = good_trajectory()
    wrong_shape = json.loads(json.dumps(good))
    wrong_shape["rollouts"][0]["cycles"][0]["states"] = encode(torch.zeros(2, 4, 63))
    unknown = {**good, "drafter_version": 99}
    truncated = {**good, "rollouts": good["rollouts"][:1]}
    transport.client.xadd(transport.stream, {"data": json.dumps(good)[:-40]})  # cut off mid-JSON
    for bad in (wrong_shape, unknown, truncated, good, good):
        transport.send(bad)
    t = trainer(shadow_files, verifier_dir, server.url, run_dir, 2)
    assert finish(t, run_dir.with_suffix(".log")) == 0
    stats = transport.stats()
    assert {k: v for k, v in stats.items() if k.startswith("rejected:")} == {
        "rejected:not_json": 1, "rejected:wrong_shape": 1, "rejected:unknown_drafter_version": 1,
        "rejected:truncated": 1}
    assert len(ledger_ids(run_dir)) == 2 and stats["pending"] == 0
    assert "refused: wrong_shape" in run_dir.with_suffix(".log").read_text()


def test_the_one_machine_launcher_runs_redis_primary_and_trainer_and_stops_them(shadow_files, verifier_dir, tmp_path):
    run = tmp_path / "run"
    env = dict(ENV, VERIFIER=str(verifier_dir), DRAFTER=str(shadow_files / "drafter"),
               TASKS=str(shadow_files / "tasks.jsonl"), RUN=str(run),
               PRIMARY_OVERRIDES="rollouts=2 decode.max_new_tokens=8 decode.block_len=4 sandbox.wall_s=5")
    done = subprocess.run(["bash", "launch/shadow_local.sh", "train.steps=2", "train.batch_size=1",
                           "train.save_every=1", "train.ds_config=ds_configs/cpu_zero1.json", "log.progress=false",
                           "shadow.poll_ms=200"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(set(ledger_ids(run))) == 2 and (run / "versions" / "v2").is_dir()
    assert lines(run / "primary" / "metrics.jsonl") and "stopping the primary, then redis" in done.stdout
    port = done.stdout.split("redis at redis://127.0.0.1:")[1].split("/")[0]
    with pytest.raises(redis_server.redis.ConnectionError):  # Redis is down, and nothing of the loop is left
        redis_server.redis.Redis(port=int(port), socket_connect_timeout=1).ping()
    assert "Redis is now ready to exit" in (run / "redis" / "redis.log").read_text()


def good_trajectory(reward_pair=(0.0, 1.0)) -> dict:
    block = {"length": 3, "states": encode(torch.zeros(2, 4, 64)), "tokens": [1, 2, 3, 4], "logp": -1.0,
             "accepted": 1, "scored": 2}
    return {"format": FORMAT, "version": VERSION, "task": "x", "drafter_version": 0, "prompt": [1, 2, 3],
            "rollouts": [{"completion": [5, 6], "text": "", "verdict": "fail", "reason": "", "reward": r,
                          "cycles": [block]} for r in reward_pair]}


def test_two_gloo_ranks_read_their_own_trajectories_and_the_ledger_has_all_of_them(shadow_files, verifier_dir,
                                                                                   server, tmp_path):
    transport, run_dir = Transport(server.url), tmp_path / "trainer"
    sent = [transport.send(good_trajectory())[0] for _ in range(4)]
    args = ["train", "stage=shadow", f"init_from={shadow_files / 'drafter'}", f"verifier.path={verifier_dir}",
            f"shadow.redis={server.url}", "shadow.poll_ms=200", f"run_dir={run_dir}", "train.steps=2",
            "train.batch_size=2", "train.save_every=1", "train.ds_config=ds_configs/cpu_zero1.json",
            "log.progress=false"]
    run_cli(args, nproc=2)
    assert sorted(ledger_ids(run_dir)) == sorted(sent)  # 2 updates x 2 ranks x 1 trajectory, each once
    assert transport.stats()["pending"] == 0
    consumers = {c["name"].decode() for c in transport.client.xinfo_consumers(transport.stream, "trainers")}
    assert consumers == {"trainer-0", "trainer-1"}
