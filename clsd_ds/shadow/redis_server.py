"""A local ``redis-server`` with persistence on, for the one-machine launcher and the tests.

Started as ``redis-server --port P --dir D --appendonly yes --appendfsync always --save ""``: every write is in the
append-only file before Redis answers, so a restart (even after SIGKILL) keeps every added and acknowledged entry.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available() -> str | None:
    """None if ``redis-server`` can be run here (installing Debian's package when root and missing), else why not."""
    if shutil.which("redis-server"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "redis-server is not installed (Debian: apt-get install redis-server)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            return f"installing redis-server failed: {done.stderr[-500:]}"
    return None


class RedisServer:
    def __init__(self, directory: str | Path, port: int | None = None):
        self.dir = Path(directory)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> "RedisServer":
        self.dir.mkdir(parents=True, exist_ok=True)
        log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always",
                                      "--save", "", "--protected-mode", "yes"], stdout=log, stderr=log)
        client, deadline = redis.Redis(port=self.port, socket_connect_timeout=1), time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start; see {self.dir / 'redis.log'}")
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: Redis flushes and exits; SIGKILL: a crash (the append-only file still has every write)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def restart(self, sig: int = signal.SIGTERM, down_s: float = 0.0) -> None:
        self.stop(sig)
        time.sleep(down_s)
        self.start()
