"""``InMemoryRuntime``: a test double that keeps sandboxes and files in memory.

It runs no commands (``exec`` answers with exit code 0 and echoes nothing); it exists so
the agent's job handling can be tested quickly without gVisor. Real behaviour is checked
by the contract suite against real runtimes.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import time
from collections.abc import AsyncIterator
from pathlib import Path

from byoc_agent.protocol.errors import (
    FileNotFoundInSandboxError,
    SandboxNotRunningError,
    TemplateNotFoundError,
)
from byoc_agent.runtimes.base import (
    ExecEvent,
    ExecRequest,
    Exit,
    FileInfo,
    FileType,
    Liveness,
    SandboxHandle,
    SandboxSpec,
)


class InMemoryRuntime:
    name = "memory"

    def __init__(self, templates: tuple[str, ...] = ("base",)) -> None:
        self.templates = templates
        self.live: dict[str, dict[str, bytes]] = {}
        self.specs: dict[str, SandboxSpec] = {}  # sandbox id -> the spec it was created with
        self.created: list[str] = []
        self.destroyed: list[str] = []
        self.adopted: dict[str, SandboxSpec] = {}  # runtime id -> the spec it was given

    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        if spec.template not in self.templates:
            raise TemplateNotFoundError(f"template {spec.template!r} does not exist")
        self.live[spec.sandbox_id] = {}
        self.created.append(spec.sandbox_id)
        self.specs[spec.sandbox_id] = spec
        return SandboxHandle(sandbox_id=spec.sandbox_id, runtime=self.name, created_at=time.time())

    async def adopt(self, handle: SandboxHandle, spec: SandboxSpec) -> None:
        self._files(handle)
        self.adopted[handle.sandbox_id] = spec

    async def recover(self, handle: SandboxHandle) -> Liveness:
        return await self.inspect(handle)

    async def inspect(self, handle: SandboxHandle) -> Liveness:
        return Liveness.RUNNING if handle.sandbox_id in self.live else Liveness.MISSING

    def _files(self, handle: SandboxHandle) -> dict[str, bytes]:
        try:
            return self.live[handle.sandbox_id]
        except KeyError:
            raise SandboxNotRunningError(f"sandbox {handle.sandbox_id} is not running") from None

    async def exec(self, handle: SandboxHandle, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        self._files(handle)
        yield Exit(exit_code=0)

    async def write_file(self, handle: SandboxHandle, path: str, data: bytes) -> None:
        self._files(handle)[path] = data

    async def read_file(self, handle: SandboxHandle, path: str) -> bytes:
        try:
            return self._files(handle)[path]
        except KeyError:
            raise FileNotFoundInSandboxError(f"{path}: no such file") from None

    async def list_dir(self, handle: SandboxHandle, path: str) -> list[FileInfo]:
        prefix = path.rstrip("/") + "/"
        return [
            FileInfo(posixpath.basename(p), p, FileType.FILE, len(d), 0o644, 0.0)
            for p, d in sorted(self._files(handle).items())
            if p.startswith(prefix) and "/" not in p[len(prefix):]
        ]

    async def remove(self, handle: SandboxHandle, path: str) -> None:
        if self._files(handle).pop(path, None) is None:
            raise FileNotFoundInSandboxError(f"{path}: no such file")

    async def make_dir(self, handle: SandboxHandle, path: str) -> None:
        self._files(handle)

    async def destroy(self, handle: SandboxHandle) -> None:
        if self.live.pop(handle.sandbox_id, None) is not None:
            self.destroyed.append(handle.sandbox_id)


class SnapshottingMemoryRuntime(InMemoryRuntime):
    """``InMemoryRuntime`` that also pauses, snapshots and restores (a snapshot is a
    directory holding the files as JSON)."""

    def __init__(self, templates: tuple[str, ...] = ("base",)) -> None:
        super().__init__(templates)
        self.paused: dict[str, dict[str, bytes]] = {}
        self.restored: list[str] = []
        # Cleared by a test to hold restores where they are (an in-flight restore).
        self.restores_may_finish = asyncio.Event()
        self.restores_may_finish.set()

    async def destroy(self, handle: SandboxHandle) -> None:
        self.paused.pop(handle.sandbox_id, None)
        await super().destroy(handle)

    async def pause(self, handle: SandboxHandle) -> None:
        self.paused[handle.sandbox_id] = self._files(handle)
        del self.live[handle.sandbox_id]

    async def resume(self, handle: SandboxHandle) -> None:
        try:
            self.live[handle.sandbox_id] = self.paused.pop(handle.sandbox_id)
        except KeyError:
            raise SandboxNotRunningError(f"sandbox {handle.sandbox_id} is not paused") from None

    async def snapshot(self, handle: SandboxHandle, dest: Path) -> None:
        files = {p: d.hex() for p, d in self._files(handle).items()}
        await asyncio.to_thread(dest.mkdir, parents=True)
        await asyncio.to_thread((dest / "files.json").write_text, json.dumps(files))

    async def restore(self, spec: SandboxSpec, source: Path) -> SandboxHandle:
        files = json.loads(await asyncio.to_thread((source / "files.json").read_text))
        await self.restores_may_finish.wait()
        self.live[spec.sandbox_id] = {p: bytes.fromhex(d) for p, d in files.items()}
        self.restored.append(spec.sandbox_id)
        self.specs[spec.sandbox_id] = spec
        return SandboxHandle(sandbox_id=spec.sandbox_id, runtime=self.name, created_at=time.time())
