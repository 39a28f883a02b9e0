"""hostd's HTTPS server: one host's local Runtime, served to its manager agent.

Every request must carry ``Authorization: Bearer <secret>`` (compared in constant time);
anything else is a bare 401, on every path, known or not, before any routing. The routes
are in :mod:`byoc_agent.hostd.wire`. Snapshots are host-local: ``snapshot`` writes to
``<data dir>/snapshots/<snapshot_id>`` (replacing an earlier try of the same id) and
``restore`` reads from there; a snapshot never leaves the host.

Exec: the command's events stream as NDJSON. The stream watches the connection: when the
client goes away (or stops listening and closes its response) the runtime's exec iterator
is closed, which kills the command and everything it started, as a local caller closing
the iterator would.
"""

from __future__ import annotations

import asyncio
import hmac
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from byoc_agent.dataplane.server import add_error_handlers, read_upload
from byoc_agent.protocol.errors import (
    CorralError,
    InvalidArgumentError,
    NotFoundError,
    http_status,
)
from byoc_agent.runtimes.base import (
    Adopting,
    ExecEvent,
    KnowsStopReason,
    Runtime,
    Snapshotting,
)
from byoc_agent.runtimes.exec_stream import encode_error, encode_event
from byoc_agent.runtimes.multi import runtime_names
from byoc_agent.warm_pool import WarmPool

from . import wire
from .pool import HostSandboxes

log = structlog.get_logger(__name__)

_UNAUTHORIZED = b'{"error": {"code": "unauthenticated", "message": "unauthenticated"}}'


class BearerAuth:
    """ASGI middleware: ``Authorization: Bearer <secret>`` or a 401 that says nothing more."""

    def __init__(self, app: ASGIApp, secret: str) -> None:
        if not secret:
            raise InvalidArgumentError("hostd needs a non-empty secret")
        self.app = app
        self._expected = b"Bearer " + secret.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        if not hmac.compare_digest(given, self._expected):
            await _send_json(send, 401, _UNAUTHORIZED, {"www-authenticate": "Bearer"})
            return
        await self.app(scope, receive, send)


async def _send_json(
    send: Send, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _error_body(error: CorralError) -> bytes:
    return wire.ErrorReply.of(error).model_dump_json().encode()


class ExecStream(Response):
    """An exec's events as NDJSON, for as long as the client listens.

    The first event is awaited before the status line, so an exec that cannot start
    (sandbox not running, missing cwd) is an ordinary error response. Meanwhile and after,
    a second task waits for the client to disconnect; whichever ends first ends the other,
    and the events iterator is always closed (which stops a command still running).
    Starlette's StreamingResponse watches for a disconnect only under ASGI HTTP spec < 2.4
    and only once streaming: a silent command, or one not yet started, would run on.
    """

    media_type = "application/x-ndjson"

    def __init__(self, events: AsyncIterator[ExecEvent], sandbox_id: str) -> None:
        super().__init__(media_type=self.media_type)
        self._events = events
        self._sandbox_id = sandbox_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.create_task(self._pump(send))
        gone = asyncio.create_task(_disconnected(receive))
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, gone):
                task.cancel()
            await asyncio.gather(pump, gone, return_exceptions=True)
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                await asyncio.shield(aclose())
        if not pump.done() or pump.cancelled():
            log.info("exec_client_gone", sandbox_id=self._sandbox_id)

    async def _pump(self, send: Send) -> None:
        try:
            first: ExecEvent | None = await anext(self._events)
        except StopAsyncIteration:
            first = None
        except Exception as e:
            error = self._corral(e)
            await _send_json(send, http_status(error), _error_body(error))
            return
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", self.media_type.encode())],
        })  # fmt: skip
        try:
            if first is not None:
                await send({"type": "http.response.body", "body": encode_event(first),
                            "more_body": True})  # fmt: skip
                async for event in self._events:
                    await send({"type": "http.response.body", "body": encode_event(event),
                                "more_body": True})  # fmt: skip
        except OSError:
            return  # the client went away mid-write
        except Exception as e:
            error = self._corral(e)
            await send({"type": "http.response.body", "body": encode_error(error),
                        "more_body": True})  # fmt: skip
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _corral(self, e: Exception) -> CorralError:
        """``e`` as it crosses the wire: a CorralError as it is, anything else an
        internal error (logged here, never sent: its text may hold host details)."""
        if isinstance(e, CorralError):
            return e
        log.error("exec_failed", sandbox_id=self._sandbox_id, error_type=type(e).__name__,
                  exc_info=e)  # fmt: skip
        return CorralError("internal error in hostd")


async def _disconnected(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


def create_hostd_app(
    runtime: Runtime,
    *,
    secret: str,
    data_dir: Path,
    templates: Callable[[], list[str]],
    machine: Callable[[], wire.HealthReply],
    pool: WarmPool | None = None,
    sandboxes: HostSandboxes | None = None,
) -> ASGIApp:
    """The app: ``runtime`` behind bearer auth. ``templates`` and ``machine`` are asked on
    every health check (templates may be built after the start). ``pool``: creates are
    served from it when a member matches (see :mod:`byoc_agent.hostd.pool`);
    ``sandboxes``: where the sizes of the sandboxes started here are recorded."""
    app = FastAPI(title="Corral hostd", version="1", docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip
    add_error_handlers(app, "hostd")
    snapshots_dir = data_dir / "snapshots"

    def snapshots() -> Snapshotting:
        if not isinstance(runtime, Snapshotting):
            raise InvalidArgumentError(f"runtime {runtime.name} cannot pause or snapshot")
        return runtime

    @app.get(wire.HEALTH)
    async def health() -> wire.HealthReply:
        found = await asyncio.to_thread(templates)
        return machine().model_copy(update={"runtimes": runtime_names(runtime),
                                            "templates": found})  # fmt: skip

    @app.post(wire.CREATE)
    async def create(body: wire.SpecModel) -> wire.HandleModel:
        spec = body.spec()
        handle = None
        if pool is not None:
            # Members start without a network: a sandbox with egress starts cold.
            handle = None if spec.egress else await pool.take(spec)
            if handle is None:
                pool.make_room(spec.cpu, spec.memory_mb)
        if handle is None:
            handle = await runtime.create(spec)
        elif pool is not None:
            pool.confirm(handle)
        if sandboxes is not None:
            await asyncio.to_thread(sandboxes.add, handle.sandbox_id, spec.cpu, spec.memory_mb)
        log.info("sandbox_created", sandbox_id=handle.sandbox_id, runtime=handle.runtime,
                 requested=spec.sandbox_id)  # fmt: skip
        return wire.HandleModel.of(handle)

    @app.post(wire.RECOVER)
    async def recover(body: wire.HandleBody) -> wire.LivenessReply:
        return wire.LivenessReply(liveness=await runtime.recover(body.handle.handle()))

    @app.post(wire.INSPECT)
    async def inspect(body: wire.HandleBody) -> wire.LivenessReply:
        return wire.LivenessReply(liveness=await runtime.inspect(body.handle.handle()))

    @app.post(wire.EXEC)
    async def exec_(body: wire.ExecBody) -> Response:
        handle = body.handle.handle()
        return ExecStream(runtime.exec(handle, body.request()), handle.sandbox_id)

    @app.post(wire.DESTROY, status_code=204)
    async def destroy(body: wire.HandleBody) -> None:
        await runtime.destroy(body.handle.handle())
        if sandboxes is not None:
            await asyncio.to_thread(sandboxes.remove, body.handle.sandbox_id)
        log.info("sandbox_destroyed", sandbox_id=body.handle.sandbox_id)

    @app.post(wire.STOP_REASON)
    async def stop_reason(body: wire.HandleBody) -> wire.StopReasonReply:
        if not isinstance(runtime, KnowsStopReason):
            return wire.StopReasonReply(reason=None)
        return wire.StopReasonReply(reason=await runtime.stop_reason(body.handle.handle()))

    @app.post(wire.ADOPT, status_code=204)
    async def adopt(body: wire.AdoptBody) -> None:
        if not isinstance(runtime, Adopting):
            raise InvalidArgumentError(f"runtime {runtime.name} cannot adopt pool members")
        await runtime.adopt(body.handle.handle(), body.spec.spec())

    @app.post(wire.WRITE_FILE, status_code=204)
    async def write_file(request: Request, path: str) -> None:
        handle = wire.decode_handle_header(request.headers.get(wire.HANDLE_HEADER))
        wire.check_path(path)
        await runtime.write_file(handle, path, await read_upload(request))

    @app.post(wire.READ_FILE)
    async def read_file(body: wire.PathBody) -> Response:
        data = await runtime.read_file(body.handle.handle(), body.path)
        return Response(content=data, media_type="application/octet-stream")

    @app.post(wire.LIST_DIR)
    async def list_dir(body: wire.PathBody) -> wire.ListReply:
        items = await runtime.list_dir(body.handle.handle(), body.path)
        return wire.ListReply(items=[wire.FileInfoModel.of(i) for i in items])

    @app.post(wire.REMOVE, status_code=204)
    async def remove(body: wire.PathBody) -> None:
        await runtime.remove(body.handle.handle(), body.path)

    @app.post(wire.MAKE_DIR, status_code=204)
    async def make_dir(body: wire.PathBody) -> None:
        await runtime.make_dir(body.handle.handle(), body.path)

    @app.post(wire.PAUSE, status_code=204)
    async def pause(body: wire.HandleBody) -> None:
        await snapshots().pause(body.handle.handle())
        log.info("sandbox_paused", sandbox_id=body.handle.sandbox_id)

    @app.post(wire.RESUME, status_code=204)
    async def resume(body: wire.HandleBody) -> None:
        await snapshots().resume(body.handle.handle())
        log.info("sandbox_resumed", sandbox_id=body.handle.sandbox_id)

    @app.post(wire.SNAPSHOT, status_code=204)
    async def snapshot(body: wire.SnapshotBody) -> None:
        runtime_ = snapshots()
        dest = snapshots_dir / body.snapshot_id
        await asyncio.to_thread(snapshots_dir.mkdir, parents=True, exist_ok=True)
        # The manager takes a snapshot again only when it has no record of the first try
        # (it crashed in between): that try is replaced, as the agent does locally.
        await asyncio.to_thread(shutil.rmtree, dest, True)
        await runtime_.snapshot(body.handle.handle(), dest)
        log.info("snapshot_taken", sandbox_id=body.handle.sandbox_id,
                 snapshot_id=body.snapshot_id)  # fmt: skip

    @app.post(wire.RESTORE)
    async def restore(body: wire.RestoreBody) -> wire.HandleModel:
        runtime_ = snapshots()
        source = snapshots_dir / body.snapshot_id
        if not await asyncio.to_thread(source.is_dir):
            raise NotFoundError(f"snapshot {body.snapshot_id} is not on this host")
        spec = body.spec.spec()
        if pool is not None:
            pool.make_room(spec.cpu, spec.memory_mb)
        handle = await runtime_.restore(spec, source)
        if sandboxes is not None:
            await asyncio.to_thread(sandboxes.add, handle.sandbox_id, spec.cpu, spec.memory_mb)
        log.info("sandbox_restored", sandbox_id=handle.sandbox_id, snapshot_id=body.snapshot_id)
        return wire.HandleModel.of(handle)

    @app.post(wire.DELETE_SNAPSHOT, status_code=204)
    async def delete_snapshot(body: wire.SnapshotIdBody) -> None:
        await asyncio.to_thread(shutil.rmtree, snapshots_dir / body.snapshot_id, True)
        log.info("snapshot_deleted", snapshot_id=body.snapshot_id)

    return BearerAuth(app, secret)

