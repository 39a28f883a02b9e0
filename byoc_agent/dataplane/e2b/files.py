"""envd's HTTP endpoints: ``GET /health``, ``GET /files`` (download), ``POST /files`` (upload).

Uploads come as ``multipart/form-data`` (one ``file`` part per file; its filename is the
destination unless ``?path=`` names it) or as ``application/octet-stream`` to ``?path=``,
optionally gzip-encoded. Errors are JSON ``{"code": <http status>, "message": ...}`` as
envd answers them. Downloads are sent uncompressed whatever ``Accept-Encoding`` asks.
Signed URLs (``?signature=``) are not supported: every request needs
the ``X-Access-Token`` header.
"""

from __future__ import annotations

import zlib
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from byoc_agent.dataplane.e2b.access import Caller, EnvdError, from_corral, resolve
from byoc_agent.dataplane.server import MAX_UPLOAD_BYTES, SandboxAccess
from byoc_agent.protocol import messages
from byoc_agent.protocol.errors import CorralError

MAX_PATH = 4096


def envd_error_response(e: EnvdError) -> JSONResponse:
    return JSONResponse({"code": e.status, "message": e.message}, status_code=e.status)


def _path(path: str) -> str:
    if not path or len(path) > MAX_PATH or "\x00" in path:
        raise EnvdError(400, "path must be 1-4096 characters without NUL bytes")
    return path


def _absolute(path: str) -> str:
    return path if path.startswith("/") else f"/root/{path}"


def _gunzip(data: bytes) -> bytes:
    try:
        out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, MAX_UPLOAD_BYTES + 1)
    except zlib.error as e:
        raise EnvdError(400, f"body is not valid gzip: {e}") from e
    if len(out) > MAX_UPLOAD_BYTES:
        raise EnvdError(413, "file is over 1 GiB")
    return out


def build_router(access: SandboxAccess) -> APIRouter:
    router = APIRouter()

    def caller(request: Request) -> Caller:
        return resolve(access, request.headers, messages.Scope.FILES)

    @router.get("/health", status_code=204)
    async def health(request: Request) -> Response:
        """204 while the sandbox runs; 502 "... was not found" once it does not (E2B's edge)."""
        try:
            caller(request)
        except EnvdError as e:
            return envd_error_response(e)
        return Response(status_code=204)

    @router.get("/files")
    async def download(
        request: Request, path: Annotated[str, Query(max_length=MAX_PATH)] = ""
    ) -> Response:
        try:
            who = caller(request)
        except EnvdError as e:
            return envd_error_response(e)
        try:
            data = await access.runtime.read_file(who.handle, _path(path))
        except EnvdError as e:
            return envd_error_response(e)
        except CorralError as e:
            return envd_error_response(from_corral(e, who.sandbox_id))
        return Response(content=data, media_type="application/octet-stream")

    @router.post("/files")
    async def upload(
        request: Request, path: Annotated[str, Query(max_length=MAX_PATH)] = ""
    ) -> Response:
        try:
            who = caller(request)
        except EnvdError as e:
            return envd_error_response(e)
        try:
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES + 1024 * 1024:
                raise EnvdError(413, "file is over 1 GiB")
            kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if kind == "multipart/form-data":
                written = await _multipart(access, who, request, path)
            else:
                body = await _body(request)
                if request.headers.get("content-encoding", "").lower() == "gzip":
                    body = _gunzip(body)
                target = _path(path)
                await access.runtime.write_file(who.handle, target, body)
                written = [_absolute(target)]
        except EnvdError as e:
            return envd_error_response(e)
        except CorralError as e:
            return envd_error_response(from_corral(e, who.sandbox_id))
        return JSONResponse(
            [{"name": p.rstrip("/").rsplit("/", 1)[-1], "type": "file", "path": p} for p in written]
        )

    return router


async def _body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_UPLOAD_BYTES:
            raise EnvdError(413, "file is over 1 GiB")
        chunks.append(chunk)
    return b"".join(chunks)


async def _multipart(
    access: SandboxAccess, who: Caller, request: Request, path: str
) -> list[str]:
    async with request.form(max_files=1000, max_fields=1000) as form:
        parts = [p for p in form.getlist("file") if isinstance(p, UploadFile)]
        if not parts:
            raise EnvdError(400, "multipart body has no 'file' part")
        if path and len(parts) > 1:
            raise EnvdError(400, "?path= names one file; send several without it")
        written = []
        for part in parts:
            target = _path(path or part.filename or "")
            data = await part.read()
            if len(data) > MAX_UPLOAD_BYTES:
                raise EnvdError(413, "file is over 1 GiB")
            await access.runtime.write_file(who.handle, target, data)
            written.append(_absolute(target))
        return written
