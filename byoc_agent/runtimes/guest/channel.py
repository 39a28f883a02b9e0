"""The agent's end of a microVM's virtio-serial port: many requests over one connection.

QEMU exposes the port as a unix socket (``-chardev socket,server=on``). One
:class:`GuestChannel` holds the connection, a reader task that routes frames to the request
they answer (by ``id``), and a lock that keeps frames whole on the way out. When the VM dies or
the connection breaks, every open request ends with :class:`ChannelClosed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from byoc_agent.runtimes.guest import wire

TERMINAL = frozenset({"exit", "ok", "error", "pong"})
Frame = tuple[dict[str, Any], bytes]


class ChannelClosed(ConnectionError):
    """The guest is gone (the VM stopped, or its daemon broke the protocol)."""


class GuestChannel:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._queues: dict[int, asyncio.Queue[Frame | None]] = {}
        self._ids = itertools.count(1)
        self._send_lock = asyncio.Lock()
        self.closed = False

    @property
    def alive(self) -> bool:
        return self._task is not None and not self.closed

    async def connect(self, timeout_s: float) -> None:
        """Connect and wait until the guest daemon answers a ping (it may still be booting)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._reader, self._writer = await asyncio.open_unix_connection(
                    str(self.socket_path), limit=wire.MAX_BODY * 2
                )
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise ChannelClosed(f"no guest socket at {self.socket_path}") from None
                await asyncio.sleep(0.02)
        self._task = asyncio.create_task(self._read_loop())
        # Pings sent before the guest opens its port wait in the socket; the first answer
        # (to any of them) means the daemon is serving.
        answered = asyncio.Event()
        rid = next(self._ids)
        queue: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._queues[rid] = queue

        async def watch() -> None:
            item = await queue.get()
            if item is not None:
                answered.set()

        watcher = asyncio.create_task(watch())
        try:
            while not answered.is_set():
                if self.closed:
                    raise ChannelClosed("the guest closed the connection while booting")
                if time.monotonic() > deadline:
                    raise ChannelClosed(f"the guest did not answer within {timeout_s:.0f} s")
                await self._send({"id": rid, "op": "ping"})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(answered.wait()), 0.25)
        finally:
            watcher.cancel()
            self._queues.pop(rid, None)

    async def _read_loop(self) -> None:
        assert self._reader is not None
        decoder = wire.Decoder()
        try:
            while True:
                data = await self._reader.read(1 << 16)
                if not data:
                    break
                for header, body in decoder.feed(data):
                    queue = self._queues.get(int(header["id"]))
                    if queue is not None:
                        queue.put_nowait((header, body))
        except (OSError, wire.FrameError):
            pass
        finally:
            self.closed = True
            for queue in self._queues.values():
                queue.put_nowait(None)

    async def _send(self, header: dict[str, Any], body: bytes = b"") -> None:
        if self.closed or self._writer is None:
            raise ChannelClosed("the guest connection is closed")
        async with self._send_lock:
            try:
                self._writer.write(wire.encode(header, body))
                await self._writer.drain()
            except (OSError, RuntimeError) as e:
                raise ChannelClosed(f"cannot write to the guest: {e}") from None

    def open(self) -> tuple[int, asyncio.Queue[Frame | None]]:
        """Reserve a request id and the queue its answers arrive on."""
        rid = next(self._ids)
        queue: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._queues[rid] = queue
        if self.closed:
            queue.put_nowait(None)
        return rid, queue

    def release(self, rid: int) -> None:
        self._queues.pop(rid, None)

    async def send(self, rid: int, header: dict[str, Any], body: bytes = b"") -> None:
        await self._send({**header, "id": rid}, body)

    async def frames(self, rid: int, queue: asyncio.Queue[Frame | None]) -> AsyncIterator[Frame]:
        """Answers to request ``rid`` up to and including its terminal frame."""
        while True:
            item = await queue.get()
            if item is None:
                raise ChannelClosed("the guest went away")
            yield item
            if item[0].get("ev") in TERMINAL:
                return

    async def call(self, header: dict[str, Any], body: bytes = b"") -> list[Frame]:
        """One request, all its answers."""
        rid, queue = self.open()
        try:
            await self.send(rid, header, body)
            return [frame async for frame in self.frames(rid, queue)]
        finally:
            self.release(rid)

    async def close(self) -> None:
        self.closed = True
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
