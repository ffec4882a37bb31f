"""Preemption costs on the tiny shape: signal -> exit, checkpoint size and save time, relaunch -> first step.

    python bench/preemption.py [--nproc 2] [--signal-at 6] [--out bench/results/preemption_cpu.json]

Runs Stage A (the quickstart's shapes, synthetic shards, ZeRO-3 over gloo) under torchrun, sends SIGUSR1 to the
last rank once step ``--signal-at`` is logged, and times until the launcher has exited; then relaunches and
times until the first new step is logged.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml


from synthetic_shards import write_synthetic_shards
from clsd_ds.tiny import MINI

REPO = Path(__file__).resolve().parents[1]


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r["step"] for r in map(json.loads, path.open()) if r["kind"] == "train"]


def launch(cfg: Path, nproc: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = Path(sys.executable).parent / "torchrun"
    return subprocess.Popen([str(torchrun), "--nproc_per_node", str(nproc), "--master_port", "29655", "-m", "clsd_ds",
                             "train", "--config", str(cfg)], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"run ended or timed out:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.02)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--signal-at", type=int, default=6)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    arch = {**MINI, "vocab_size": 512}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic_shards(tmp / "shards", 2000, arch["vocab_size"], 32, 96, hidden=arch["hidden_size"])
        run_dir = tmp / "run"
        cfg = tmp / "a.yaml"
        cfg.write_text(yaml.safe_dump({
            "run_dir": str(run_dir), "stage": "a", "verifier": {"random_init": arch},
            "dit": {"num_layers": 4, "block_len": 32, "checkpointing": True}, "data": {"train": str(tmp / "shards")},
            "optim": {"warmup_steps": 2},
            "train": {"steps": args.steps, "batch_size": 32, "ds_config": "ds_configs/cpu_zero3.json",
                      "log_every": 1, "save_every": 1000, "export": False}, "log": {"progress": False}}))
        proc = launch(cfg, args.nproc)
        wait_for(lambda: args.signal_at in logged_steps(run_dir), proc)
        last = [c for c in psutil.Process(proc.pid).children() if c.environ().get("RANK") == str(args.nproc - 1)]
        last[0].send_signal(signal.SIGUSR1)
        sent = time.time()
        out, _ = proc.communicate()
        signal_to_exit = time.time() - sent
        summary = json.loads(out[out.index('{\n "start_step"'):out.index("\n}\n") + 2])
        stopped = json.loads((run_dir / "exit.json").read_text())
        ckpt = run_dir / "checkpoints" / f"step{stopped['step']:08d}"
        ckpt_bytes = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())

        restart = time.time()
        proc = launch(cfg, args.nproc)
        wait_for(lambda: stopped["step"] + 1 in logged_steps(run_dir), proc)
        restart_to_step = time.time() - restart
        proc.communicate()
    result = {
        "what": "Stage A, quickstart shapes (verifier d=128, 8 layers; 4-layer DiT), ZeRO-3, gloo, "
                "batch 32 x 32 tokens",
        "nproc": args.nproc, "signal": "SIGUSR1 to the last rank", "signalled_after_step": args.signal_at,
        "stopped_at_step": stopped["step"], "signal_to_exit_s": round(signal_to_exit, 2),
        "save_s": round(summary["save_s"], 3), "checkpoint_bytes": ckpt_bytes,
        "step_s": round(summary["last"]["step_s"], 3), "relaunch_to_next_step_s": round(restart_to_step, 2),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "torch": __import__(
            "torch").__version__, "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
