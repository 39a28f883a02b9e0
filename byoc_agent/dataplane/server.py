"""Data-plane HTTP server. Command output and file contents flow only through here.

Every request carries a sandbox token signed by the control plane for one sandbox; the
agent checks it locally (kid, signature, expiry, agent, tenant, sandbox, scope), so the
control plane is never on the path of customer data.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Protocol

import structlog
import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp

from byoc_agent.protocol import messages, verify
from byoc_agent.protocol.errors import (
    CorralError,
    EnvelopeRejectedError,
    ErrorCode,
    InvalidArgumentError,
    http_status,
)
from byoc_agent.runtimes.base import ExecRequest, Exit, Runtime, SandboxHandle, Stderr, Stdout
from byoc_agent.runtimes.exec_stream import encode_error, encode_event
from byoc_agent.state import AgentIdentity

log = structlog.get_logger(__name__)

MAX_UPLOAD_BYTES = 1024 * 1024 * 1024
MAX_PATH = 4096



class SandboxAccess(Protocol):
    """What the data plane needs from the agent."""

    identity: AgentIdentity
    keyring: verify.Keyring
    runtime: Runtime

    def running_handle(self, sandbox_id: str) -> SandboxHandle: ...


class ExecBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cmd: Annotated[str, Field(min_length=1, max_length=100_000)]
    env: Annotated[dict[str, str], Field(max_length=messages.MAX_ENV_VARS)] = Field(
        default_factory=dict
    )
    cwd: Annotated[str | None, Field(max_length=MAX_PATH)] = None
    stdin: str | None = None
    timeout_s: Annotated[float, Field(gt=0, le=86400)] = 60.0

    def request(self) -> ExecRequest:
        """The runtime's request (stdin decoded). Raises InvalidArgumentError."""
        stdin: bytes | None = None
        if self.stdin is not None:
            try:
                stdin = base64.b64decode(self.stdin, validate=True)
            except (binascii.Error, ValueError) as e:
                raise InvalidArgumentError("stdin must be base64") from e
        return ExecRequest(
            cmd=self.cmd, env=self.env, cwd=self.cwd, stdin=stdin, timeout_s=self.timeout_s
        )


class HTTPError(Exception):
    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _error(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    body: dict[str, str] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status)


def _check_path(path: str) -> str:
    if not path or len(path) > MAX_PATH or "\x00" in path:
        raise InvalidArgumentError("path must be 1-4096 characters without NUL bytes")
    if not path.startswith("/"):
        raise InvalidArgumentError(f"path must be absolute (start with /), got {path!r}")
    return path


def verify_sandbox_token(
    access: SandboxAccess, raw: bytes, sandbox_id: str | None, scope: messages.Scope
) -> messages.SandboxToken:
    """Check a sandbox token locally: kid, signature, time, agent, tenant, sandbox, scope.

    ``sandbox_id=None`` accepts the token's own sandbox (the caller routes by it).
    Raises :class:`HTTPError` (401, 403 or 404).
    """
    try:
        _, token = verify.verify_model(
            raw,
            typ=messages.SANDBOX_TOKEN_TYP,
            model=messages.SandboxToken,
            keyring=access.keyring,
            max_bytes=8192,
        )
    except EnvelopeRejectedError as e:
        raise HTTPError(
            401, ErrorCode.UNAUTHENTICATED, f"invalid sandbox token ({e.reason.value})"
        ) from e
    now = time.time()
    if token.exp <= now:
        raise HTTPError(401, ErrorCode.UNAUTHENTICATED, "sandbox token expired; refresh it")
    if token.iat > now + verify.CLOCK_SKEW_S:
        raise HTTPError(401, ErrorCode.UNAUTHENTICATED, "sandbox token not yet valid")
    wanted = token.sandbox_id if sandbox_id is None else sandbox_id
    if (
        token.agent_id != access.identity.agent_id
        or token.tenant_id != access.identity.tenant_id
        or token.sandbox_id != wanted
    ):
        raise HTTPError(404, ErrorCode.NOT_FOUND, f"sandbox {wanted} not found")
    if scope not in token.scopes:
        raise HTTPError(403, ErrorCode.FORBIDDEN, f"token lacks the {scope.value} scope")
    return token


def add_error_handlers(app: FastAPI, where: str) -> None:
    """Errors as ``{"error": {"code", "message"[, "field"]}}``: HTTPError and CorralError
    with their status, invalid input as 400 naming the field, anything else a logged 500."""

    @app.exception_handler(HTTPError)
    async def _http_error(_: Request, e: HTTPError) -> JSONResponse:
        return _error(e.status, e.code.value, e.message)

    @app.exception_handler(CorralError)
    async def _corral_error(_: Request, e: CorralError) -> JSONResponse:
        return _error(http_status(e), e.code.value, e.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query")]
        field = ".".join(loc) or None
        return _error(400, "invalid_argument", f"{field or 'request'}: {first['msg']}", field)

    @app.exception_handler(Exception)
    async def _crash(_: Request, e: Exception) -> JSONResponse:
        log.exception("http_handler_error", where=where, error_type=type(e).__name__)
        return _error(500, "internal", f"internal error in {where}")


async def read_upload(request: Request) -> bytes:
    """The request body, refused with 413 past MAX_UPLOAD_BYTES (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
        raise HTTPError(413, ErrorCode.PAYLOAD_TOO_LARGE, "file is over 1 GiB")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_UPLOAD_BYTES:
            raise HTTPError(413, ErrorCode.PAYLOAD_TOO_LARGE, "file is over 1 GiB")
        chunks.append(chunk)
    return b"".join(chunks)


def create_dataplane_app(access: SandboxAccess) -> FastAPI:
    app = FastAPI(title="Corral data plane", version="1", docs_url=None, redoc_url=None)
    add_error_handlers(app, "the agent's data plane")

    def authorize(request: Request, sandbox_id: str, scope: messages.Scope) -> SandboxHandle:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            raise HTTPError(401, ErrorCode.UNAUTHENTICATED, "missing Bearer sandbox token")
        raw = header[7:].strip().encode("ascii", errors="replace")
        verify_sandbox_token(access, raw, sandbox_id, scope)
        return access.running_handle(sandbox_id)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "agent_id": access.identity.agent_id}

    @app.post("/v1/sandboxes/{sandbox_id}/exec")
    async def exec_(sandbox_id: str, body: ExecBody, request: Request) -> StreamingResponse:
        handle = authorize(request, sandbox_id, messages.Scope.EXEC)
        req = body.request()
        if body.cwd is not None:
            _check_path(body.cwd)
        events = access.runtime.exec(handle, req)
        # Pull the first event before answering so "sandbox not running" is an HTTP error.
        first = await _first(events)

        async def lines() -> AsyncIterator[bytes]:
            try:
                if first is not None:
                    yield encode_event(first)
                    async for ev in events:
                        yield encode_event(ev)
            except CorralError as e:
                yield encode_error(e)

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.get("/v1/sandboxes/{sandbox_id}/files")
    async def read_file(
        sandbox_id: str, request: Request, path: Annotated[str, Query()]
    ) -> Response:
        handle = authorize(request, sandbox_id, messages.Scope.FILES)
        data = await access.runtime.read_file(handle, _check_path(path))
        return Response(content=data, media_type="application/octet-stream")

    @app.put("/v1/sandboxes/{sandbox_id}/files")
    async def write_file(
        sandbox_id: str, request: Request, path: Annotated[str, Query()]
    ) -> dict[str, object]:
        handle = authorize(request, sandbox_id, messages.Scope.FILES)
        _check_path(path)
        data = await read_upload(request)
        await access.runtime.write_file(handle, path, data)
        return {"path": path, "size": len(data)}

    @app.get("/v1/sandboxes/{sandbox_id}/files/list")
    async def list_dir(
        sandbox_id: str, request: Request, path: Annotated[str, Query()]
    ) -> dict[str, list[dict[str, object]]]:
        handle = authorize(request, sandbox_id, messages.Scope.FILES)
        items = await access.runtime.list_dir(handle, _check_path(path))
        return {
            "items": [
                {"name": i.name, "path": i.path, "type": i.type.value, "size": i.size,
                 "mode": i.mode, "mtime": i.mtime}
                for i in items
            ]
        }

    @app.delete("/v1/sandboxes/{sandbox_id}/files", status_code=204)
    async def remove(sandbox_id: str, request: Request, path: Annotated[str, Query()]) -> None:
        handle = authorize(request, sandbox_id, messages.Scope.FILES)
        await access.runtime.remove(handle, _check_path(path))

    @app.post("/v1/sandboxes/{sandbox_id}/files/mkdir", status_code=204)
    async def make_dir(sandbox_id: str, request: Request, path: Annotated[str, Query()]) -> None:
        handle = authorize(request, sandbox_id, messages.Scope.FILES)
        await access.runtime.make_dir(handle, _check_path(path))

    return app


async def _first(events: AsyncIterator[Stdout | Stderr | Exit]) -> Stdout | Stderr | Exit | None:
    try:
        return await anext(events)
    except StopAsyncIteration:
        return None


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the agent's main owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> None:
    """Serve until cancelled (over TLS when given a certificate and its key)."""
    server = _Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off",
                       access_log=False, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    )
    try:
        await server.serve()
    finally:
        server.should_exit = True
