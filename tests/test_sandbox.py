"""The shadow loop's Python sandbox against hostile programs: each contained, with a clear verdict, the host
unaffected. Every test runs real child processes under the real limits; the layers under the audit hook are
tested with it switched off."""

import os
import time
from pathlib import Path

import pytest

from clsd_ds.config import ConfigError
from clsd_ds.shadow.sandbox import Sandbox, SandboxConfig, _namespace_prefix

REPO = Path(__file__).resolve().parents[1]
FAST = dict(cpu_s=2, wall_s=6.0, memory_mb=256)
ROOT = os.geteuid() == 0


def nobody_processes() -> int:
    """Processes owned by ``nobody`` now (the sandbox's user when the tests run as root)."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid == 65534:
                count += 1
        except FileNotFoundError:
            pass
    return count


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox(SandboxConfig(**FAST))


def assert_host_fine(sandbox):
    """After a hostile run: a plain run still works, nothing of it is left running, the project is untouched."""
    r = sandbox.run("print(6 * 7)")
    assert (r.status, r.exit_code, r.stdout) == ("ok", 0, "42\n")
    if ROOT:
        deadline = time.time() + 5
        while nobody_processes() and time.time() < deadline:
            time.sleep(0.1)
        assert nobody_processes() == 0
    assert not (REPO / "pwned").exists()


def test_a_plain_program_runs_in_an_empty_scrubbed_directory(sandbox, monkeypatch):
    monkeypatch.setenv("CLSD_SECRET", "hunter2")
    r = sandbox.run("import os, sys\nprint(sorted(os.listdir('.')), os.getcwd())\nprint(sorted(os.environ))\n"
                    "print(sys.stdin.read().upper())\nsys.exit(3)", stdin="abc")
    assert (r.status, r.exit_code) == ("ok", 3)
    files, env, echoed = r.stdout.splitlines()
    assert files.startswith("['main.py']") and "clsd-sandbox-" in files
    assert "CLSD_SECRET" not in env and "hunter2" not in r.stdout
    assert echoed == "ABC"
    workdir = files.split()[-1]
    assert not Path(workdir).exists()  # the directory is deleted afterwards


@pytest.mark.parametrize("source,status,reason", [
    ("while True:\n    pass", "timeout", "CPU limit"),
    ("import time\ntime.sleep(60)", "timeout", "wall-clock limit"),
    ("x = bytearray(10 * 256 * 2**20)", "error", "MemoryError"),
    ("import os\nwhile True:\n    os.fork()", "error", "os.fork is not allowed"),
    ("import subprocess\nsubprocess.run(['sh', '-c', ':(){ :|:& };:'])", "error", "not allowed"),
    (f"open({str(REPO / 'pwned')!r}, 'w').write('x')", "error", "not allowed"),
    ("open('/tmp/clsd-sandbox-escape', 'w').write('x')", "error", "not allowed"),
    ("f = open('big', 'wb')\nwhile True:\n    f.write(b'x' * 2**20)", "error", "File too large"),
    (f"print(open({str(REPO / 'README.md')!r}).read())", "error", "not allowed"),
    ("print(open('/etc/passwd').read())", "error", "not allowed"),
    ("import os\nprint(os.listdir('/'))", "error", "not allowed"),
    ("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)", "error", "not allowed"),
    ("import ctypes\nctypes.CDLL(None).system(b'touch /tmp/x')", "error", "not allowed"),
    ("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", "error", "output over"),
    ("def broken(:\n    pass", "error", "SyntaxError"),
], ids=["infinite-loop", "sleep", "memory-10x", "fork-bomb", "shell-fork-bomb", "write-project", "write-tmp",
        "fill-disk", "read-project", "read-system", "list-root", "network", "ctypes", "1GB-output", "syntax"])
def test_hostile_programs_are_contained_with_a_clear_verdict(sandbox, source, status, reason):
    start = time.monotonic()
    r = sandbox.run(source)
    assert r.status == status and reason in r.reason, (r.status, r.reason, r.stderr[-500:])
    assert time.monotonic() - start < FAST["wall_s"] + 3
    assert len(r.stdout) + len(r.stderr) <= sandbox.cfg.output_bytes
    assert_host_fine(sandbox)


def test_the_file_size_limit_holds_on_disk():
    """The disk filler's file never grows past the limit (checked from inside, before the directory goes)."""
    sb = Sandbox(SandboxConfig(**FAST, file_size_mb=1))
    r = sb.run("import os\nf = open('big', 'wb', buffering=0)\ntry:\n    while True:\n        f.write(b'x' * 4096)\n"
               "except OSError:\n    pass\nf.close()\nprint(os.path.getsize('big'))")
    assert r.status == "ok" and int(r.stdout) == 2**20


@pytest.mark.skipif(_namespace_prefix() is None, reason="no network/pid namespaces on this machine (unshare fails)")
def test_without_the_audit_hook_the_network_namespace_still_refuses_connections():
    sb = Sandbox(SandboxConfig(**FAST, audit_hook=False))
    r = sb.run("import socket\ntry:\n    socket.create_connection(('1.1.1.1', 80), timeout=2)\n"
               "except OSError as exc:\n    print(type(exc).__name__, exc.errno)")
    assert r.status == "ok" and r.stdout.split()[0] in ("OSError", "ConnectionRefusedError") and r.isolation[
        "network"] == "namespace", r.stdout + r.stderr
    assert int(r.stdout.split()[1]) in (101, 111, 99)  # ENETUNREACH / ECONNREFUSED / EADDRNOTAVAIL


@pytest.mark.skipif(not ROOT, reason="the unprivileged sandbox user needs the tests to run as root")
def test_without_the_audit_hook_the_user_and_rlimits_contain_a_fork_bomb_and_protect_files():
    sb = Sandbox(SandboxConfig(**FAST, audit_hook=False))
    bomb = sb.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert bomb.status in ("timeout", "error") and bomb.isolation["user"] == "nobody", bomb.reason
    assert_host_fine(sb)
    files = sb.run(f"for path, mode in (('/etc/shadow', 'r'), ({str(REPO / 'pwned')!r}, 'w')):\n"
                   "    try:\n        open(path, mode)\n        print('opened', path)\n"
                   "    except PermissionError:\n        print('denied', path)")
    assert files.status == "ok" and files.stdout.split().count("denied") == 2, files.stdout
    assert_host_fine(sb)


def test_bad_limits_and_users_are_config_errors():
    with pytest.raises(ConfigError, match="sandbox.cpu_s"):
        Sandbox(SandboxConfig(cpu_s=0))
    if ROOT:
        with pytest.raises(ConfigError, match="sandbox.user"):
            Sandbox(SandboxConfig(user="no-such-user-here"))
    with pytest.raises(ConfigError, match="sandbox.python"):
        Sandbox(SandboxConfig(python="/nonexistent/python3"))
