"""Streaming shard reader: split by rank and worker, deterministic order, exact resume.

Each rank runs ``num_workers`` logical workers (global worker g = rank * W + w). For epoch e the shard order is a
permutation seeded by (seed, e), the same on every rank. With at least one shard per global worker, worker g reads
shards order[g::G]; with fewer shards, every worker reads every shard and keeps the samples whose epoch-wide
index is g modulo G. Inside a shard, samples are permuted by (seed, e, shard). So every sample is read exactly
once per epoch, in an order fixed by the seed. Workers stream forever (epoch after epoch) and batch themselves;
PyTorch's DataLoader hands out their batches round-robin, so a rank's batch sequence is fixed too.

Worker processes start with ``data.worker_start``. ``fork`` copies the training process, threads and all: on
CPython < 3.11.8 a child forked from the multi-threaded trainer can deadlock in the interpreter's after-fork code
(gh-112275) and the run then waits forever. ``forkserver`` forks workers from a small single-threaded server
process instead (it imports this module once, so a worker starts as fast as a fork; ``worker_server.py``).
``auto`` takes forkserver where fork is known to deadlock, fork elsewhere (measured in ``bench/worker_start.py``;
``spawn`` is not offered: a fresh interpreter starts a thread with SIGTERM unblocked before the worker's own set-up,
so Slurm's SIGTERM to every process of a step would end the worker).

Position: per logical worker (epoch, shard index in its plan, samples taken from that shard), carried in every
batch, plus which worker is next. Restoring it skips whole shards by the manifest's counts, then the samples
already taken, and rotates worker ids so the round-robin resumes where it stopped.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import random
import select
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..config import ConfigError
from ..train.preemption import leave_stop_signals_to_the_trainer, stop_signals_blocked
from .format import Manifest, ShardError, decode_sample

log = logging.getLogger("clsd_ds.data")


@dataclass
class DataConfig:
    train: str = ""  # shard directory written by prepare-data (holds manifest.json)
    val: str | None = None  # held-out shard directory for evaluation
    num_workers: int = 2  # DataLoader workers per rank (0: read in the training process)
    worker_start: Literal["auto", "fork", "forkserver"] = "auto"  # how worker processes start (above)
    shuffle: bool = True
    on_corrupt: Literal["error", "skip"] = "error"  # skip: drop the shard, log it, count it
    seed: int = 0

    def validate(self) -> None:  # data.train is required by the stages that read shards (RunConfig.validate)
        if self.num_workers < 0:
            raise ConfigError(f"field 'data.num_workers': expected >= 0, got {self.num_workers}")


def collate(samples: list[dict]) -> dict:
    """Stack samples; prefixes are right-padded with 0 and their lengths kept in ``prefix_len``."""
    lengths = torch.tensor([len(s["prefix"]) for s in samples])
    prefix = torch.zeros(len(samples), int(lengths.max()), dtype=torch.long)
    for i, s in enumerate(samples):
        prefix[i, : len(s["prefix"])] = s["prefix"]
    batch = {"prefix": prefix, "prefix_len": lengths, "keys": [s["__key__"] for s in samples]}
    for name in ("block", "cond", "emb"):
        if name in samples[0]:
            batch[name] = torch.stack([s[name] for s in samples])
    return batch


def to_device(batch: dict, device: torch.device) -> dict:
    """A batch with its tensors on ``device`` (other entries, e.g. keys, as they are)."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


class ShardStream(IterableDataset):
    """Batches of one rank's share of a shard directory; see the module docstring for the order."""

    def __init__(self, directory: str | Path, batch_size: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, seed: int = 0, shuffle: bool = True,
                 on_corrupt: Literal["error", "skip"] = "error", state: dict | None = None, infinite: bool = True):
        self.dir = Path(directory)
        self.manifest = Manifest.read(self.dir)
        self.batch_size, self.rank, self.world = batch_size, rank, world_size
        self.workers = max(1, num_workers)
        self.seed, self.shuffle, self.on_corrupt, self.infinite = seed, shuffle, on_corrupt, infinite
        total = self.world * self.workers
        if len(self.manifest.shards) < total and self.manifest.samples < total:
            raise ConfigError(f"shard directory '{self.dir}': {self.manifest.samples} samples cannot feed "
                              f"{self.world} ranks x {self.workers} workers; use fewer workers or more data")
        self.positions = {w: (0, 0, 0) for w in range(self.workers)}
        self.first_worker = 0
        if state is not None:
            if (state["world_size"], state["num_workers"]) != (self.world, self.workers):
                raise ConfigError(
                    f"data position was saved with {state['world_size']} ranks x {state['num_workers']} workers, "
                    f"now {self.world} x {self.workers}: exact resume needs the same layout (set data.num_workers "
                    f"to {state['num_workers']})")
            self.positions = {int(w): tuple(p) for w, p in state["workers"].items()}
            self.first_worker = state["next_worker"]

    # -- the epoch plan -------------------------------------------------------------------------------
    def _plan(self, epoch: int, g: int) -> tuple[list[int], int | None]:
        """(shard indices this global worker reads in ``epoch``, sample stride when samples are split)."""
        order = list(range(len(self.manifest.shards)))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        total = self.world * self.workers
        if len(order) >= total:
            return order[g::total], None
        return order, total

    def _read_shard(self, index: int, epoch: int) -> list[dict]:
        info = self.manifest.shards[index]
        path = self.dir / info.name
        try:
            raw = list(wds.tarfile_samples([{"url": str(path)}], handler=wds.reraise_exception))
            samples = [decode_sample(r) for r in raw]
            if len(samples) != info.samples:
                raise ShardError(f"{len(samples)} samples read, the manifest says {info.samples} (truncated?)")
            for s in samples:
                missing = [f for f in self.manifest.fields if f not in s]
                if missing:
                    raise ShardError(f"sample '{s['__key__']}' lacks field(s) {missing}")
        except Exception as exc:  # noqa: BLE001 - any failure to read the shard is reported the same way
            error = ShardError(f"corrupt shard '{path}': {exc}")
            if self.on_corrupt == "error":
                raise error from exc
            self.skipped += 1
            log.warning("%s; skipped (%d corrupt shard(s) skipped by this worker)", error, self.skipped)
            return []
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}:{index}").shuffle(samples)
        return samples

    def position_after(self, samples: int) -> dict:
        """A state that starts each worker a proportional way into the epoch containing global sample
        ``samples``: for a resume on another layout. The count is kept; which samples were seen is not."""
        total = self.manifest.samples
        epoch, within = divmod(samples, total)
        groups = self.world * self.workers
        workers = {}
        for w in range(self.workers):
            g = self.rank * self.workers + w
            shards, stride = self._plan(epoch, g)
            skip, position, base = within // groups, (epoch, len(shards), 0), 0
            for k, index in enumerate(shards):
                n = self.manifest.shards[index].samples
                mine = range(n) if stride is None else [j for j in range(n) if (base + j) % stride == g]
                base += n
                if skip < len(mine):
                    position = (epoch, k, mine[skip])
                    break
                skip -= len(mine)
            workers[str(w)] = list(position)
        return {"world_size": self.world, "num_workers": self.workers, "rank": self.rank, "workers": workers,
                "next_worker": 0}

    def _samples(self, g: int, position: tuple[int, int, int]) -> Iterator[tuple[dict, tuple[int, int, int]]]:
        """(sample, position after it) for global worker g, from ``position`` on."""
        epoch, first_shard, offset = position
        while True:
            shards, stride = self._plan(epoch, g)
            counts = [self.manifest.shards[i].samples for i in shards]
            produced = 0
            for k in range(first_shard, len(shards)):
                samples = self._read_shard(shards[k], epoch)
                base = sum(counts[:k])
                for j in range(offset if k == first_shard else 0, len(samples)):
                    if stride is None or (base + j) % stride == g:
                        produced += 1
                        yield samples[j], (epoch, k, j + 1)
            if produced == 0 and first_shard == 0 and offset == 0:
                raise ShardError(f"shard directory '{self.dir}': worker {g} read no sample in epoch {epoch} "
                                 f"(all its shards corrupt?)")
            if not self.infinite:
                return
            epoch, first_shard, offset = epoch + 1, 0, 0

    def __iter__(self):
        info = get_worker_info()
        logical = ((info.id if info else 0) + self.first_worker) % self.workers
        self.skipped = 0
        batch, position = [], self.positions[logical]
        for sample, position in self._samples(self.rank * self.workers + logical, self.positions[logical]):
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield self._finish(batch, logical, position)
                batch = []
        if batch:
            yield self._finish(batch, logical, position)

    def _finish(self, samples: list[dict], worker: int, position: tuple[int, int, int]) -> dict:
        batch = collate(samples)
        batch["meta"] = {"worker": worker, "position": position, "skipped": self.skipped}
        return batch


FORK_DEADLOCKS = sys.version_info < (3, 11, 8)  # CPython gh-112275


def worker_start_method(requested: str) -> str:
    """The start method for DataLoader workers: ``auto`` is forkserver where fork can deadlock, else fork."""
    if requested == "auto":
        return "forkserver" if FORK_DEADLOCKS else "fork"
    return requested


def end_with(pid: int) -> None:
    """End this process (``os._exit``) as soon as process ``pid`` has ended. A forkserver worker's parent is the
    server, and every worker holds the server's liveness pipe open, so neither notices by itself that the trainer
    was killed (``kill -9``, a crash): without this, the orphans would live on, holding the job's output pipes."""

    def watch() -> None:
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # no pidfd (Linux < 5.3, or pid already gone): poll
            while _alive(pid):
                time.sleep(1.0)
        else:
            select.select([fd], [], [])
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name=f"end-with-{pid}").start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError: it exists, as another user's
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def init_worker(worker_id: int, trainer: int) -> None:
    """DataLoader ``worker_init_fn``: Slurm's signals are the trainer's to act on, and the worker ends with it."""
    leave_stop_signals_to_the_trainer(worker_id, trainer=trainer)
    end_with(trainer)


def worker_context(requested: str):
    """The multiprocessing context for ``data.worker_start``; a forkserver preloads ``worker_server``."""
    method = worker_start_method(requested)
    if method == "fork" and FORK_DEADLOCKS:
        log.warning("data.worker_start=fork on Python %s can deadlock a DataLoader worker while it is forked from "
                    "the multi-threaded trainer (CPython gh-112275, fixed in 3.11.8): the run would then wait for "
                    "it forever; use data.worker_start=auto or forkserver", sys.version.split()[0])
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        # A forkserver worker re-runs the main module (python -m X: module X; a script such as the clsd-ds console
        # command: the script) before it starts. Preloaded by the server, what that imports is loaded once instead
        # of in every worker (seconds). CPython 3.11's forkserver ignores "__main__" for scripts, so the CLI's
        # module is preloaded by name, which covers the console command and the bench scripts' imports.
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        main = {"clsd_ds.__main__"} | ({spec.name} if spec else set())
        ctx.set_forkserver_preload([f"{__package__}.worker_server", *sorted(main)])
    return ctx


class ShardLoader:
    """A rank's training batches (via DataLoader workers) and the position to resume them exactly.

    The workers leave Slurm's signals (sent to every process of a job step) to the training process, which decides
    when to stop (``leave_stop_signals_to_the_trainer``). ``close`` ends them now (dropping the loader ends them
    too, when it is collected).
    """

    def __init__(self, cfg: DataConfig, directory: str, batch_size: int, rank: int, world_size: int,
                 state: dict | None = None, pin_memory: bool = False):
        self.dataset = ShardStream(directory, batch_size, rank, world_size, cfg.num_workers, cfg.seed,
                                   cfg.shuffle, cfg.on_corrupt, state=state)
        self.positions = dict(self.dataset.positions)
        self.first_worker = self.dataset.first_worker
        self.batches = 0
        self.skipped = {}
        workers = {}
        if cfg.num_workers:
            # the trainer's pid, not the worker's parent: a forkserver worker's parent is the server
            workers = dict(multiprocessing_context=worker_context(cfg.worker_start), prefetch_factor=4,
                           worker_init_fn=functools.partial(init_worker, trainer=os.getpid()))
        self.loader = DataLoader(self.dataset, batch_size=None, num_workers=cfg.num_workers, pin_memory=pin_memory,
                                 **workers)
        with stop_signals_blocked():  # the workers and multiprocessing's helpers start shielded from Slurm's signals
            self._it = iter(self.loader)
        if cfg.num_workers:
            log.info("%d DataLoader workers per rank, started by %s", cfg.num_workers,
                     worker_start_method(cfg.worker_start))

    def close(self) -> None:
        """Ends the workers now rather than whenever the iterator is collected: torch's own shutdown (the workers
        finish, stragglers are terminated by this process, which they obey)."""
        it, self._it = self._it, None
        if hasattr(it, "_shutdown_workers"):  # a multi-worker iterator
            it._shutdown_workers()

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self._it)
        meta = batch.pop("meta")
        self.positions[meta["worker"]] = tuple(meta["position"])
        self.skipped[meta["worker"]] = meta["skipped"]
        self.batches += 1
        return batch

    @property
    def skipped_shards(self) -> int:
        return sum(self.skipped.values())

    def state_dict(self) -> dict:
        """Where this rank stands: restore with ``ShardLoader(..., state=...)``."""
        workers = self.dataset.workers
        return {"world_size": self.dataset.world, "num_workers": workers, "rank": self.dataset.rank,
                "workers": {str(w): list(p) for w, p in self.positions.items()},
                "next_worker": (self.first_worker + self.batches) % workers}


def eval_batches(directory: str, batch_size: int, rank: int, world_size: int, limit: int) -> list[dict]:
    """The first ``limit`` batches of this rank's share of a held-out directory, in file order (no shuffle)."""
    stream = ShardStream(directory, batch_size, rank, world_size, num_workers=0, shuffle=False, infinite=False)
    out = []
    for batch in stream:
        batch.pop("meta")
        out.append(batch)
        if len(out) == limit:
            break
    return out
