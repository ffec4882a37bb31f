"""A Python sandbox for code written by a model: one contained child process per run.

Layers, outermost first (``isolation()`` reports which hold on this machine):
    process group   the child starts its own session; at the wall limit or the output limit the whole group is
                    killed (SIGKILL), and so is a pid namespace's every process (below)
    namespaces      ``unshare --net --pid --fork --kill-child`` (util-linux): a network namespace with no
                    interface up (every connect fails: network unreachable) and a pid namespace whose processes all
                    die with the run; as root directly, otherwise in a user namespace (``--map-root-user``) where
                    the kernel allows unprivileged ones; where neither works the run has no namespaces, and
                    ``isolation()["network"]`` says so
    user            as root, the program runs as ``nobody`` (``setpriv``): it cannot write the project or read
                    root-only files, and RLIMIT_NPROC (which root ignores) applies
    rlimits         CPU seconds, address space, processes, open files, file size (SIGXFSZ past it), no core files
    interpreter     ``python -I -S -B`` (isolated: no site-packages, no PYTHON* variables, no bytecode written) in an
                    empty temporary directory that is deleted afterwards, with a scrubbed environment; a PEP 578
                    audit hook, installed before the program runs, refuses: opening files outside the directory
                    (reads also allowed in the standard library), listing, renaming or deleting outside it,
                    sockets, subprocesses, exec, fork, signals to other processes, ctypes and the modules that
                    bypass these (``_posixsubprocess``, ``_ctypes``), and walking the interpreter's objects
                    (``gc.get_objects``)
    output          stdout and stderr are read up to ``output_bytes`` together; past it the run is killed

The audit hook is one layer, not a boundary by itself (CPython's documentation says as much): the kernel's limits,
the namespaces and the unprivileged user are what hold if a program gets past it. A run's ``status`` is ``ok``
(exited by itself; ``exit_code`` says how), ``timeout`` (wall or CPU limit), or ``error`` with the ``reason``
(killed by a limit or a signal, the output limit, a refused operation, an exception escaping the program).
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from ..config import ConfigError

#  The program's process: stdlib only (it runs under -I -S), reads its limits from argv[1] and runs ./main.py.
BOOTSTRAP = r'''
import json, os, resource, sys, traceback
lim = json.loads(sys.argv[1])
pid = os.fork()
if pid:  # the first process (pid 1 of its namespace, if there is one): wait, report how the worker ended
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(70)
        except InterruptedError:
            continue
    os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
MB = 1 << 20
for name, value in (("CPU", (lim["cpu_s"], lim["cpu_s"] + 1)), ("AS", (lim["memory_mb"] * MB,) * 2),
                    ("NPROC", (lim["processes"],) * 2), ("NOFILE", (lim["open_files"],) * 2),
                    ("FSIZE", (lim["file_size_mb"] * MB,) * 2), ("CORE", (0, 0))):
    resource.setrlimit(getattr(resource, "RLIMIT_" + name), value)
HOME = os.path.realpath(os.getcwd())
READ = [HOME] + [os.path.realpath(p) for p in lim["read_roots"]]
DENY = {"socket.__new__", "socket.bind", "socket.connect", "socket.getaddrinfo", "socket.sendto", "os.system",
        "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
        "os.killpg", "signal.pthread_kill", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "gc.get_objects",
        "gc.get_referrers", "gc.get_referents", "sys._current_frames", "os.chroot",
        "os.setuid", "os.setgid", "pty.spawn", "sys.addaudithook", "os.startfile", "webbrowser.open"}
MODULES = {"_posixsubprocess", "_ctypes", "ctypes", "_socket", "socket", "_xxsubinterpreters", "_testcapi",
           "_testinternalcapi"}
PATHS = {"os.listdir": (0,), "os.scandir": (0,), "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,),
         "os.rename": (0, 1), "os.link": (0, 1), "os.symlink": (0, 1), "os.chmod": (0,), "os.chown": (0,),
         "os.truncate": (0,), "os.utime": (0,), "os.chdir": (0,), "shutil.rmtree": (0,), "os.chflags": (0,)}
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def inside(path, roots):
    if isinstance(path, int):
        return True
    real = os.path.realpath(os.fsdecode(path))
    return any(real == r or real.startswith(r + os.sep) for r in roots)

def hook(event, args):
    if event in DENY:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import" and args[0].split(".")[0] in MODULES:
        raise PermissionError(f"sandbox: import of {args[0]} is not allowed")
    if event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags & WRITE)
        if path is not None and not inside(path, [HOME] if writes else READ):
            raise PermissionError(f"sandbox: open of {path!r} is not allowed")
    elif event in PATHS:
        roots = READ if event in ("os.listdir", "os.scandir") else [HOME]
        for i in PATHS[event]:
            if i < len(args) and args[i] is not None and not inside(args[i], roots):
                raise PermissionError(f"sandbox: {event} of {args[i]!r} is not allowed")

source = open("main.py", encoding="utf-8").read()
if lim["audit_hook"]:
    sys.addaudithook(hook)
sys.argv = ["main.py"]
sys.path = [p for p in sys.path if inside(p, READ)]
try:
    exec(compile(source, "main.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit as exc:
    raise
except BaseException as exc:
    traceback.print_exc()
    sys.stderr.write(f"\nsandbox-exception: {type(exc).__name__}: {exc}"[:500] + "\n")
    sys.stderr.flush()
    os._exit(1)
'''


@dataclass
class SandboxConfig:
    cpu_s: int = 5  # RLIMIT_CPU: SIGXCPU at the limit, SIGKILL a second later
    wall_s: float = 10.0  # the whole group is killed after this many seconds
    memory_mb: int = 512  # RLIMIT_AS
    processes: int = 8  # RLIMIT_NPROC (of the sandbox's user; root ignores it, hence ``user``)
    open_files: int = 32  # RLIMIT_NOFILE
    file_size_mb: int = 8  # RLIMIT_FSIZE: a write past it gets SIGXFSZ
    output_bytes: int = 1 << 20  # stdout + stderr kept; past it the run is killed
    user: str | None = "nobody"  # when running as root, run the program as this user (None: stay root)
    python: str | None = None  # the interpreter; None: this one, else /usr/bin/python3, whichever the user can run
    namespaces: Literal["auto", "off"] = "auto"  # network + pid namespaces where the kernel allows them
    audit_hook: bool = True  # off only to test the layers under it

    def validate(self) -> None:
        for name in ("cpu_s", "wall_s", "memory_mb", "processes", "open_files", "file_size_mb", "output_bytes"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"field 'sandbox.{name}': expected a positive number, got {getattr(self, name)}")
        if self.namespaces not in ("auto", "off"):
            raise ConfigError(f"field 'sandbox.namespaces': expected 'auto' or 'off', got {self.namespaces!r}")


@dataclass
class RunResult:
    status: Literal["ok", "timeout", "error"]
    exit_code: int | None
    stdout: str
    stderr: str
    reason: str = ""
    seconds: float = 0.0
    isolation: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@functools.cache
def _namespace_prefix() -> tuple[str, ...] | None:
    """The ``unshare`` command that works here (root: plain; otherwise inside a user namespace), or None."""
    if shutil.which("unshare") is None:
        return None
    base = ("unshare", "--net", "--pid", "--fork", "--kill-child")
    for prefix in ((base,) if os.geteuid() == 0 else ()) + (base[:1] + ("--map-root-user",) + base[1:],):
        try:
            if subprocess.run(prefix + ("true",), capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


PROBE = ("import json, sys, sysconfig; p = sysconfig.get_paths(); print(json.dumps({'executable': sys.executable, "
         "'version': sys.version.split()[0], 'roots': [p['stdlib'], p['platstdlib']] + sys.path}))")


@functools.cache
def _interpreter(candidates: tuple[str, ...], as_user: tuple[str, ...]) -> dict:
    """The first candidate the sandbox's user can run with its standard library: {executable, version, roots}
    (the standard library's directories, the only reads allowed outside the run's own directory)."""
    tried = []
    for python in candidates:
        try:
            done = subprocess.run(list(as_user) + [python, "-I", "-S", "-B", "-c", PROBE], capture_output=True,
                                  text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
            info = json.loads(done.stdout) if done.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            info, done = None, exc
        if info and os.path.realpath(info["executable"]) == os.path.realpath(python):
            roots = sorted({os.path.realpath(r) for r in info["roots"] if r and os.path.isdir(r)})
            return {"executable": python, "version": info["version"], "roots": roots}
        tried.append(f"{python}: {getattr(done, 'stderr', '') or done!s}".strip()[:200])
    raise ConfigError("field 'sandbox.python': no interpreter the sandbox's user can run with its standard library "
                      f"(tried {'; '.join(tried)}); set sandbox.python to one it can read (e.g. /usr/bin/python3), "
                      "or sandbox.user: null")


class Sandbox:
    """``Sandbox(cfg).run(source)`` -> RunResult; each run in a new process and a new empty directory."""

    def __init__(self, cfg: SandboxConfig | None = None):
        self.cfg = cfg or SandboxConfig()
        self.cfg.validate()
        user = self._user()
        self.as_user = ("setpriv", f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}", "--clear-groups",
                        "--inh-caps=-all", "--") if user else ()
        candidates = (self.cfg.python,) if self.cfg.python else (sys.executable, "/usr/bin/python3")
        self.interpreter = _interpreter(candidates, self.as_user)

    def isolation(self) -> dict:
        """What holds on this machine: namespaces (network, pid), the user the program runs as, and the rest."""
        prefix = _namespace_prefix() if self.cfg.namespaces == "auto" else None
        user = self._user()
        return {"network": "namespace" if prefix else "host network (no namespace available)",
                "pid_namespace": prefix is not None, "user_namespace": bool(prefix and "--map-root-user" in prefix),
                "user": user or pwd.getpwuid(os.geteuid()).pw_name, "python": self.interpreter["executable"],
                "python_version": self.interpreter["version"], "rlimits": True, "audit_hook": self.cfg.audit_hook,
                "process_group_kill": True}

    def _user(self) -> str | None:
        if os.geteuid() != 0 or not self.cfg.user:
            return None
        try:
            pwd.getpwnam(self.cfg.user)
        except KeyError:
            raise ConfigError(f"field 'sandbox.user': no user {self.cfg.user!r} on this machine") from None
        return self.cfg.user

    def command(self) -> list[str]:
        limits = {k: getattr(self.cfg, k) for k in ("cpu_s", "memory_mb", "processes", "open_files",
                                                    "file_size_mb", "audit_hook")}
        limits["read_roots"] = self.interpreter["roots"]
        cmd = list(self.as_user) + [self.interpreter["executable"], "-I", "-S", "-B", "-c", BOOTSTRAP,
                                    json.dumps(limits)]
        prefix = _namespace_prefix() if self.cfg.namespaces == "auto" else None
        return list(prefix or ()) + cmd

    def run(self, source: str, stdin: str = "") -> RunResult:
        start = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix="clsd-sandbox-"))
        try:
            (work / "main.py").write_text(source, encoding="utf-8")
            user = self._user()
            if user:
                entry = pwd.getpwnam(user)
                os.chown(work, entry.pw_uid, entry.pw_gid)
                os.chown(work / "main.py", entry.pw_uid, entry.pw_gid)
            env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work)}
            proc = subprocess.Popen(self.command(), cwd=work, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
            return self._wait(proc, stdin, start)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _wait(self, proc: subprocess.Popen, stdin: str, start: float) -> RunResult:
        cfg, kept, lock, over = self.cfg, {"out": bytearray(), "err": bytearray()}, threading.Lock(), threading.Event()

        def drain(stream, key):
            for chunk in iter(lambda: stream.read1(65536), b""):
                with lock:
                    room = cfg.output_bytes - len(kept["out"]) - len(kept["err"])
                    kept[key] += chunk[:max(room, 0)]
                    if len(chunk) > room:
                        over.set()
                        return

        readers = [threading.Thread(target=drain, args=(proc.stdout, "out"), daemon=True),
                   threading.Thread(target=drain, args=(proc.stderr, "err"), daemon=True)]
        for r in readers:
            r.start()
        try:
            proc.stdin.write(stdin.encode())
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        reason, status = "", None
        deadline = start + cfg.wall_s
        while proc.poll() is None:
            if over.is_set():
                reason, status = f"output over {cfg.output_bytes} bytes", "error"
                break
            if time.monotonic() > deadline:
                reason, status = f"wall-clock limit of {cfg.wall_s} s", "timeout"
                break
            time.sleep(0.01)
        if proc.poll() is None:
            self._kill(proc)
        code = proc.wait()
        self._kill(proc)  # whatever is left of its group (without a pid namespace a child can outlive the run)
        for r in readers:
            r.join(timeout=2)
        for stream in (proc.stdout, proc.stderr):
            stream.close()
        out, err = (kept[k].decode("utf-8", "replace") for k in ("out", "err"))
        if status is None:
            status, reason = self._classify(code, err, over.is_set())
        return RunResult(status, None if status != "ok" and code < 0 else code, out, err, reason,
                         round(time.monotonic() - start, 3), self.isolation())

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _classify(self, code: int, err: str, over: bool) -> tuple[str, str]:
        if over:
            return "error", f"output over {self.cfg.output_bytes} bytes"
        sig = code - 128 if code > 128 else (-code if code < 0 else 0)
        if sig == signal.SIGXCPU:
            return "timeout", f"CPU limit of {self.cfg.cpu_s} s (SIGXCPU)"
        if sig == signal.SIGXFSZ:
            return "error", f"file size limit of {self.cfg.file_size_mb} MB (SIGXFSZ)"
        if sig:
            return "error", f"killed by {signal.Signals(sig).name}"
        marker = "sandbox-exception: "
        if code == 1 and marker in err:
            return "error", err.rsplit(marker, 1)[1].strip()
        return "ok", ""
