"""Helpers for tests that start real multi-rank DeepSpeed runs as subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import BLOCK, REPO, TINY, run_cli

SEED = 11  # Stage A and Stage C runs share it, so they build the same random-init verifier
C_STEPS, C_SAVE_EVERY = 8, 4  # Stage C test runs


def write_config(path: Path, run_dir: Path, shards: Path, stage: str = "a", **extra) -> Path:
    """A tiny 2-rank ZeRO-3 config; ``section__field=value`` keyword arguments override it."""
    cfg = {
        "run_dir": str(run_dir), "stage": stage, "seed": SEED,
        "verifier": {"random_init": TINY},
        "dit": {"num_layers": 4, "block_len": BLOCK, "checkpointing": True},
        "stage_c": {"beta_steps": 8},
        "data": {"train": str(shards / "train"), "val": str(shards / "val"), "num_workers": 2},
        "optim": {"lr": 1e-2, "warmup_steps": 2},
        "train": {"steps": 12, "batch_size": 8, "micro_batch_size": 2, "ds_config": "ds_configs/cpu_zero3.json",
                  "log_every": 1, "save_every": 4, "keep_last": 2, "eval_batches": 2,
                  "tau_prompts": 2, "tau_cycles": 2, "tau_candidates": 4, "keep_best_tau": True},
        "log": {"progress": False},
    }
    for key, value in extra.items():
        if "__" in key:
            section, field = key.split("__")
            cfg.setdefault(section, {})[field] = value
        else:
            cfg[key] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def stage_c_config(tmp: Path, name: str, shards: Path, init_from: Path, **extra) -> Path:
    """``write_config`` for a Stage C run ``tmp/name`` starting from ``init_from``."""
    return write_config(tmp / f"{name}.yaml", tmp / name, shards, stage="c", init_from=str(init_from),
                        train__steps=C_STEPS, train__save_every=C_SAVE_EVERY, **extra)


def stage_c_run(tmp: Path, shards: Path, init_from: Path, placement: str) -> Path:
    """An uninterrupted 2-rank Stage C run ``tmp/run`` under torchrun; returns its run directory."""
    cfg = stage_c_config(tmp, "run", shards, init_from, stage_c__placement=placement)
    run_cli(["train", "--config", str(cfg)], nproc=2)
    return tmp / "run"


def records(run_dir: Path, kind: str = "train") -> dict[int, dict]:
    """The last logged record of each step (a restarted run logs some steps twice)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").open():
        rec = json.loads(line)
        if rec["kind"] == kind:
            out[rec["step"]] = rec
    return out


def train_losses(run_dir: Path) -> dict[int, float]:
    return {step: rec["loss"] for step, rec in records(run_dir).items()}


def kill_after_checkpoint(cfg: Path, run_dir: Path, step: int, launcher: str = "deepspeed",
                          timeout: float = 300) -> int:
    """Start a 2-rank run, SIGKILL its whole process group once checkpoint ``step`` is complete; returns the step
    of the checkpoint a restart resumes from."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    bindir = Path(sys.executable).parent
    if launcher == "deepspeed":
        cmd = [str(bindir / "deepspeed"), "--num_gpus", "2", "--master_port", "29611", "--module", "clsd_ds"]
    else:
        cmd = [str(bindir / "torchrun"), "--nproc_per_node", "2", "--master_port", "29612", "-m", "clsd_ds"]
    proc = subprocess.Popen([*cmd, "train", "--config", str(cfg)], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    latest = run_dir / "checkpoints" / "latest"
    try:
        deadline = time.time() + timeout
        while not (latest.is_file() and latest.read_text() >= f"step{step:08d}"):
            if proc.poll() is not None:
                raise AssertionError(f"run ended before its step-{step} checkpoint:\n{proc.stdout.read()[-4000:]}")
            if time.time() > deadline:
                raise AssertionError("timed out waiting for the checkpoint")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return int(latest.read_text().removeprefix("step"))
