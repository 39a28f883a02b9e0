"""Exec and file operations over a microVM's guest channel, shared by the microVM runtimes.

QEMU and Firecracker differ in how they start a VM and reach its guest daemon (a
virtio-serial socket, a vsock proxy); once a :class:`GuestChannel` is open, running a command
and handling files is the same request/answer exchange with ``guestd.py``. A runtime takes
those methods from :class:`GuestOps` and supplies two of its own: how to get a sandbox's live
channel (raising SandboxNotRunningError when there is none) and which env the sandbox was
created with. The base class holds no state: the runtime keeps its channels.

Guest errors map onto the agent's: ``not_found`` -> FileNotFoundInSandboxError, ``invalid`` ->
InvalidArgumentError, anything else -> CorralError; a channel that closes mid-request ->
SandboxNotRunningError.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from typing import Any

from byoc_agent.protocol.errors import (
    CorralError,
    FileNotFoundInSandboxError,
    InvalidArgumentError,
    SandboxNotRunningError,
)
from byoc_agent.runtimes.base import (
    ExecEvent,
    ExecRequest,
    Exit,
    FileInfo,
    FileType,
    Liveness,
    SandboxHandle,
    Stderr,
    Stdout,
)
from byoc_agent.runtimes.guest import wire
from byoc_agent.runtimes.guest.channel import ChannelClosed, Frame, GuestChannel
from byoc_agent.runtimes.inputs import SANDBOX_HOME, sandbox_path, validate_env

# The guest enforces an exec's timeout; this much more guards against a guest that stops
# answering.
_EXEC_GRACE_S = 15.0


def raise_guest_error(header: Mapping[str, Any], sandbox_id: str) -> None:
    """Raise the agent's error for a guest ``error`` frame."""
    code = header.get("code")
    message = str(header.get("message") or "guest error")
    if code == "not_found":
        raise FileNotFoundInSandboxError(message, sandbox_id=sandbox_id)
    if code == "invalid":
        raise InvalidArgumentError(message, sandbox_id=sandbox_id)
    raise CorralError(message, sandbox_id=sandbox_id)


def stopped(sandbox_id: str) -> SandboxNotRunningError:
    """The error for a guest channel that closed under a request."""
    return SandboxNotRunningError(f"sandbox {sandbox_id} stopped", sandbox_id=sandbox_id)


class GuestOps(ABC):
    """The :class:`~byoc_agent.runtimes.base.Runtime` methods a microVM's guest daemon serves:
    exec and the file operations. A base class of the microVM runtimes."""

    __slots__ = ()

    @abstractmethod
    async def _channel(self, handle: SandboxHandle) -> GuestChannel:
        """The sandbox's live channel; raises SandboxNotRunningError when there is none."""

    @abstractmethod
    async def inspect(self, handle: SandboxHandle) -> Liveness: ...

    @abstractmethod
    def _spec_env(self, handle: SandboxHandle) -> Mapping[str, str]:
        """The env the sandbox was created (or adopted) with; every exec starts from it."""

    async def recover(self, handle: SandboxHandle) -> Liveness:
        """Reattach after an agent restart: a running VM must also answer on its channel."""
        liveness = await self.inspect(handle)
        if liveness is not Liveness.RUNNING:
            return liveness
        try:
            await self._channel(handle)
        except SandboxNotRunningError:
            return Liveness.STOPPED
        return Liveness.RUNNING

    async def exec(self, handle: SandboxHandle, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        validate_env(request.env)
        channel = await self._channel(handle)
        env = {**self._spec_env(handle), **request.env}
        rid, queue = channel.open()
        finished = False
        try:
            await channel.send(
                rid,
                {
                    "op": "exec",
                    "cmd": request.cmd,
                    "env": env,
                    "cwd": sandbox_path(request.cwd) if request.cwd else SANDBOX_HOME,
                    "timeout_s": request.timeout_s,
                    "stdin": request.stdin is not None,
                },
            )
            if request.stdin is not None:
                await _send_chunks(channel, rid, request.stdin, "eof", {"op": "stdin"})
            deadline = time.monotonic() + request.timeout_s + _EXEC_GRACE_S
            frames = channel.frames(rid, queue)
            while True:
                left = deadline - time.monotonic()
                try:
                    header, body = await asyncio.wait_for(anext(frames), max(left, 0.01))
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    finished = True
                    yield Exit(exit_code=-9, timed_out=True)
                    return
                ev = header.get("ev")
                if ev == "stdout":
                    yield Stdout(body)
                elif ev == "stderr":
                    yield Stderr(body)
                elif ev == "exit":
                    finished = True
                    yield Exit(int(header["code"]), bool(header.get("timed_out")))
                    return
                elif ev == "error":
                    finished = True
                    raise_guest_error(header, handle.sandbox_id)
        except ChannelClosed:
            raise stopped(handle.sandbox_id) from None
        finally:
            channel.release(rid)
            if not finished and not channel.closed:
                with contextlib.suppress(ChannelClosed):
                    await asyncio.shield(channel.send(0, {"op": "cancel", "target": rid}))

    async def _guest_call(
        self, handle: SandboxHandle, header: dict[str, Any], body: bytes = b""
    ) -> list[Frame]:
        """One request and all its answers; an ``error`` answer raises."""
        channel = await self._channel(handle)
        try:
            frames = await channel.call(header, body)
        except ChannelClosed:
            raise stopped(handle.sandbox_id) from None
        last = frames[-1][0]
        if last.get("ev") == "error":
            raise_guest_error(last, handle.sandbox_id)
        return frames

    async def write_file(self, handle: SandboxHandle, path: str, data: bytes) -> None:
        target = sandbox_path(path)
        channel = await self._channel(handle)
        rid, queue = channel.open()
        try:
            await _send_chunks(channel, rid, data, "final", {"op": "write", "path": target})
            async for header, _body in channel.frames(rid, queue):
                if header.get("ev") == "error":
                    raise_guest_error(header, handle.sandbox_id)
        except ChannelClosed:
            raise stopped(handle.sandbox_id) from None
        finally:
            channel.release(rid)

    async def read_file(self, handle: SandboxHandle, path: str) -> bytes:
        frames = await self._guest_call(handle, {"op": "read", "path": sandbox_path(path)})
        return b"".join(body for header, body in frames if header.get("ev") == "data")

    async def list_dir(self, handle: SandboxHandle, path: str) -> list[FileInfo]:
        frames = await self._guest_call(handle, {"op": "list", "path": sandbox_path(path)})
        return [
            FileInfo(
                name=str(e["name"]),
                path=str(e["path"]),
                type=FileType(e["type"]),
                size=int(e["size"]),
                mode=int(e["mode"]),
                mtime=float(e["mtime"]),
            )
            for e in frames[-1][0].get("entries", [])
        ]

    async def remove(self, handle: SandboxHandle, path: str) -> None:
        await self._guest_call(handle, {"op": "remove", "path": sandbox_path(path)})

    async def make_dir(self, handle: SandboxHandle, path: str) -> None:
        await self._guest_call(handle, {"op": "mkdir", "path": sandbox_path(path)})

    async def sync(self, handle: SandboxHandle) -> None:
        """Flush the guest's page cache to its disk (before a snapshot)."""
        await self._guest_call(handle, {"op": "sync"})


async def _send_chunks(
    channel: GuestChannel, rid: int, data: bytes, last_flag: str, header: Mapping[str, Any]
) -> None:
    """Send ``data`` in frames of at most ``wire.CHUNK`` bytes (one empty frame for no data),
    ``header[last_flag]`` true on the last."""
    for at in range(0, max(len(data), 1), wire.CHUNK):
        last = at + wire.CHUNK >= len(data)
        await channel.send(rid, {**header, last_flag: last}, data[at : at + wire.CHUNK])
