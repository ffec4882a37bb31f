"""How DataLoader workers should start: fork, forkserver or spawn (``data.worker_start``), measured.

For each start method, a rank's ``ShardLoader`` (2 workers by default) over synthetic shards at the quickstart's
shapes, created in a process that runs torch threads as the trainer does. Start-up: from creating the loader to its
first batch, for the first loader of a process and for later ones (a forkserver starts once per process).
Throughput: batches per second over the next ``--batches``. The signal rule: SIGTERM and SIGUSR1 from another
process (as Slurm sends them to every process of a step) leave every helper process alive and serving. Methods
alternate over ``--repeats`` rounds; medians are reported. ``spawn`` is measured although ``data.worker_start`` does
not offer it, to show why: a thread that the fresh interpreter starts before the worker's own set-up has SIGTERM
unblocked, so Slurm's SIGTERM ends the worker.

    python bench/worker_start.py [--out bench/results/<device>-<date>-worker_start.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

from clsd_ds.data.reader import DataConfig, ShardLoader

from synthetic_shards import write_synthetic_shards

METHODS = ("fork", "forkserver", "spawn")


def measure(shards: Path, method: str, workers: int, batch: int, batches: int) -> dict:
    torch.ones(256, 256) @ torch.ones(256, 256)  # the trainer's intra-op threads exist before the workers start
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    t0 = time.perf_counter()
    loader = ShardLoader(DataConfig(train=str(shards), num_workers=workers, worker_start=method), str(shards), batch,
                         rank=0, world_size=1)
    next(loader)
    startup = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(batches):
        next(loader)
    rate = batches / (time.perf_counter() - t1)
    children = [c for c in psutil.Process().children(recursive=True) if c.pid not in before]  # this loader's
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        for child in children:
            os.system(f"kill -{sig.name[3:]} {child.pid}")  # from another process, as Slurm's signals come
    time.sleep(0.5)
    survived = all(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    error = None
    try:
        next(loader)  # still serving
        loader.close()
    except RuntimeError as exc:  # DataLoader: "worker (pid N) is killed by signal: ..."
        error, survived = str(exc).strip(), False
        print(f"  {method}: {error}", flush=True)
    return {"startup_s": startup, "batches_per_s": rate, "processes": len(children), "survived_signals": survived,
            "error": error}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args()
    rows: dict[str, list[dict]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp)
        write_synthetic_shards(shards, 4000, vocab=512, block_len=32, prefix_len=96, hidden=128, shard_samples=500)
        for _ in range(args.repeats):
            for method in METHODS:
                rows[method].append(measure(shards, method, args.workers, args.batch, args.batches))
                print(method, rows[method][-1], flush=True)
    summary = {m: {"first_startup_s": runs[0]["startup_s"],
                   "later_startup_s": statistics.median(r["startup_s"] for r in runs[1:]) if runs[1:] else None,
                   "batches_per_s": statistics.median(r["batches_per_s"] for r in runs),
                   "processes": runs[0]["processes"],
                   "survived_signals": all(r["survived_signals"] for r in runs),
                   "errors": [r["error"] for r in runs if r["error"]]} for m, runs in rows.items()}
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "python": sys.version.split()[0], "torch": torch.__version__, "date": str(datetime.date.today()),
              "workers": args.workers, "batch": args.batch, "batches": args.batches, "summary": summary, "runs": rows}
    out = Path(args.out or f"bench/results/cpu-{datetime.date.today()}-worker_start.json")
    out.write_text(json.dumps(result, indent=1))
    for m, s in summary.items():
        print(f"{m:10s} start-up {s['first_startup_s']:.2f} s (first loader of the process), "
              f"{s['later_startup_s'] or math.nan:.2f} s (later ones), {s['batches_per_s']:.0f} batches/s, "
              f"{s['processes']} processes, signal rule kept: {s['survived_signals']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
