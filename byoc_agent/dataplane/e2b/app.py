"""The ASGI entry point: envd's Connect services in front of the data plane's own app."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from byoc_agent.dataplane.e2b.files import build_router
from byoc_agent.dataplane.e2b.filesystem import FilesystemService
from byoc_agent.dataplane.e2b.processes import ProcessService, ProcessTable
from byoc_agent.dataplane.envd.filesystem.filesystem_connect import (
    FilesystemASGIApplication,
)
from byoc_agent.dataplane.envd.process.process_connect import ProcessASGIApplication
from byoc_agent.dataplane.server import SandboxAccess

# Connect request messages are tiny (commands, paths); file contents go over /files.
READ_MAX_BYTES = 4 * 1024 * 1024


class EnvdRouter:
    """Sends ``/process.Process/*`` and ``/filesystem.Filesystem/*`` to connectrpc."""

    def __init__(self, app: ASGIApp, access: SandboxAccess) -> None:
        self._app = app
        self.processes = ProcessTable(access)
        self._process = ProcessASGIApplication(
            ProcessService(access, self.processes), read_max_bytes=READ_MAX_BYTES
        )
        self._filesystem = FilesystemASGIApplication(
            FilesystemService(access), read_max_bytes=READ_MAX_BYTES
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/process.Process/"):
                await self._process(scope, receive, send)
                return
            if path.startswith("/filesystem.Filesystem/"):
                await self._filesystem(scope, receive, send)
                return
        await self._app(scope, receive, send)


def envd_asgi(app: FastAPI, access: SandboxAccess) -> EnvdRouter:
    """``app`` (the data plane) plus envd's ``/files``, ``/health`` and Connect services."""
    app.include_router(build_router(access))
    return EnvdRouter(app, access)
