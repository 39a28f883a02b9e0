"""``FleetRuntime``: sandboxes run on the hosts the agent manages, not on the agent itself.

It is a :class:`~byoc_agent.runtimes.base.Runtime`, so the agent's job handlers, data plane
and E2B surface use it unchanged:

- ``create`` asks the :class:`~byoc_agent.hosts.fleet.HostFleet` for room. If no ready host
  has it, the request waits in the fleet's scheduler, which is the demand its autoscaler
  scales out for; ``create`` waits (up to ``place_timeout_s``) until a step places it on a
  host whose worker answers, then creates the sandbox there. A sandbox that is never placed
  is withdrawn and the create fails with a capacity error naming why.
- every other call goes to the host named in the handle (``data["corral.host"]``), through
  that host's worker runtime.
- ``destroy`` gives the sandbox's room back to the fleet, so an idle host can be scaled in.
- snapshots stay on the host that took them (its hostd keeps them, ADR 0028): the agent's
  snapshot directory holds only ``host.json`` naming the host. A restore is placed on that
  host (or fails with a capacity error if it has no room), and the host is held, never
  scaled in, until its last snapshot is deleted.

The handle keeps the host's own runtime name (``gvisor``, ``qemu-microvm``, ...), so the
meter and isolation checks read it as they read a local one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import structlog

from byoc_agent.hosts.fleet import HostFleet
from byoc_agent.hosts.phases import HostPhase
from byoc_agent.hosts.workers import HostWorkers
from byoc_agent.protocol.errors import (
    CapacityError,
    InvalidArgumentError,
    NotFoundError,
    SandboxNotRunningError,
)
from byoc_agent.runtimes.base import (
    ExecEvent,
    ExecRequest,
    FileInfo,
    Liveness,
    Runtime,
    SandboxHandle,
    SandboxSpec,
    Snapshotting,
)
from byoc_agent.scheduling import Isolation, SandboxRequest
from byoc_agent.state import HostRecord

log = structlog.get_logger(__name__)

HOST_KEY = "corral.host"
# The sandbox id the fleet placed it under, when the host's runtime id differs (a host
# serving the create from its warm pool answers with the member's id).
PLACEMENT_KEY = "corral.placement"
_OURS = (HOST_KEY, PLACEMENT_KEY)
# In the agent's directory of a snapshot taken on a host: which host keeps it.
ON_HOST = "host.json"


class FleetRuntime:
    """Routes each sandbox to the runtime of the host the fleet placed it on."""

    def __init__(
        self,
        fleet: HostFleet,
        workers: HostWorkers,
        *,
        names: Sequence[str] = ("gvisor",),
        place_timeout_s: float = 300.0,
        snapshots_dir: Path | None = None,
    ) -> None:
        """``snapshots_dir``: the agent's snapshots; those kept on hosts hold their host."""
        if not names:
            raise InvalidArgumentError("a FleetRuntime needs the runtime names its hosts run")
        self.fleet = fleet
        self.workers = workers
        self.names = list(names)
        self.name = "fleet:" + "+".join(names)
        self.place_timeout_s = place_timeout_s
        for marker in sorted(snapshots_dir.glob(f"*/{ON_HOST}")) if snapshots_dir else ():
            host_key = _host_of_snapshot(marker.parent)
            if host_key is not None:
                fleet.hold(host_key, marker.parent.name)

    # ------------------------------------------------------------ routing
    def _host(self, host_key: str, sandbox_id: str) -> HostRecord:
        rec = self.fleet.state.get_host(host_key)
        if rec is None or rec.phase is not HostPhase.READY:
            raise SandboxNotRunningError(
                f"sandbox {sandbox_id} ran on host {host_key}, which is no longer ready",
                sandbox_id=sandbox_id,
            )
        return rec

    def _route(self, handle: SandboxHandle) -> tuple[Runtime, SandboxHandle]:
        host_key = handle.data.get(HOST_KEY)
        if host_key is None:
            raise SandboxNotRunningError(
                f"sandbox {handle.sandbox_id} does not run on a managed host",
                sandbox_id=handle.sandbox_id,
            )
        runtime = self.workers.runtime(self._host(host_key, handle.sandbox_id))
        inner = SandboxHandle(
            sandbox_id=handle.sandbox_id,
            runtime=handle.runtime,
            created_at=handle.created_at,
            data={k: v for k, v in handle.data.items() if k not in _OURS},
        )
        return runtime, inner

    # ------------------------------------------------------------ lifecycle
    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        request = SandboxRequest(
            spec.sandbox_id, spec.cpu, spec.memory_mb, 0, Isolation(spec.isolation)
        )
        started = time.monotonic()
        host_key = self.fleet.submit(request)
        if host_key is None:
            log.info("sandbox_waiting_for_host", sandbox_id=spec.sandbox_id, cpu=spec.cpu,
                     memory_mb=spec.memory_mb, isolation=spec.isolation)
            host_key = await self.fleet.wait_placed(spec.sandbox_id, self.place_timeout_s)
        if host_key is None:
            blocked = dict(self.fleet.last_plan.blocked).get(spec.sandbox_id)
            self.fleet.release(spec.sandbox_id)
            why = f" (scale-out blocked: {blocked.value})" if blocked is not None else ""
            raise CapacityError(
                f"no managed host had room for {spec.cpu} vCPU and {spec.memory_mb} MiB "
                f"within {self.place_timeout_s:.0f} s{why}",
                sandbox_id=spec.sandbox_id,
            )
        try:
            runtime = self.workers.runtime(self._host(host_key, spec.sandbox_id))
            inner = await runtime.create(spec)
        except BaseException:
            self.fleet.release(spec.sandbox_id)
            raise
        log.info("sandbox_on_host", sandbox_id=spec.sandbox_id, host_key=host_key,
                 waited_s=round(time.monotonic() - started, 3))
        return _on(host_key, spec.sandbox_id, inner)

    async def recover(self, handle: SandboxHandle) -> Liveness:
        try:
            runtime, inner = self._route(handle)
        except SandboxNotRunningError:
            return Liveness.MISSING
        return await runtime.recover(inner)

    async def inspect(self, handle: SandboxHandle) -> Liveness:
        try:
            runtime, inner = self._route(handle)
        except SandboxNotRunningError:
            return Liveness.MISSING
        return await runtime.inspect(inner)

    async def destroy(self, handle: SandboxHandle) -> None:
        try:
            runtime, inner = self._route(handle)
        except SandboxNotRunningError:
            pass  # its host is gone, and the sandbox with it
        else:
            await runtime.destroy(inner)
        self.fleet.release(str(handle.data.get(PLACEMENT_KEY, handle.sandbox_id)))

    # ------------------------------------------------------------ commands and files
    async def exec(self, handle: SandboxHandle, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        runtime, inner = self._route(handle)
        stream = runtime.exec(inner, request)
        try:
            async for event in stream:
                yield event
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    async def write_file(self, handle: SandboxHandle, path: str, data: bytes) -> None:
        runtime, inner = self._route(handle)
        await runtime.write_file(inner, path, data)

    async def read_file(self, handle: SandboxHandle, path: str) -> bytes:
        runtime, inner = self._route(handle)
        return await runtime.read_file(inner, path)

    async def list_dir(self, handle: SandboxHandle, path: str) -> list[FileInfo]:
        runtime, inner = self._route(handle)
        return await runtime.list_dir(inner, path)

    async def remove(self, handle: SandboxHandle, path: str) -> None:
        runtime, inner = self._route(handle)
        await runtime.remove(inner, path)

    async def make_dir(self, handle: SandboxHandle, path: str) -> None:
        runtime, inner = self._route(handle)
        await runtime.make_dir(inner, path)

    # ------------------------------------------------------------ pause / resume
    def _snapshots(self, runtime: Runtime) -> Snapshotting:
        if not isinstance(runtime, Snapshotting):
            raise InvalidArgumentError(f"runtime {runtime.name} cannot pause or snapshot")
        return runtime

    async def pause(self, handle: SandboxHandle) -> None:
        runtime, inner = self._route(handle)
        await self._snapshots(runtime).pause(inner)

    async def resume(self, handle: SandboxHandle) -> None:
        runtime, inner = self._route(handle)
        await self._snapshots(runtime).resume(inner)

    async def snapshot(self, handle: SandboxHandle, dest: Path) -> None:
        """Snapshot on the sandbox's host, named ``dest.name`` there; ``dest`` gets
        ``host.json``, and the host is held until the snapshot is deleted."""
        runtime, inner = self._route(handle)
        host_key = str(handle.data[HOST_KEY])
        await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
        await self._snapshots(runtime).snapshot(inner, _on_host(dest))
        await asyncio.to_thread(
            (dest / ON_HOST).write_text, json.dumps({"host_key": host_key})
        )
        self.fleet.hold(host_key, dest.name)

    async def restore(self, spec: SandboxSpec, source: Path) -> SandboxHandle:
        """A new sandbox from a snapshot, on the host that keeps it."""
        host_key = await asyncio.to_thread(_host_of_snapshot, source)
        if host_key is None:
            raise NotFoundError(f"snapshot {source.name} was not taken on a managed host")
        request = SandboxRequest(
            spec.sandbox_id, spec.cpu, spec.memory_mb, 0, Isolation(spec.isolation)
        )
        try:
            self.fleet.place_on(request, host_key)
        except NotFoundError:
            raise NotFoundError(
                f"snapshot {source.name} was kept on host {host_key}, which is gone",
                sandbox_id=spec.sandbox_id,
            ) from None
        try:
            runtime = self.workers.runtime(self._host(host_key, spec.sandbox_id))
            inner = await self._snapshots(runtime).restore(spec, _on_host(source))
        except BaseException:
            self.fleet.release(spec.sandbox_id)
            raise
        log.info("sandbox_restored_on_host", sandbox_id=spec.sandbox_id, host_key=host_key,
                 snapshot_id=source.name)  # fmt: skip
        return _on(host_key, spec.sandbox_id, inner)

    async def remove_snapshot(self, source: Path) -> None:
        """Delete the snapshot from its host (if the host is still there) and let the host
        go idle; the agent removes ``source``."""
        host_key = await asyncio.to_thread(_host_of_snapshot, source)
        if host_key is None:
            return
        rec = self.fleet.state.get_host(host_key)
        if rec is not None and rec.phase is HostPhase.READY:
            remove = getattr(self.workers.runtime(rec), "delete_snapshot", None)
            if remove is not None:  # a remote worker keeps it in its own data directory
                await remove(source.name)
        self.fleet.unhold(host_key, source.name)


def _on(host_key: str, placed_as: str, inner: SandboxHandle) -> SandboxHandle:
    """The agent's handle of a sandbox on a host: the host's own, plus where it runs and
    (if the host answered with another id) the id it was placed under."""
    data = {**inner.data, HOST_KEY: host_key}
    if inner.sandbox_id != placed_as:
        data[PLACEMENT_KEY] = placed_as
    return SandboxHandle(sandbox_id=inner.sandbox_id, runtime=inner.runtime,
                         created_at=inner.created_at, data=data)  # fmt: skip


def _on_host(snapshot_dir: Path) -> Path:
    """Where the host's worker keeps a snapshot: a hostd names it by the last part (the
    snapshot id) in its own data directory; a local worker writes it here."""
    return snapshot_dir / "on-host" / snapshot_dir.name


def _host_of_snapshot(snapshot_dir: Path) -> str | None:
    try:
        raw = json.loads((snapshot_dir / ON_HOST).read_text())
        return str(raw["host_key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
