"""Checkpoints of the DeepSpeed engine in ``<run_dir>/checkpoints/<tag>``, marked complete last.

Each save: every rank writes its DeepSpeed files under tag ``step00000123``; after a barrier rank 0 writes the
tag's ``complete.json`` (step, world size) and then points ``latest`` at it (write + rename). A crash mid-save
therefore leaves ``latest`` on the previous complete checkpoint. Pruning keeps the newest ``keep_last`` complete
tags. A checkpoint written by another number of ranks is converted once into DeepSpeed's universal format
(``<tag>-universal``, marked by ``universal.json``), which any world size can load.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch.distributed as dist

from . import faults

COMPLETE = "complete.json"
UNIVERSAL = "universal.json"


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Complete checkpoint tags, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p.name for p in ckpt_dir.iterdir() if (p / COMPLETE).is_file())


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag ``latest`` names, if that checkpoint is complete; else the newest complete one."""
    latest = ckpt_dir / "latest"
    if latest.is_file():
        tag = latest.read_text().strip()
        if (ckpt_dir / tag / COMPLETE).is_file():
            return tag
    tags = complete_tags(ckpt_dir)
    return tags[-1] if tags else None


def saved_world_size(ckpt_dir: Path, tag: str) -> int | None:
    return json.loads((ckpt_dir / tag / COMPLETE).read_text()).get("world_size")


def save(engine, ckpt_dir: Path, step: int, client_state: dict, keep_last: int, is_main: bool) -> float:
    """Save on all ranks, mark complete, move ``latest``, prune; returns the seconds it took."""
    t0 = time.time()
    tag = tag_for(step)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False,
                           exclude_frozen_parameters=True)  # a frozen verifier is reloaded from its own files
    dist.barrier()
    if is_main:
        if faults.planned("kill_in_save", step, 0):
            os.kill(os.getpid(), signal.SIGKILL)
        marker = {"step": step, "time": time.time(), "world_size": client_state["world_size"]}
        (ckpt_dir / tag / COMPLETE).write_text(json.dumps(marker))
        tmp = ckpt_dir / "latest.tmp"
        tmp.write_text(tag)
        tmp.replace(ckpt_dir / "latest")
        for old in complete_tags(ckpt_dir)[:-max(1, keep_last)]:
            shutil.rmtree(ckpt_dir / old, ignore_errors=True)
            shutil.rmtree(ckpt_dir / f"{old}-universal", ignore_errors=True)
    dist.barrier()
    return time.time() - t0


def universal(ckpt_dir: Path, tag: str, is_main: bool) -> str:
    """The tag of ``tag`` in DeepSpeed's universal format, converting it once (rank 0; every rank waits)."""
    out = f"{tag}-universal"
    if is_main and not (ckpt_dir / out / UNIVERSAL).is_file():
        shutil.rmtree(ckpt_dir / out, ignore_errors=True)
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(ckpt_dir / tag),
               "--output_folder", str(ckpt_dir / out)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"converting {ckpt_dir / tag} to a universal checkpoint failed:\n{done.stderr[-4000:]}")
        (ckpt_dir / out / UNIVERSAL).write_text(json.dumps({"from": tag, "time": time.time()}))
    dist.barrier()
    return out
