"""Process-group setup for every launcher: deepspeed / torchrun (env://), srun (SLURM_*), mpirun (mpi4py), or none.

The ``deepspeed`` launcher and ``torchrun`` export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
Under ``srun`` those are derived from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and the first node of the job.
Under ``mpirun`` DeepSpeed's own MPI discovery (mpi4py) fills them in. A plain ``python -m clsd_ds ...`` is a
world of one on a free local port.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass

import torch

REQUIRED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
MPI_MARKERS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    launcher: str = "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_env() -> None:
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "localhost")
    try:
        first = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                               check=True).stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        first = nodes.split(",")[0]
    os.environ.setdefault("MASTER_ADDR", first)
    os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")


def detect_launcher(env) -> str:
    """Which launcher started this process, from its environment (read only): ``env`` (deepspeed / torchrun),
    ``slurm`` (an srun step), ``mpi`` (mpirun) or ``single``."""
    if all(k in env for k in REQUIRED):
        return "env"
    if all(k in env for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID")):
        return "slurm"
    if any(k in env for k in MPI_MARKERS):
        return "mpi"
    return "single"


def launcher_env() -> str:
    """Fill in the env:// variables from whatever launched us; returns the launcher's name."""
    launcher = detect_launcher(os.environ)
    if launcher == "slurm":
        _slurm_env()
    elif launcher == "single":
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    # mpi: deepspeed.init_distributed(auto_mpi_discovery=True) fills the variables via mpi4py
    return launcher


def init_distributed() -> DistInfo:
    """Initialise torch.distributed through DeepSpeed (idempotent) and pick this rank's device."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    launcher = launcher_env()
    accel = get_accelerator()
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=accel.communication_backend_name(), auto_mpi_discovery=True)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if accel.device_name() == "cpu":
        device = torch.device("cpu")
    else:  # with one GPU visible per task (srun --gpus-per-task=1) the local rank is not the device index
        index = local_rank % max(1, accel.device_count())
        accel.set_device(index)
        device = torch.device(accel.device_name(index))
    return DistInfo(rank, world, local_rank, device, launcher)
