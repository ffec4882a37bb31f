"""Stopping on request: SIGUSR1 / SIGTERM only set a flag; all ranks act on it together at a step boundary.

Slurm's ``--signal=USR1@T`` ahead of a time limit, ``scancel --signal=USR1``, and preemption (SIGTERM) all end the
same way: at the next step boundary every rank learns that some rank was signalled (an all-reduce), the run
saves a checkpoint, writes ``exit.json`` and exits with ``EXIT_REQUEUE`` so that the job script requeues it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import torch
import torch.distributed as dist

EXIT_REQUEUE = 75  # EX_TEMPFAIL: checkpointed on request; run me again
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    """Installs the handlers (main process) and answers, for all ranks at once, whether any rank was signalled."""

    def __init__(self):
        self.received: str | None = None
        self.agreed = False  # some rank was signalled, and every rank knows it
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def anywhere(self, device) -> bool:
        """True on every rank if any rank has received a stop signal (one small all-reduce)."""
        flag = torch.tensor([1 if self.received else 0], device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.agreed = bool(flag.item())
        return self.agreed

    def close(self) -> None:
        """Restores the previous handlers; after an agreed stop this process is on its way out with
        ``EXIT_REQUEUE``, and later signals are ignored instead: srun ends a step with SIGTERM as soon as its
        first task has exited (``--kill-on-bad-exit``), and preemption may signal more than once."""
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_IGN if self.agreed else handler)


@contextlib.contextmanager
def stop_signals_blocked():
    """Blocks SIGUSR1/SIGTERM in the calling thread meanwhile; a signal that arrives is delivered when it ends.
    Processes and threads started meanwhile begin with both blocked (the mask survives fork and exec), so a
    DataLoader worker, multiprocessing's resource tracker or forkserver cannot be ended by Slurm's signals before
    it has set up its own rule (``leave_stop_signals_to_the_trainer``) — native threads included."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def leave_stop_signals_to_the_trainer(_worker_id: int = 0, trainer: int | None = None) -> None:
    """DataLoader ``worker_init_fn``. Slurm signals every process of a job step, but stopping is the training
    process's decision: a worker ignores SIGUSR1, and SIGTERM unless the trainer (pid ``trainer``, by default the
    parent) sent it (DataLoader's shutdown and the interpreter's exit end workers that way, so those still work)."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the trainer's flag-setting handler inherited by fork
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later inherit the mask
    threading.Thread(target=_obey_sigterm_from_trainer, args=(trainer or os.getppid(),), daemon=True,
                     name="sigterm-from-parent").start()


def _obey_sigterm_from_trainer(trainer: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != trainer:
        pass
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    signal.raise_signal(signal.SIGTERM)  # default action: the worker ends as terminate() expects
