"""Stopping on request: SIGUSR1 / SIGTERM only set a flag; all ranks act on it together at a step boundary.

Slurm's ``--signal=USR1@T`` ahead of a time limit, ``scancel --signal=USR1``, and preemption (SIGTERM) all end the
same way: at the next step boundary every rank learns that some rank was signalled (an all-reduce), the run
saves a checkpoint, writes ``exit.json`` and exits with ``EXIT_REQUEUE`` so that the job script requeues it.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

EXIT_REQUEUE = 75  # EX_TEMPFAIL: checkpointed on request; run me again
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    """Installs the handlers (main process) and answers, for all ranks at once, whether any rank was signalled."""

    def __init__(self):
        self.received: str | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def anywhere(self, device) -> bool:
        """True on every rank if any rank has received a stop signal (one small all-reduce)."""
        flag = torch.tensor([1 if self.received else 0], device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def close(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader workers leave SIGUSR1 to the training process (Slurm may signal every process of a step). They
    keep SIGTERM: DataLoader's shutdown terminates stragglers with it, and ignoring it can hang the exit."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
