"""``sbatch slurm/stage_c.sh`` on a real one-node Slurm (Debian's slurm-wlm + munge, started by the test as root).

The job runs the tiny Stage C config as 2 srun tasks. Once it has trained a few steps it is signalled, either
- SIGUSR1 on its batch shell only — the path of ``--signal=B:USR1@300`` ahead of a time limit — which the job
  script forwards to srun, or
- SIGTERM to every process of the training step (ranks, DataLoader workers, wandb's service), as preemption does;
then the run checkpoints and exits 75, the script requeues the job, Slurm starts it again (SLURM_RESTART_COUNT=1)
and the run resumes: its final weights must equal the uninterrupted run's.
Skipped (with the reason) where Slurm cannot run: not root, or slurm-wlm/munge neither installed nor installable.
"""

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import REPO
from dsruns import C_STEPS, stage_c_config, train_losses
from slurm_cluster import LocalSlurm, available
from test_preemption import same_weights

pytestmark = pytest.mark.skipif(available() is not None, reason=f"no local Slurm: {available()}")


@pytest.fixture(scope="module")
def slurm():
    base = Path(tempfile.mkdtemp(prefix="clsd-slurm-"))  # not under pytest's 700 folders: munged needs o+x
    os.chmod(base, 0o755)
    cluster = LocalSlurm(base, cpus=2).start()
    yield cluster
    cluster.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("scancel, signal", [(["--signal=USR1", "--batch"], "USR1"), (["--signal=TERM"], "TERM")],
                         ids=["time-limit", "preemption"])
def test_stage_c_job_is_signalled_requeued_and_ends_as_the_uninterrupted_run(
        slurm, replicate_run, stage_a_checkpoint_only, shards, tmp_path, scancel, signal):
    cfg = stage_c_config(tmp_path, "run", shards, stage_a_checkpoint_only, stage_c__placement="replicate")
    run_dir = tmp_path / "run"
    env = {"CONFIG": str(cfg), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "OVERRIDES": "log.wandb=true",
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    # 2 tasks of 1 CPU each and no GPUs on this node; everything else as the script says
    job = slurm.sbatch(["--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0", "--time=30",
                        f"--output={tmp_path}/slurm-%j.out", "slurm/stage_c.sh"], env=env, cwd=REPO)
    output = tmp_path / f"slurm-{job}.out"
    deadline = time.time() + 300
    while not (run_dir / "metrics.jsonl").is_file() or max(train_losses(run_dir), default=0) < 2:
        assert slurm.job(job).get("JobState") in ("PENDING", "RUNNING"), output.read_text()
        assert time.time() < deadline, "the job did not reach step 2"
        time.sleep(0.2)
    slurm.run(["scancel", *scancel, job])

    info = slurm.wait(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=600)
    log = output.read_text()
    assert info["JobState"] == "COMPLETED", log
    assert info["Restarts"] == "1", log
    assert ("[slurm] SIGUSR1 received" in log) == (signal == "USR1") and f"requeueing job {job}" in log
    starts = json.loads((run_dir / "meta.json").read_text())["starts"]
    assert [(s["slurm_job_id"], s["slurm_restart_count"], s["launcher"], s["world_size"]) for s in starts] == \
        [(job, None, "slurm", 2), (job, "1", "slurm", 2)]
    assert f"stop requested (SIG{signal}): checkpoint at step" in log and "resumed from" in log
    assert ("wandb logging stopped for this launch" in log) == (signal == "TERM")  # wandb-core exits on TERM
    exit_record = json.loads((run_dir / "exit.json").read_text())
    assert exit_record["reason"] == "finished" and exit_record["step"] == C_STEPS
    assert same_weights(replicate_run, run_dir)
    a, b = train_losses(replicate_run), train_losses(run_dir)
    assert [b[s] for s in range(1, C_STEPS + 1)] == [a[s] for s in range(1, C_STEPS + 1)]


def test_shadow_loop_as_two_jobs_that_share_a_redis_address(slurm, shadow_files, verifier_dir, tmp_path):
    """slurm/shadow_primary.sh (Redis with a password + the primary) and slurm/shadow_trainer.sh (after it starts,
    reading RUN/redis.url): the trainer job finishes its updates from the primary's trajectories; scancel then
    stops the primary and Redis."""
    import yaml

    from clsd_ds.shadow import redis_server

    if redis_server.available() is not None:
        pytest.skip(redis_server.available())
    run = tmp_path / "shadow"
    primary_cfg, trainer_cfg = tmp_path / "primary.yaml", tmp_path / "trainer.yaml"
    primary_cfg.write_text(yaml.safe_dump({
        "verifier": {"path": str(verifier_dir)}, "drafter": str(shadow_files / "drafter"),
        "tasks": str(shadow_files / "tasks.jsonl"), "rollouts": 2, "sandbox": {"wall_s": 5.0},
        "decode": {"num_candidates": 1, "acceptance": "guillotine", "max_new_tokens": 8, "block_len": 4}}))
    trainer_cfg.write_text(yaml.safe_dump({
        "stage": "shadow", "init_from": str(shadow_files / "drafter"), "verifier": {"path": str(verifier_dir)},
        "shadow": {"poll_ms": 200}, "log": {"progress": False},
        "train": {"steps": 2, "batch_size": 1, "save_every": 1, "ds_config": "ds_configs/cpu_zero1.json"}}))
    env = {"RUN": str(run), "PORT": str(redis_server.free_port()), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    one_cpu = ["--ntasks=1", "--cpus-per-task=1", "--gpus-per-node=0", "--time=30"]
    primary = slurm.sbatch([*one_cpu, f"--output={tmp_path}/primary-%j.out", "slurm/shadow_primary.sh"],
                           env={**env, "CONFIG": str(primary_cfg)}, cwd=REPO)
    trainer = slurm.sbatch([*one_cpu, "--ntasks-per-node=1", f"--dependency=after:{primary}",
                            f"--output={tmp_path}/trainer-%j.out", "slurm/shadow_trainer.sh"],
                           env={**env, "CONFIG": str(trainer_cfg)}, cwd=REPO)
    info = slurm.wait(trainer, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=400)
    log = (tmp_path / f"trainer-{trainer}.out").read_text()
    assert info["JobState"] == "COMPLETED", log + (tmp_path / f"primary-{primary}.out").read_text()
    ledger = [i for line in (run / "used.jsonl").read_text().splitlines() for i in json.loads(line)["ids"]]
    assert len(set(ledger)) == 2 and (run / "versions" / "v2").is_dir()
    url = (run / "redis.url").read_text()
    assert oct((run / "redis.url").stat().st_mode)[-3:] == "600" and url.startswith("redis://:")
    slurm.run(["scancel", "--signal=TERM", "--full", primary])  # the batch shell and everything in it
    info = slurm.wait(primary, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)
    out = (tmp_path / f"primary-{primary}.out").read_text()
    assert info["JobState"] == "COMPLETED" and "stopping redis" in out, out
    assert "Redis is now ready to exit" in (run / "redis" / "redis.log").read_text()
