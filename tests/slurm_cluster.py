"""A real one-node Slurm cluster for tests: Debian's slurm-wlm + munge, started as root in a folder of our own
(which, and its parents, must be o+x for munged's socket). ``cred_expire=5`` lets a requeued job start again
within seconds instead of two minutes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

CONF = """\
ClusterName=clsdtest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={base}/munge/munge.socket,cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
SchedulerParameters=defer_batch
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/slurmctld.log
SlurmdLogFile={base}/slurmd.log
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
NodeName=localhost CPUs={cpus} RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def available() -> str | None:
    """None if a local Slurm can be run here, else why not."""
    if os.geteuid() != 0:
        return "needs root (slurmd and munged run as root)"
    if shutil.which("slurmctld") and shutil.which("munged"):
        return None
    if not shutil.which("apt-get"):
        return "slurm-wlm/munge are not installed and apt-get is not available"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            return f"installing slurm-wlm/munge failed: {done.stderr[-500:]}"
    return None


class LocalSlurm:
    def __init__(self, base: Path, cpus: int | None = None):
        self.base = base
        self.cpus = cpus or os.cpu_count()
        self.conf = base / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self) -> "LocalSlurm":
        b = self.base
        for sub in ("munge", "state", "spool"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(b / "munge", 0o755)  # 700 makes munged refuse its socket
        key = b / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        subprocess.run(["munged", f"--key-file={key}", f"--socket={b}/munge/munge.socket",
                        f"--pid-file={b}/munge/munged.pid", f"--log-file={b}/munge/munged.log",
                        f"--seed-file={b}/munge/munged.seed"], check=True)
        self.conf.write_text(CONF.format(base=b, cpus=self.cpus, ctld_port=_port(), d_port=_port()))
        subprocess.run(["slurmctld", "-i", "-f", str(self.conf)], check=True, env=self.env)
        subprocess.run(["slurmd", "-N", "localhost", "-f", str(self.conf)], check=True, env=self.env)
        deadline = time.time() + 60
        while time.time() < deadline:
            state = self.run(["sinfo", "-h", "-n", "localhost", "-o", "%t"], check=False).stdout.strip()
            if state.startswith("idle"):
                return self
            time.sleep(0.2)
        raise RuntimeError(f"the local Slurm node did not become idle:\n{(b / 'slurmctld.log').read_text()[-3000:]}")

    def run(self, cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=check, **kw)

    def sbatch(self, args: list[str], env: dict | None = None, cwd: Path | None = None) -> str:
        out = subprocess.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})}, capture_output=True,
                             text=True, check=True, cwd=cwd).stdout
        return out.strip().split(";")[0]

    def job(self, job_id: str) -> dict:
        """scontrol's view of a job as key -> value."""
        out = self.run(["scontrol", "show", "job", job_id, "-o"], check=False).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def wait(self, job_id: str, states: set[str], timeout: float = 600) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} not in {states} after {timeout} s: {self.job(job_id)}")

    def stop(self) -> None:
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            path = self.base / pid_file
            if path.is_file():
                try:
                    os.kill(int(path.read_text().strip()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(1)


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
