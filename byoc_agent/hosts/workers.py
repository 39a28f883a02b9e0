"""How the agent reaches what runs sandboxes on a host it manages.

A :class:`HostWorkers` is the fleet's one dependency on *what* runs on a host:

- ``prepare(host_key)`` is called once, when the host is requested, before any provider
  call. What it returns is written into the host's record (so a provision retried after
  a crash sends the same user data) and is opaque to the fleet.
- ``user_data(rec)`` is what the provider boots the host with (cloud-init), or None.
- ``ready(rec)`` is the host-side readiness check, asked once the provider reports the host
  running: the host counts as ready only when its worker answers.
- ``runtime(rec)`` is the :class:`~byoc_agent.runtimes.base.Runtime` that runs sandboxes
  on that host.

Two implementations: :class:`LocalWorkers` (the hosts are capacity only, sandboxes run on
the agent's own machine: a bare-metal inventory of this machine) and
:class:`~byoc_agent.hostd.workers.HostdWorkers` (each host runs ``corral-hostd``, reached
over pinned TLS inside the customer's network).
"""

from __future__ import annotations

from typing import Protocol

from byoc_agent.runtimes.base import Runtime
from byoc_agent.state import HostRecord


class HostWorkers(Protocol):
    def prepare(self, host_key: str) -> str | None: ...

    def user_data(self, rec: HostRecord) -> str | None: ...

    async def ready(self, rec: HostRecord) -> bool: ...

    def runtime(self, rec: HostRecord) -> Runtime: ...

    async def aclose(self) -> None: ...


class LocalWorkers:
    """Every host's sandboxes run on the agent's own runtime (hosts are capacity only)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def prepare(self, host_key: str) -> str | None:
        return None

    def user_data(self, rec: HostRecord) -> str | None:
        return None

    async def ready(self, rec: HostRecord) -> bool:
        return True

    def runtime(self, rec: HostRecord) -> Runtime:
        return self._runtime

    async def aclose(self) -> None:
        return None
