"""Stopping and resuming for real, against the uninterrupted 12-step, 2-rank ZeRO-3 run (``stage_a_run``).

- SIGUSR1 to one rank at a random step (SIGTERM to the ranks' helper processes): all ranks checkpoint at that
  step boundary and exit; the relaunch's losses and final weights equal the uninterrupted run's; ``report`` shows
  the restart.
- SIGKILL in the middle of a save (fault injection): the resume uses the previous checkpoint.
- A NaN loss: the run stops with a checkpoint of the last good step and resumes exactly; or skips the batch.
- DataLoader workers ignore a SIGTERM sent by anyone but their parent (Slurm signals every process of a step).
- The 2-rank ZeRO-3 checkpoint on 1 rank (DeepSpeed universal checkpoint): the same model, and training goes on.
"""

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from conftest import REPO, run_cli
from dsruns import records, train_losses, write_config

from clsd_ds.dit import load_dit
from clsd_ds.train.checkpoint import COMPLETE, tag_for
from clsd_ds.train.preemption import leave_stop_signals_to_the_trainer

STEPS = 12


def same_weights(run_a, run_b) -> bool:
    a, b = load_dit(run_a / "export").state_dict(), load_dit(run_b / "export").state_dict()
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def assert_resumed_exactly(reference, run_dir, resumed_from: int) -> None:
    a, b = train_losses(reference), train_losses(run_dir)
    after = range(resumed_from + 1, STEPS + 1)
    assert [b[s] for s in after] == [a[s] for s in after]
    assert same_weights(reference, run_dir)


def lr_after(optim: dict, total: int, steps: int) -> float:
    """The trainer's learning-rate schedule after ``steps`` optimizer steps of a ``total``-step run."""
    from deepspeed.runtime.lr_schedules import WarmupCosineLR

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=optim["lr"])
    sched = WarmupCosineLR(opt, total_num_steps=total, warmup_min_ratio=0.0, warmup_num_steps=optim["warmup_steps"],
                           cos_min_ratio=optim["min_lr_ratio"], warmup_type="linear")
    for _ in range(steps):
        opt.step()
        sched.step()
    return sched.get_last_lr()[0]


def resume_message(run_dir, step: int) -> str:
    return f"resumed from {run_dir / 'checkpoints' / tag_for(step)} at step {step}"


@pytest.fixture(scope="module")
def signalled_run(shards, tmp_path_factory):
    """A 2-rank torchrun run whose rank 1 gets SIGUSR1 once a random step has been logged, and the ranks' helper
    processes SIGTERM: DataLoader workers (must leave it to their rank) and wandb's service (exits on it)."""
    tmp = tmp_path_factory.mktemp("signalled")
    run_dir = tmp / "run"
    cfg = write_config(tmp / "a.yaml", run_dir, shards, log__wandb=True)
    at_step = random.Random().randrange(2, STEPS - 1)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", WANDB_MODE="offline")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.Popen([torchrun, "--nproc_per_node", "2", "--master_port", "29631", "-m", "clsd_ds", "train",
                             "--config", str(cfg)], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while at_step not in (train_losses(run_dir) if (run_dir / "metrics.jsonl").is_file() else {}):
            assert proc.poll() is None, proc.stdout.read()[-4000:]
            assert time.time() < deadline, "timed out waiting for the step"
            time.sleep(0.02)
        ranks = {p.environ().get("RANK"): p for p in psutil.Process(proc.pid).children()}
        helpers = [h for rank in ranks.values() for h in rank.children(recursive=True)]
        assert set(ranks) == {"0", "1"} and sum(h.name() == "wandb-core" for h in helpers) == 1
        assert sum(h.name() != "wandb-core" for rank in ranks.values() for h in rank.children()) >= 4  # DataLoader
        ranks["1"].send_signal(signal.SIGUSR1)
        for helper in helpers:  # as Slurm's TERM to every process of a step would
            helper.send_signal(signal.SIGTERM)
        sent = time.time()
        output, _ = proc.communicate(timeout=300)
        exit_s = time.time() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    print(f"SIGUSR1 after step {at_step}: exit {exit_s:.2f} s later")
    return run_dir, cfg, at_step, proc.returncode, output


def test_signal_to_one_rank_checkpoints_all_and_exits_for_requeue(signalled_run):
    run_dir, _, at_step, returncode, output = signalled_run
    exit_record = json.loads((run_dir / "exit.json").read_text())
    assert exit_record["reason"] == "signal"
    stopped = exit_record["step"]
    assert at_step <= stopped < STEPS  # the step in flight when the signal came is finished first
    assert "stop requested (" in output and f"checkpoint at step {stopped} saved" in output
    assert "wandb logging stopped for this launch" in output  # its service was TERMed: the run goes on without it
    assert '"exit": "requeue"' in output  # rank 0's summary; both ranks then exit 75
    assert returncode != 0 and "exitcode  : 75" in output  # torchrun reports its workers' exit code
    assert (run_dir / "checkpoints" / "latest").read_text() == tag_for(stopped)
    assert json.loads((run_dir / "checkpoints" / tag_for(stopped) / COMPLETE).read_text())["world_size"] == 2
    assert not (run_dir / "export").exists()


@pytest.fixture(scope="module")
def resumed_after_signal(signalled_run):
    run_dir, cfg, _, _, _ = signalled_run
    stopped = json.loads((run_dir / "exit.json").read_text())["step"]
    proc = run_cli(["train", "--config", str(cfg)], nproc=2)
    return run_dir, stopped, proc


def test_relaunch_after_signal_continues_exactly(stage_a_run, resumed_after_signal):
    reference, _ = stage_a_run
    run_dir, stopped, proc = resumed_after_signal
    assert resume_message(run_dir, stopped) in proc.stdout + proc.stderr
    assert_resumed_exactly(reference, run_dir, stopped)
    meta = json.loads((run_dir / "meta.json").read_text())
    assert [s["world_size"] for s in meta["starts"]] == [2, 2] and meta["starts"][0]["git_commit"]
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert {r["restart"] for r in logged if r["kind"] == "train" and r["step"] > stopped} == {1}
    assert json.loads((run_dir / "exit.json").read_text())["reason"] == "finished"
    assert all((run_dir / "logs" / f"rank{r}.log").is_file() for r in (0, 1))
    wandb_id = (run_dir / "wandb_id").read_text().strip()
    wandb_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2 and all(p.name.endswith(f"-{wandb_id}") for p in wandb_runs)  # one wandb run


def test_report_marks_the_restart(resumed_after_signal, tmp_path):
    run_dir, stopped, _ = resumed_after_signal
    out = run_cli(["report", str(run_dir), "--out", str(tmp_path)])
    assert "starts    2" in out.stdout and f"restarts at steps [{stopped + 1}]" in out.stdout
    assert f"steps     {STEPS} of {STEPS}" in out.stdout and "last exit finished" in out.stdout
    import matplotlib.image

    for name in ("loss.png", "throughput.png"):
        image = matplotlib.image.imread(tmp_path / name)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0


def run_with_fault(shards, tmp_path, fault: str):
    """A 2-rank run of the reference config under ``CLSD_FAULT=fault``; it must fail. (run dir, config, process)"""
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "a.yaml", run_dir, shards)
    failed = run_cli(["train", "--config", str(cfg)], nproc=2, env={"CLSD_FAULT": fault}, check=False)
    assert failed.returncode != 0
    return run_dir, cfg, failed


def relaunch_matches_reference(reference, run_dir, cfg, resumed_from: int) -> None:
    resumed = run_cli(["train", "--config", str(cfg)], nproc=2)
    assert resume_message(run_dir, resumed_from) in resumed.stdout + resumed.stderr
    assert_resumed_exactly(reference, run_dir, resumed_from)


def test_kill_during_save_resumes_from_the_previous_checkpoint(stage_a_run, shards, tmp_path):
    run_dir, cfg, _ = run_with_fault(shards, tmp_path, "kill_in_save:8")
    ckpts = run_dir / "checkpoints"
    assert (ckpts / tag_for(8)).is_dir() and not (ckpts / tag_for(8) / COMPLETE).exists()  # files, no marker
    assert (ckpts / "latest").read_text() == tag_for(4)
    relaunch_matches_reference(stage_a_run[0], run_dir, cfg, 4)
    assert (ckpts / tag_for(8) / COMPLETE).is_file()


def test_nan_loss_stops_with_the_last_good_step_and_resumes_exactly(stage_a_run, shards, tmp_path):
    run_dir, cfg, failed = run_with_fault(shards, tmp_path, "nan_loss:6")
    assert "FloatingPointError: non-finite loss in step 6" in failed.stdout + failed.stderr
    assert json.loads((run_dir / "exit.json").read_text()) | {"time": None} == \
        {"reason": "nonfinite", "step": 5, "time": None}
    assert (run_dir / "checkpoints" / "latest").read_text() == tag_for(5)
    relaunch_matches_reference(stage_a_run[0], run_dir, cfg, 5)


def test_nan_loss_skip_draws_another_batch_and_counts_it(stage_a_run, shards, tmp_path):
    reference, _ = stage_a_run
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "a.yaml", run_dir, shards, train__on_nonfinite="skip")
    run_cli(["train", "--config", str(cfg)], nproc=2, env={"CLSD_FAULT": "nan_loss:3"})
    logged = records(run_dir)
    assert [logged[s]["skipped_batches"] for s in range(1, STEPS + 1)] == [0, 0] + [1] * (STEPS - 2)
    assert all(math.isfinite(r["loss"]) for r in logged.values())
    a = train_losses(reference)
    assert [logged[s]["loss"] for s in (1, 2)] == [a[1], a[2]] and logged[3]["loss"] != a[3]


def test_two_rank_zero3_checkpoint_resumes_on_one_rank(stage_a_run, tmp_path):
    """Universal checkpoint: at step 12 on 1 rank the exported model is the 2-rank run's; then 2 more steps."""
    reference, _ = stage_a_run
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copytree(reference / "checkpoints", run_dir / "checkpoints")
    cfg = json.loads((reference / "config.json").read_text()) | {"run_dir": str(run_dir)}
    cfg["log"]["wandb"] = False
    (tmp_path / "one.json").write_text(json.dumps(cfg))
    same = run_cli(["train", "--config", str(tmp_path / "one.json")], nproc=1)
    assert "(2 -> 1 ranks, 2 -> 2 workers per rank)" in same.stdout + same.stderr
    assert (run_dir / "checkpoints" / f"{tag_for(STEPS)}-universal" / "universal.json").is_file()
    assert same_weights(reference, run_dir)

    more = run_cli(["train", "--config", str(tmp_path / "one.json"), "train.steps=14"], nproc=1)
    assert f"resumed from {run_dir / 'checkpoints' / tag_for(STEPS)}-universal at step {STEPS}" in more.stdout
    logged = records(run_dir)
    assert logged[14]["samples"] == 14 * 8
    losses = train_losses(reference)
    assert all(abs(logged[s]["loss"] - losses[STEPS]) < 0.2 * losses[STEPS] for s in (13, 14))
    # the schedule goes on from iteration 12 with the new length (the replica is checked on the reference run)
    assert lr_after(cfg["optim"], total=STEPS, steps=STEPS) == pytest.approx(records(reference)[STEPS]["lr"], rel=1e-6)
    assert logged[13]["lr"] == pytest.approx(lr_after(cfg["optim"], total=14, steps=13), rel=1e-6)
    assert json.loads((run_dir / "checkpoints" / tag_for(14) / COMPLETE).read_text())["world_size"] == 1


def _worker(ready, trainer) -> None:
    leave_stop_signals_to_the_trainer(0, trainer=trainer)
    ready.set()
    time.sleep(120)


@pytest.mark.parametrize("start", ["fork", "forkserver"])
def test_workers_obey_sigterm_only_from_the_trainer(start):
    """Slurm's TERM to the whole step must not end a DataLoader worker under a training process that is about to
    checkpoint; DataLoader's shutdown and the interpreter's exit (``terminate()`` by the trainer) must — also when
    the worker's parent is a forkserver rather than the trainer."""
    import multiprocessing

    ctx = multiprocessing.get_context(start)
    if start == "forkserver":
        ctx.set_forkserver_preload(["clsd_ds.data.worker_server"])  # as the reader sets it (a no-op if running)
    ready = ctx.Event()
    worker = ctx.Process(target=_worker, args=(ready, os.getpid()), daemon=True)
    worker.start()
    try:
        assert ready.wait(30)
        for sig in ("TERM", "USR1", "TERM"):
            subprocess.run(["kill", f"-{sig}", str(worker.pid)], check=True)  # from another process
        time.sleep(1)
        assert worker.is_alive()
        worker.terminate()  # from the parent
        worker.join(10)
        assert worker.exitcode == -signal.SIGTERM
    finally:
        worker.kill()
