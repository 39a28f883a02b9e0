"""``RemoteRuntime``: a host's hostd, used as a local :class:`~byoc_agent.runtimes.base.Runtime`.

It trusts exactly one certificate, the host's own (made by the manager, delivered in the
host's user data): the TLS context holds it alone and checks no hostname. Every request
carries the host's bearer secret. Errors hostd reports come back as the same typed
:class:`~byoc_agent.protocol.errors.CorralError` (by their wire code); a host that cannot be
reached (refused, timed out, a certificate that is not the pinned one) is a
:class:`~byoc_agent.protocol.errors.RetryableError`.

Handles are passed through unchanged: they are the host runtime's own (``runtime`` is e.g.
``gvisor``, ``data`` holds host paths). A caller managing several hosts wraps them.

Snapshots stay on the host: :meth:`RemoteRuntime.snapshot` and :meth:`RemoteRuntime.restore`
take a path only for its last component, the snapshot id (``<hostd data>/snapshots/<id>``
on the host); nothing is written at that path on this machine. :meth:`delete_snapshot`
removes one from the host.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from pydantic import BaseModel, ValidationError

from byoc_agent.protocol.errors import (
    CorralError,
    InvalidArgumentError,
    RetryableError,
    error_from_code,
)
from byoc_agent.protocol.messages import is_id
from byoc_agent.runtimes.base import (
    EndReason,
    ExecEvent,
    ExecRequest,
    Exit,
    FileInfo,
    Liveness,
    SandboxHandle,
    SandboxSpec,
)
from byoc_agent.runtimes.exec_stream import decode_line

from . import wire

CONNECT_TIMEOUT_S = 10.0
# An exec's stream may be silent for as long as its command: the read deadline is the
# command's own timeout plus this (the host ends a command past its timeout itself).
EXEC_READ_GRACE_S = 60.0


def pinned_ssl_context(cert_pem: bytes) -> ssl.SSLContext:
    """A client TLS context that trusts ``cert_pem`` and nothing else, with no hostname check."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=cert_pem.decode("ascii"))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class RemoteRuntime:
    """Runtime + Snapshotting + KnowsStopReason + Adopting over HTTPS to one host's hostd."""

    def __init__(
        self,
        base_url: str,
        *,
        cert_pem: bytes,
        secret: str,
        name: str = "hostd",
        timeout_s: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``timeout_s`` bounds every call but exec (whose bound is its command's timeout);
        ``transport`` replaces the network (tests: ``httpx.ASGITransport`` over the app)."""
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            verify=pinned_ssl_context(cert_pem),
            headers={"authorization": f"Bearer {secret}"},
            timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
            transport=transport,
            trust_env=False,  # no proxy from the environment between manager and host
            # Every running exec holds a connection: no pool limit to queue them behind.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
        )

    def __repr__(self) -> str:
        return f"RemoteRuntime({self.base_url!r}, name={self.name!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---- plumbing ------------------------------------------------------------------

    def _unreachable(self, e: httpx.TransportError) -> RetryableError:
        return RetryableError(f"hostd at {self.base_url} is unreachable: {e or type(e).__name__}")

    def _error(self, response: httpx.Response) -> CorralError:
        if response.status_code == 401:
            return CorralError(f"hostd at {self.base_url} refused this manager's secret")
        try:
            detail = wire.ErrorReply.model_validate_json(response.content).error
        except ValidationError:
            return CorralError(f"hostd at {self.base_url} answered HTTP {response.status_code}")
        return error_from_code(detail.code, detail.message)

    async def _post(
        self,
        path: str,
        body: BaseModel,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            response = await self._http.post(
                path,
                content=body.model_dump_json() if raw is None else raw,
                headers={"content-type": "application/json" if raw is None
                         else "application/octet-stream", **(headers or {})},
                params=params,
            )  # fmt: skip
        except httpx.TransportError as e:
            raise self._unreachable(e) from e
        if not response.is_success:
            raise self._error(response)
        return response

    @staticmethod
    def _handle(handle: SandboxHandle) -> wire.HandleBody:
        return wire.HandleBody(handle=wire.HandleModel.of(handle))

    # ---- health --------------------------------------------------------------------

    async def health(self) -> wire.HostHealth:
        """The host's runtimes, built templates, CPUs, memory and KVM (the ready check)."""
        try:
            response = await self._http.get(wire.HEALTH)
        except httpx.TransportError as e:
            raise self._unreachable(e) from e
        if not response.is_success:
            raise self._error(response)
        reply = wire.HealthReply.model_validate_json(response.content)
        return wire.HostHealth(
            runtimes=tuple(reply.runtimes),
            templates=tuple(reply.templates),
            cpu=reply.cpu,
            memory_mib=reply.memory_mib,
            kvm=reply.kvm,
        )

    # ---- Runtime -------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxHandle:
        response = await self._post(wire.CREATE, wire.SpecModel.of(spec))
        return wire.HandleModel.model_validate_json(response.content).handle()

    async def recover(self, handle: SandboxHandle) -> Liveness:
        response = await self._post(wire.RECOVER, self._handle(handle))
        return wire.LivenessReply.model_validate_json(response.content).liveness

    async def inspect(self, handle: SandboxHandle) -> Liveness:
        response = await self._post(wire.INSPECT, self._handle(handle))
        return wire.LivenessReply.model_validate_json(response.content).liveness

    async def exec(self, handle: SandboxHandle, request: ExecRequest) -> AsyncIterator[ExecEvent]:
        """Stream the command's events. Closing this iterator early closes the response,
        and hostd then kills the command."""
        body = wire.build(
            wire.ExecBody,
            handle=wire.HandleModel.of(handle),
            cmd=request.cmd,
            env=dict(request.env),
            cwd=request.cwd,
            stdin=None if request.stdin is None else base64.b64encode(request.stdin).decode(),
            timeout_s=request.timeout_s,
        )
        timeout = httpx.Timeout(
            self._timeout_s, connect=CONNECT_TIMEOUT_S, read=request.timeout_s + EXEC_READ_GRACE_S
        )
        exited = False
        try:
            async with self._http.stream(
                "POST", wire.EXEC, content=body.model_dump_json(),
                headers={"content-type": "application/json"}, timeout=timeout,
            ) as response:  # fmt: skip
                if not response.is_success:
                    await response.aread()
                    raise self._error(response)
                async for line in response.aiter_lines():
                    if not line:
                        continue
                    event = decode_line(line)
                    exited = isinstance(event, Exit)
                    yield event
                    if exited:
                        return
        except httpx.TransportError as e:
            raise self._unreachable(e) from e
        if not exited:
            raise CorralError(f"hostd at {self.base_url} ended an exec stream without its exit")

    async def write_file(self, handle: SandboxHandle, path: str, data: bytes) -> None:
        await self._post(
            wire.WRITE_FILE,
            self._handle(handle),
            raw=data,
            headers={wire.HANDLE_HEADER: wire.encode_handle_header(handle)},
            params={"path": path},
        )

    async def read_file(self, handle: SandboxHandle, path: str) -> bytes:
        response = await self._post(wire.READ_FILE, self._path(handle, path))
        return response.content

    async def list_dir(self, handle: SandboxHandle, path: str) -> list[FileInfo]:
        response = await self._post(wire.LIST_DIR, self._path(handle, path))
        return [i.info() for i in wire.ListReply.model_validate_json(response.content).items]

    async def remove(self, handle: SandboxHandle, path: str) -> None:
        await self._post(wire.REMOVE, self._path(handle, path))

    async def make_dir(self, handle: SandboxHandle, path: str) -> None:
        await self._post(wire.MAKE_DIR, self._path(handle, path))

    async def destroy(self, handle: SandboxHandle) -> None:
        await self._post(wire.DESTROY, self._handle(handle))

    @staticmethod
    def _path(handle: SandboxHandle, path: str) -> wire.PathBody:
        return wire.build(wire.PathBody, handle=wire.HandleModel.of(handle), path=path)

    # ---- KnowsStopReason -------------------------------------------------------------

    async def stop_reason(self, handle: SandboxHandle) -> EndReason | None:
        response = await self._post(wire.STOP_REASON, self._handle(handle))
        return wire.StopReasonReply.model_validate_json(response.content).reason

    # ---- Adopting (warm pools) ---------------------------------------------------------

    async def adopt(self, handle: SandboxHandle, spec: SandboxSpec) -> None:
        body = wire.AdoptBody(handle=wire.HandleModel.of(handle), spec=wire.SpecModel.of(spec))
        await self._post(wire.ADOPT, body)

    # ---- Snapshotting ----------------------------------------------------------------

    async def pause(self, handle: SandboxHandle) -> None:
        await self._post(wire.PAUSE, self._handle(handle))

    async def resume(self, handle: SandboxHandle) -> None:
        await self._post(wire.RESUME, self._handle(handle))

    async def snapshot(self, handle: SandboxHandle, dest: Path) -> None:
        """Snapshot on the host as ``dest.name`` (see the module docstring)."""
        body = wire.SnapshotBody(handle=wire.HandleModel.of(handle), snapshot_id=_id(dest.name))
        await self._post(wire.SNAPSHOT, body)

    async def restore(self, spec: SandboxSpec, source: Path) -> SandboxHandle:
        """A new sandbox from the host's snapshot ``source.name``."""
        body = wire.RestoreBody(spec=wire.SpecModel.of(spec), snapshot_id=_id(source.name))
        response = await self._post(wire.RESTORE, body)
        return wire.HandleModel.model_validate_json(response.content).handle()

    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Remove a snapshot from the host (idempotent)."""
        await self._post(wire.DELETE_SNAPSHOT, wire.SnapshotIdBody(snapshot_id=_id(snapshot_id)))


def _id(name: str) -> str:
    if not is_id(name):
        raise InvalidArgumentError(
            f"a host's snapshot is named by an id ([a-z0-9][a-z0-9_-]{{2,63}}), not {name!r}"
        )
    return name
