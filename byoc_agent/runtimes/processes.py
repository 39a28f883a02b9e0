"""Host processes the runtimes start (QEMU, Firecracker's jailer, runsc): whether one still
runs, stopping it, and the tail of its log for an error message.

Such a process may have been started by an agent before its restart, so it is not a child of
this one: its pid is checked against a marker on its command line (a recycled pid is not
it), and its exit can only be polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

_KILL_WAIT_S = 10.0


def pid_alive(pid: int, marker: str) -> bool:
    """True if ``pid`` runs and its command line mentions ``marker`` (not a recycled pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return marker.encode() in fh.read()
    except OSError:
        return False


async def kill(pid: int | None, marker: str) -> None:
    """SIGKILL the process ``pid`` if it is still the one ``marker`` names, and wait (up to
    10 s) until it is gone."""
    if pid is None or not pid_alive(pid, marker):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + _KILL_WAIT_S
    # Maybe not our child (started by an agent before a restart): its exit can only be polled.
    while pid_alive(pid, marker) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


def tail(path: Path, limit: int = 1500) -> str:
    """The last ``limit`` bytes of a log file as text; empty when it cannot be read."""
    try:
        return path.read_bytes()[-limit:].decode(errors="replace").strip()
    except OSError:
        return ""
