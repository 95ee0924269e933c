"""Find and kill every process a test's subprocess started (its Ray cluster included), by an env marker."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def marked_pids(mark: str) -> list[int]:
    """Processes carrying our marker in their environment (the subprocess and its Ray children)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if f"LAB_RAY_TEST_MARK={mark}".encode() in (d / "environ").read_bytes().split(b"\0"):
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


def kill_marked(mark: str) -> None:
    for pid in marked_pids(mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
