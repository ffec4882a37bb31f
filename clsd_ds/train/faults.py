"""Fault injection for the tests of crash recovery: ``CLSD_FAULT=<name>:<step>[,<name>:<step>...]``.

    kill_in_save:N   rank 0 SIGKILLs itself in the save of step N, after the files, before the complete marker
    nan_loss:N       rank 0's first micro-batch loss of step N is NaN

Unset in real runs; each name fires only at its step, so the checkpoints before it are real.
"""

from __future__ import annotations

import os


def planned(name: str, step: int, rank: int) -> bool:
    """True when ``CLSD_FAULT`` asks for fault ``name`` at ``step`` (on rank 0)."""
    if rank != 0:
        return False
    for item in filter(None, os.environ.get("CLSD_FAULT", "").split(",")):
        fault, _, at = item.partition(":")
        if fault == name and at.isdigit() and int(at) == step:
            return True
    return False
