"""Several runtimes behind one :class:`~byoc_agent.runtimes.base.Runtime`: isolation per workload.

An agent may run gVisor and microVM sandboxes side by side. ``create`` picks the runtime for the
spec's isolation class; every other call goes to the runtime named in the sandbox's handle, so
sandboxes recovered after a restart find their own runtime again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

from byoc_agent.protocol.errors import InvalidArgumentError, SandboxNotRunningError
from byoc_agent.runtimes.base import (
    Adopting,
    EndReason,
    ExecEvent,
    ExecRequest,
    FileInfo,
    KnowsStopReason,
    Liveness,
    PreparingAdoption,
    Runtime,
    SandboxHandle,
    SandboxSpec,
    Snapshotting,
)

# Isolation class -> runtime names that provide it, best first.
ISOLATION_RUNTIMES: Mapping[str, tuple[str, ...]] = {
    "gvisor": ("gvisor", "memory"),
    "microvm": ("firecracker", "qemu-microvm"),
}


def isolation_of(runtime_name: str) -> str:
    for isolation, names in ISOLATION_RUNTIMES.items():
        if runtime_name in names:
            return isolation
    raise InvalidArgumentError(f"runtime {runtime_name!r} has no isolation class")


class RuntimeSet:
    """Dispatches to one of several runtimes; itself a Runtime."""

    def __init__(self, runtimes: Sequence[Runtime]) -> None:
        if not runtimes:
            raise InvalidArgumentError("a RuntimeSet needs at least one runtime")
        self._by_name = {r.name: r for r in runtimes}
        self.name = "+".join(r.name for r in runtimes)

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def isolations(self) -> set[str]:
        return {isolation_of(n) for n in self._by_name}

    def for_isolation(self, isolation: str) -> Runtime:
        for name in ISOLATION_RUNTIMES.get(isolation, ()):
            if name in self._by_name:
                return self._by_name[name]
        raise InvalidArgumentError(
            f"this agent runs {', '.join(self._by_name)} sandboxes only; {isolation} isolation "
            "needs an agent with a runtime that provides it"
        )

    def _of(self, handle: SandboxHandle) -> Runtime:
        try:
            return self._by_name[handle.runtime]
        except KeyError:
            raise SandboxNotRunningError(
                f"sandbox {handle.sandbox_id} ran on runtime {handle.runtime!r}, which this "
                "agent no longer runs",
                sandbox_id=handle.sandbox_id,
            ) from None

    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        return await self.for_isolation(spec.isolation).create(spec)

    async def recover(self, handle: SandboxHandle) -> Liveness:
        if handle.runtime not in self._by_name:
            return Liveness.MISSING
        return await self._of(handle).recover(handle)

    async def inspect(self, handle: SandboxHandle) -> Liveness:
        if handle.runtime not in self._by_name:
            return Liveness.MISSING
        return await self._of(handle).inspect(handle)

    def exec(self, handle: SandboxHandle, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        return self._of(handle).exec(handle, request)

    async def write_file(self, handle: SandboxHandle, path: str, data: bytes) -> None:
        await self._of(handle).write_file(handle, path, data)

    async def read_file(self, handle: SandboxHandle, path: str) -> bytes:
        return await self._of(handle).read_file(handle, path)

    async def list_dir(self, handle: SandboxHandle, path: str) -> list[FileInfo]:
        return await self._of(handle).list_dir(handle, path)

    async def remove(self, handle: SandboxHandle, path: str) -> None:
        await self._of(handle).remove(handle, path)

    async def make_dir(self, handle: SandboxHandle, path: str) -> None:
        await self._of(handle).make_dir(handle, path)

    async def destroy(self, handle: SandboxHandle) -> None:
        if handle.runtime in self._by_name:
            await self._of(handle).destroy(handle)

    async def adopt(self, handle: SandboxHandle, spec: SandboxSpec) -> None:
        runtime = self._of(handle)
        if not isinstance(runtime, Adopting):
            raise InvalidArgumentError(f"runtime {runtime.name} cannot adopt pool members")
        await runtime.adopt(handle, spec)

    async def prepare_adoption(self, handle: SandboxHandle) -> None:
        runtime = self._of(handle)
        if isinstance(runtime, PreparingAdoption):
            await runtime.prepare_adoption(handle)

    async def stop_reason(self, handle: SandboxHandle) -> EndReason | None:
        """The reason of the sandbox's own runtime, when that runtime can tell."""
        runtime = self._by_name.get(handle.runtime)
        if isinstance(runtime, KnowsStopReason):
            return await runtime.stop_reason(handle)
        return None

    def _snapshots(self, runtime: Runtime) -> Snapshotting:
        if not isinstance(runtime, Snapshotting):
            raise InvalidArgumentError(f"runtime {runtime.name} cannot pause or snapshot")
        return runtime

    async def pause(self, handle: SandboxHandle) -> None:
        await self._snapshots(self._of(handle)).pause(handle)

    async def resume(self, handle: SandboxHandle) -> None:
        await self._snapshots(self._of(handle)).resume(handle)

    async def snapshot(self, handle: SandboxHandle, dest: Path) -> None:
        await self._snapshots(self._of(handle)).snapshot(handle, dest)

    async def restore(self, spec: SandboxSpec, source: Path) -> SandboxHandle:
        return await self._snapshots(self.for_isolation(spec.isolation)).restore(spec, source)


def runtime_names(runtime: Runtime) -> list[str]:
    """The runtime names behind ``runtime`` (what an agent advertises): a RuntimeSet's, or
    a fleet's hosts' (anything with a ``names`` list), else its own name."""
    names = getattr(runtime, "names", None)
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return list(names)
    return [runtime.name]


def runtime_isolations(runtime: Runtime) -> set[str]:
    """The isolation classes ``runtime`` can create sandboxes with."""
    return {isolation_of(n) for n in runtime_names(runtime)}
