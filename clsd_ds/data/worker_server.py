"""Preloaded by the forkserver that starts DataLoader workers (``data.worker_start: forkserver``); import it nowhere
else: importing it changes the importing process's signal handling.

The server is started by the training process (its parent) and forks every worker. Importing this module there
loads the reader (torch, webdataset: a forked worker starts with them imported) and applies the workers' signal
rule to the server itself: Slurm's SIGUSR1/SIGTERM to every process of a job step leave it alive (only the trainer's
SIGTERM ends it), and SIGTERM stays blocked, so that a worker forked from it starts with SIGTERM blocked in every
thread, native ones included, until its own ``worker_init_fn`` waits for the trainer's SIGTERM. The server also
ends with the trainer (a killed trainer would otherwise leave it and its workers behind: ``reader.end_with``).
"""

import os

from ..train.preemption import leave_stop_signals_to_the_trainer
from .reader import end_with

leave_stop_signals_to_the_trainer(trainer=os.getppid())
end_with(os.getppid())
