"""What a run directory records about each start: metadata (rank 0) and one log file per rank.

``meta.json`` holds one entry per start of the run — time, git commit, world size, launcher, Slurm job and
restart count, package versions — so the index of the current start (its ``restart`` number, also written into
every metrics record) is the number of earlier entries. ``logs/rank<N>.log`` collects each rank's warnings, its
DeepSpeed and clsd_ds log records and any uncaught exception, appended across restarts.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("torch", "deepspeed", "transformers", "flash-linear-attention", "webdataset", "numpy")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        repo = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def record_start(run_dir: Path, world_size: int, launcher: str) -> int:
    """Append this start to ``meta.json`` (call on rank 0); returns its index (0 for the first start)."""
    path = run_dir / "meta.json"
    meta = json.loads(path.read_text()) if path.is_file() else {"starts": []}
    meta["starts"].append({
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "git_commit": _git_commit(),
        "world_size": world_size, "launcher": launcher, "python": platform.python_version(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT"),
        "argv": sys.argv, "packages": {name: _version(name) for name in PACKAGES},
    })
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(path)
    return len(meta["starts"]) - 1


def write_exit(run_dir: Path, reason: str, step: int, **extra) -> None:
    """``exit.json``: why this start of the run ended (finished, signal, nonfinite)."""
    record = {"reason": reason, "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    (run_dir / "exit.json").write_text(json.dumps(record))


def log_to_rank_file(run_dir: Path, rank: int) -> None:
    """Send this rank's warnings, DeepSpeed/clsd_ds log records and uncaught exceptions to logs/rank<N>.log."""
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "logs" / f"rank{rank}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.captureWarnings(True)
    ours = logging.getLogger("clsd_ds")
    if not ours.handlers:  # warnings still reach the console, INFO records only the file
        console = logging.StreamHandler()
        console.setLevel(logging.WARNING)
        ours.addHandler(console)
    ours.setLevel(logging.INFO)
    for name in ("clsd_ds", "DeepSpeed", "py.warnings"):
        logger = logging.getLogger(name)
        if not any(getattr(h, "baseFilename", None) == handler.baseFilename for h in logger.handlers):
            logger.addHandler(handler)
    previous = sys.excepthook

    def excepthook(kind, value, tb):
        logging.getLogger("clsd_ds").error("uncaught exception", exc_info=(kind, value, tb))
        previous(kind, value, tb)

    sys.excepthook = excepthook
