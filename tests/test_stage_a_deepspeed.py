"""Stage A for real: 2 gloo ranks under DeepSpeed ZeRO-3 with three launchers, a kill -9, resume and export.

Run A (torchrun) trains 12 steps uninterrupted. Run B starts under the `deepspeed` launcher, is killed with
SIGKILL after its step-4 checkpoint, and is resumed under `mpirun` (mpi4py discovery): its losses after the
resume must equal run A's, and so must its final weights.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import BLOCK, REPO, TINY, run_cli

from clsd_ds.dit import load_dit

STEPS, SAVE_EVERY = 12, 4


def write_config(path: Path, run_dir: Path, shards: Path, **extra) -> Path:
    cfg = {
        "run_dir": str(run_dir), "stage": "a", "seed": 11,
        "verifier": {"random_init": TINY},
        "dit": {"num_layers": 4, "block_len": BLOCK, "checkpointing": True},
        "data": {"train": str(shards / "train"), "val": str(shards / "val"), "num_workers": 2},
        "optim": {"lr": 1e-2, "warmup_steps": 2},
        "train": {"steps": STEPS, "batch_size": 8, "micro_batch_size": 2, "ds_config": "ds_configs/cpu_zero3.json",
                  "log_every": 1, "save_every": SAVE_EVERY, "keep_last": 2, "eval_batches": 2},
        "log": {"progress": False},
    }
    for key, value in extra.items():
        section, field = key.split("__")
        cfg[section][field] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_losses(run_dir: Path) -> dict[int, float]:
    """The last logged training loss of every step (a restarted run logs some steps twice)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").open():
        rec = json.loads(line)
        if rec["kind"] == "train":
            out[rec["step"]] = rec["loss"]
    return out


@pytest.fixture(scope="module")
def run_a(shards, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run_a")
    cfg = write_config(tmp / "a.yaml", tmp / "run", shards, log__wandb=True)
    proc = run_cli(["train", "--config", str(cfg)], nproc=2, env={"WANDB_DIR": str(tmp)})
    return tmp / "run", proc


def test_zero3_stage_a_trains_and_partitions(run_a):
    run_dir, proc = run_a
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (10, 11, 12)) / 3
    assert last < 0.9 * first, losses
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [e["step"] for e in evals] == [0, STEPS] and evals[1]["loss"] < evals[0]["loss"]
    train = [r for r in records if r["kind"] == "train"][-1]
    for key in ("loss_t0", "loss_t3", "grad_norm", "lr", "tok_s", "step_s", "samples"):
        assert key in train, key
    assert train["samples"] == STEPS * 8
    # ZeRO-3: each rank's optimizer holds half of the fp32 master weights; the module states hold no weights.
    ckpt = run_dir / "checkpoints" / f"step{STEPS:08d}"
    parts = [torch.load(ckpt / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt", map_location="cpu",
                        weights_only=False)["optimizer_state_dict"] for r in (0, 1)]
    model_states = torch.load(ckpt / "zero_pp_rank_0_mp_rank_00_model_states.pt", map_location="cpu",
                              weights_only=False)
    total = sum(s.numel() for s in model_states["param_shapes"][0].values())
    local = [sum(t.numel() for t in p["fp32_flat_groups"]) for p in parts]
    assert parts[0]["partition_count"] == 2
    assert all(total / 2 <= n < total / 2 + 1024 for n in local), (local, total)
    assert sum(v.numel() for v in model_states["module"].values()) < total / 100
    # keep_last=2 and the `latest` pointer
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step*")) == ["step00000008", "step00000012"]
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step{STEPS:08d}"
    assert json.loads(proc.stdout[proc.stdout.index("{"):])["end_step"] == STEPS  # rank 0's summary
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb (offline) was not written"


def test_export_reloads_into_the_trained_model(run_a):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run_dir, _ = run_a
    dit = load_dit(run_dir / "export")
    master = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag=f"step{STEPS:08d}")
    exported = dit.state_dict()
    assert set(master) == set(exported)
    for name, value in master.items():
        assert torch.equal(exported[name], value), name
    assert any(v.abs().sum() > 0 for k, v in exported.items() if "adaLN" in k)  # trained, not the zero init


def _wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, step: int, timeout: float = 300) -> None:
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if latest.is_file() and latest.read_text() >= f"step{step:08d}":
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before its step-{step} checkpoint:\n{proc.stdout.read()[-4000:]}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the checkpoint")


def test_kill_resume_on_other_launchers_matches_uninterrupted_run(run_a, shards, tmp_path):
    run_dir_a, _ = run_a
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "b.yaml", run_dir, shards)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    bindir = Path(sys.executable).parent
    proc = subprocess.Popen([str(bindir / "deepspeed"), "--num_gpus", "2", "--master_port", "29611", "--module",
                             "clsd_ds", "train", "--config", str(cfg)], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_checkpoint(run_dir, proc, SAVE_EVERY)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    resumed_from = int((run_dir / "checkpoints" / "latest").read_text().removeprefix("step"))
    assert resumed_from < STEPS
    resumed = run_cli(["train", "--config", str(cfg)], nproc=2, launcher="mpirun")
    assert f"resumed from {run_dir / 'checkpoints' / f'step{resumed_from:08d}'} at step {resumed_from}" \
        in resumed.stdout + resumed.stderr
    a, b = train_losses(run_dir_a), train_losses(run_dir)
    after = range(resumed_from + 1, STEPS + 1)
    assert [b[s] for s in after] == [a[s] for s in after]
    final_a, final_b = load_dit(run_dir_a / "export").state_dict(), load_dit(run_dir / "export").state_dict()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
