"""Checkpoints of the DeepSpeed engine in ``<run_dir>/checkpoints/<tag>``, marked complete last.

Each save: every rank writes its DeepSpeed files under tag ``step00000123``; after a barrier rank 0 writes the
tag's ``complete.json`` and then points ``latest`` at it (write + rename). A crash mid-save therefore leaves
``latest`` on the previous complete checkpoint. Pruning keeps the newest ``keep_last`` complete tags.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch.distributed as dist

COMPLETE = "complete.json"


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


def save(engine, ckpt_dir: Path, step: int, client_state: dict, keep_last: int, is_main: bool) -> float:
    """Save on all ranks, mark complete, move ``latest``, prune; returns the seconds it took."""
    t0 = time.time()
    tag = tag_for(step)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False,
                           exclude_frozen_parameters=True)  # a frozen verifier is reloaded from its own files
    dist.barrier()
    if is_main:
        (ckpt_dir / tag / COMPLETE).write_text(json.dumps({"step": step, "time": time.time()}))
        tmp = ckpt_dir / "latest.tmp"
        tmp.write_text(tag)
        tmp.replace(ckpt_dir / "latest")
        for old in complete_tags(ckpt_dir)[:-max(1, keep_last)]:
            shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    dist.barrier()
    return time.time() - t0
