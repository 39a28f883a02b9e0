"""The ``Runtime`` contract every sandbox backend implements (gVisor, QEMU microvm, Firecracker).

Sandbox lifecycle as the agent drives it::

                create()                 destroy(reason=killed)
    (none) ─────────────► RUNNING ─────────────────────────────► KILLED
                 │           │  ╲
     create fails│           │   ╲ deadline passed: destroy(reason=timed_out)
                 ▼           │    ╲──────────────────────────────► TIMED_OUT
               FAILED ◄──────┘ init process died on its own

Terminal states never change again. ``recover()`` reattaches to a RUNNING sandbox
after the agent restarts, from the opaque :class:`SandboxHandle` it saved right after
``create()``; sandboxes keep running while the agent is down.

Why a ``Protocol``: runtimes live in separate modules with their own binaries
(runsc, qemu, firecracker) and must not share a base class's hidden state; the
contract suite in ``tests/integration/runtimes`` checks behaviour instead.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.protocol.messages import MAX_EGRESS as MAX_EGRESS
from byoc_agent.protocol.messages import SandboxState

ALLOWED_TRANSITIONS: Mapping[SandboxState, frozenset[SandboxState]] = {
    SandboxState.PENDING: frozenset(
        {SandboxState.RUNNING, SandboxState.FAILED, SandboxState.KILLED}
    ),
    SandboxState.RUNNING: frozenset(
        {SandboxState.PAUSED, SandboxState.KILLED, SandboxState.TIMED_OUT, SandboxState.FAILED}
    ),
    SandboxState.PAUSED: frozenset(
        {SandboxState.RUNNING, SandboxState.KILLED, SandboxState.TIMED_OUT, SandboxState.FAILED}
    ),
    SandboxState.KILLED: frozenset(),
    SandboxState.TIMED_OUT: frozenset(),
    SandboxState.FAILED: frozenset(),
}


def can_transition(src: SandboxState, dst: SandboxState) -> bool:
    return dst in ALLOWED_TRANSITIONS[src]


class EndReason(StrEnum):
    """Why a sandbox stopped: a closed set (metric labels, billing columns)."""

    KILLED = "killed"
    TIMED_OUT = "timed_out"
    EXITED = "exited"
    CREATE_FAILED = "create_failed"
    LOST = "lost"
    OOM_KILLED = "oom_killed"  # over its memory limit: the host's OOM killer ended it
    PIDS_LIMIT = "pids_limit"  # too many tasks (e.g. a fork bomb): the process cap ended it


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    sandbox_id: str
    tenant_id: str
    template: str
    cpu: int
    memory_mb: int
    timeout_s: int
    env: Mapping[str, str] = field(default_factory=dict)
    # "gvisor" or "microvm": which runtime of an agent's RuntimeSet runs it.
    isolation: str = "gvisor"
    # The TCP destinations ("a.b.c.d:port") the sandbox may connect to; empty: no network
    # device at all. Only the microVM runtime provides one (see docs/microvm.md).
    egress: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, order=True)
class EgressRule:
    """One allowed TCP destination: an IPv4 address and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_egress(entries: Iterable[str]) -> tuple[EgressRule, ...]:
    """Validate an egress allow-list of ``"a.b.c.d:port"`` entries (TCP, IPv4 literals only).

    Raises InvalidArgumentError naming the first bad entry. Hostnames, IPv6, CIDR ranges,
    port ranges, duplicates and addresses nobody can connect to (0.0.0.0, multicast,
    broadcast) are rejected rather than guessed at.
    """
    rules: list[EgressRule] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise InvalidArgumentError(f"egress entry {entry!r} must be a string 'a.b.c.d:port'")
        host, sep, port_text = entry.partition(":")
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            address = None
        if (
            not sep
            or address is None
            or not port_text.isascii()
            or not port_text.isdigit()
            or port_text != str(int(port_text))
            or not 1 <= int(port_text) <= 65535
        ):
            raise InvalidArgumentError(
                f"egress entry {entry!r} must be an IPv4 address and a TCP port 1-65535, "
                "like 192.0.2.10:443 (no hostnames, ranges or IPv6)"
            )
        if address.is_unspecified or address.is_multicast or address == ipaddress.IPv4Address(
            "255.255.255.255"
        ):
            raise InvalidArgumentError(f"egress entry {entry!r} is not a connectable address")
        rule = EgressRule(str(address), int(port_text))
        if rule in rules:
            raise InvalidArgumentError(f"egress entry {entry!r} is listed twice")
        rules.append(rule)
    if len(rules) > MAX_EGRESS:
        raise InvalidArgumentError(
            f"an egress allow-list holds at most {MAX_EGRESS} destinations, not {len(rules)}"
        )
    return tuple(rules)


@dataclass(frozen=True, slots=True)
class SandboxHandle:
    """What the agent saves to reattach after a restart. ``data`` is the runtime's own."""

    sandbox_id: str
    runtime: str
    created_at: float
    data: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExecRequest:
    """One command. ``cmd`` runs under ``/bin/sh -c``; env adds to the sandbox's env."""

    cmd: str
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    stdin: bytes | None = None
    timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Stdout:
    data: bytes


@dataclass(frozen=True, slots=True)
class Stderr:
    data: bytes


@dataclass(frozen=True, slots=True)
class Exit:
    exit_code: int
    timed_out: bool = False


ExecEvent = Stdout | Stderr | Exit


class FileType(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class FileInfo:
    name: str
    path: str
    type: FileType
    size: int
    mode: int
    mtime: float


class Liveness(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"  # stopped with its memory and files kept; resume() continues it
    STOPPED = "stopped"
    MISSING = "missing"


class Runtime(Protocol):
    """A sandbox backend. All methods are safe to call concurrently for different sandboxes."""

    name: str

    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        """Start a sandbox from ``spec.template``; returns once a command can run in it.

        Raises TemplateNotFoundError, InvalidArgumentError, CapacityError.
        """
        ...

    async def recover(self, handle: SandboxHandle) -> Liveness:
        """Reattach after an agent restart; reports whether the sandbox is still alive."""
        ...

    async def inspect(self, handle: SandboxHandle) -> Liveness: ...

    def exec(self, handle: SandboxHandle, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        """Run a command; yields Stdout/Stderr chunks as they come, then exactly one Exit.

        Raises SandboxNotRunningError if the sandbox is gone.
        """
        ...

    async def write_file(self, handle: SandboxHandle, path: str, data: bytes) -> None:
        """Create or replace a file (parents are created)."""
        ...

    async def read_file(self, handle: SandboxHandle, path: str) -> bytes:
        """Raises FileNotFoundInSandboxError."""
        ...

    async def list_dir(self, handle: SandboxHandle, path: str) -> list[FileInfo]:
        """Raises FileNotFoundInSandboxError."""
        ...

    async def remove(self, handle: SandboxHandle, path: str) -> None:
        """Remove a file or a directory tree. Raises FileNotFoundInSandboxError."""
        ...

    async def make_dir(self, handle: SandboxHandle, path: str) -> None:
        """Create a directory and its parents; an existing directory is fine."""
        ...

    async def destroy(self, handle: SandboxHandle) -> None:
        """Stop the sandbox and free everything it held. Idempotent."""
        ...


# In every snapshot directory: which runtime made it, and how. A runtime that gives sandboxes
# a network records their allow-list under "egress" (the agent re-checks it on restore).
SNAPSHOT_META = "snapshot.json"


def read_snapshot_meta(source: Path, runtime: str) -> dict[str, Any]:
    """A snapshot's ``snapshot.json`` (blocking); InvalidArgumentError unless ``source`` is a
    snapshot made by the runtime named ``runtime``."""
    try:
        meta: dict[str, Any] = json.loads((source / SNAPSHOT_META).read_text())
    except (OSError, ValueError) as e:
        raise InvalidArgumentError(f"not a snapshot: {source.name} ({e})") from None
    if meta.get("runtime") != runtime:
        raise InvalidArgumentError(
            f"snapshot {source.name} was made by {meta.get('runtime')!r}, not {runtime}"
        )
    return meta


@runtime_checkable
class Snapshotting(Protocol):
    """What a runtime that can pause, snapshot and restore sandboxes adds to :class:`Runtime`.

    A snapshot is a directory holding the sandbox's memory and filesystem and
    ``snapshot.json``; the filesystem is synced inside the sandbox before memory is saved.
    """

    async def pause(self, handle: SandboxHandle) -> None:
        """Save the sandbox's state to disk and stop it: it holds no CPU or memory until
        :meth:`resume`. Raises SandboxNotRunningError unless it is running."""
        ...

    async def resume(self, handle: SandboxHandle) -> None:
        """Continue a paused sandbox where it stopped (processes, memory, files)."""
        ...

    async def snapshot(self, handle: SandboxHandle, dest: Path) -> None:
        """Write a snapshot of a running sandbox to ``dest`` (a new directory); the sandbox
        stops briefly and then runs on."""
        ...

    async def restore(self, spec: SandboxSpec, source: Path) -> SandboxHandle:
        """Start a new sandbox (``spec.sandbox_id``) from a snapshot. It is a new machine:
        its own id, hostname, machine-id and random seed. cpu and memory are the snapshot's."""
        ...


@runtime_checkable
class RemovesSnapshots(Protocol):
    """Optional: a runtime that keeps part of a snapshot outside its directory (on the
    managed host that took it) and must be told when the snapshot is deleted."""

    async def remove_snapshot(self, source: Path) -> None:
        """Remove what belongs to the snapshot in ``source`` elsewhere (idempotent); the
        agent removes ``source`` itself afterwards."""
        ...


@runtime_checkable
class KnowsStopReason(Protocol):
    """Optional: a runtime that can tell why a sandbox stopped on its own.

    A separate interface so runtimes that cannot tell need not pretend; the agent asks
    only those that implement it, before it destroys the sandbox.
    """

    async def stop_reason(self, handle: SandboxHandle) -> EndReason | None:
        """``OOM_KILLED`` (over its memory limit), ``PIDS_LIMIT`` (too many tasks), or
        ``None`` when it simply exited or the runtime cannot say."""
        ...


@runtime_checkable
class Adopting(Protocol):
    """What a runtime that can hand a pre-started sandbox to a request adds (warm pools).

    A warm pool starts sandboxes under ids of its own; when a create asks for one, the
    agent keeps the pool member's handle under the requested sandbox id. ``adopt`` makes
    the member that sandbox from the inside: ``spec.sandbox_id`` as its hostname, a fresh
    machine-id and random seed, and ``spec.env`` for every later exec.
    """

    async def adopt(self, handle: SandboxHandle, spec: SandboxSpec) -> None:
        """Give the running sandbox ``handle`` the identity and env of ``spec``.

        Raises SandboxNotRunningError if it is gone (the pool then starts a fresh one)."""
        ...


@runtime_checkable
class PreparingAdoption(Protocol):
    """A runtime that can make a later ``adopt`` cheaper once a pool member is up.

    The warm pool calls ``prepare_adoption`` on each member before it counts as ready, off
    the create path; the runtime may then do at take time only what depends on the request.
    """

    async def prepare_adoption(self, handle: SandboxHandle) -> None:
        """Get ``handle`` (a pool member, no customer's yet) ready to be adopted fast.
        Never raises for a member that still runs: ``adopt`` then takes the slow path."""
        ...
