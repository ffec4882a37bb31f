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
