"""An in-test fake of Corral's control-plane and data-plane HTTP APIs, served for real.

Two FastAPI apps share one :class:`FakeCorral` state and are served by uvicorn on free
ports in background threads, so the SDK talks real HTTP to them. Exec runs real
``sh -c`` processes inside a per-sandbox directory that stands in for the sandbox root.
Knobs (``fail_next``, ``token_ttl_s``, ``exec_script`` ...) let a test provoke the cases
it needs. Shapes follow docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from corral.testing import eventually_sync

ADMIN_TOKEN = "admin-secret-token"
TEMPLATES = frozenset({"base", "python"})
MAX_CPU = 16


class FakeError(Exception):
    """Raised inside a handler; rendered as Corral's JSON error body."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def _error_response(err: FakeError) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": err.code, "message": err.message, "field": err.field}},
        status_code=err.status,
        headers={"x-request-id": f"req-{secrets.token_hex(4)}"},
    )


@dataclass
class Injected:
    """A canned response for the next matching request."""

    plane: str
    status: int
    body: bytes
    content_type: str
    path_contains: str


@dataclass
class FakeSandbox:
    id: str
    tenant_id: str
    template: str
    cpu: int
    memory_mb: int
    timeout_s: int
    env: dict[str, str]
    metadata: dict[str, str]
    root: Path
    state: str = "running"
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    polls_until_running: int = 0
    isolation: str = "gvisor"
    egress: list[str] = field(default_factory=list)

    def wire(self) -> dict[str, object]:
        return {
            "id": self.id,
            "state": self.state,
            "template": self.template,
            "cpu": self.cpu,
            "memory_mb": self.memory_mb,
            "timeout_s": self.timeout_s,
            "metadata": self.metadata,
            "isolation": self.isolation,
            "egress": self.egress,
            "agent_id": "agent-1",
            "created_at": self.created_at.isoformat(),
            "expires_at": (self.created_at + timedelta(seconds=self.timeout_s)).isoformat(),
        }


@dataclass
class Seen:
    """One request a fake server received."""

    plane: str
    method: str
    path: str
    authorization: str


class FakeCorral:
    """State shared by the fake control plane and data plane."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data_plane_url = ""
        self.reset()

    def reset(self) -> None:
        """Forget everything and seed tenants ``acme`` and ``other``, each with one key."""
        shutil.rmtree(self.workdir / "sandboxes", ignore_errors=True)
        self.tenants: dict[str, dict[str, str]] = {}
        self.keys: dict[str, dict[str, str | None]] = {}  # secret -> record
        self.sandboxes: dict[str, FakeSandbox] = {}
        self.tokens: dict[str, tuple[str, datetime]] = {}  # token -> (sandbox_id, exp)
        self.seen: list[Seen] = []
        self.injected: list[Injected] = []
        self.token_ttl_s = 900
        self.reject_all_tokens = False
        self.create_includes_access = True
        self.create_pending_polls = 0
        self.exec_script: list[str] | None = None
        self.counter = itertools.count(1)
        self.acme_key = self._add_tenant("acme")[1]
        self.other_key = self._add_tenant("other")[1]
        self.acme_id = next(t for t, v in self.tenants.items() if v["name"] == "acme")

    # ---- knobs ----

    def fail_next(
        self,
        plane: str,
        status: int,
        code: str | None = None,
        message: str = "injected failure",
        field: str | None = None,
        *,
        raw: str | None = None,
        path_contains: str = "/",
    ) -> None:
        """Answer the next ``plane`` request whose path contains ``path_contains`` with an error."""
        if raw is not None:
            body, ctype = raw.encode(), "text/html"
        else:
            body = json.dumps(
                {"error": {"code": code, "message": message, "field": field}}
            ).encode()
            ctype = "application/json"
        self.injected.append(Injected(plane, status, body, ctype, path_contains))

    def expire_tokens(self) -> None:
        """Invalidate every data-plane token issued so far (the next call gets 401)."""
        self.tokens.clear()

    def requests(self, plane: str, path_contains: str = "") -> list[Seen]:
        return [s for s in self.seen if s.plane == plane and path_contains in s.path]

    def add_sandbox(self, tenant_id: str | None = None, **kwargs: object) -> FakeSandbox:
        """Create a sandbox directly in the fake's state."""
        sid = f"sb-{next(self.counter):04d}"
        root = self.workdir / "sandboxes" / sid
        (root / "home" / "user").mkdir(parents=True)
        sandbox = FakeSandbox(
            id=sid,
            tenant_id=tenant_id or self.acme_id,
            template=str(kwargs.get("template", "base")),
            cpu=int(str(kwargs.get("cpu", 1))),
            memory_mb=int(str(kwargs.get("memory_mb", 512))),
            timeout_s=int(str(kwargs.get("timeout_s", 300))),
            env=dict(kwargs.get("env", {}) or {}),  # type: ignore[call-overload]
            metadata=dict(kwargs.get("metadata", {}) or {}),  # type: ignore[call-overload]
            root=root,
            state=str(kwargs.get("state", "running")),
            isolation=str(kwargs.get("isolation", "gvisor")),
            egress=[str(e) for e in kwargs.get("egress", []) or []],  # type: ignore[attr-defined]
        )
        self.sandboxes[sid] = sandbox
        return sandbox

    # ---- internals ----

    def _add_tenant(self, name: str) -> tuple[str, str]:
        tid = f"t-{name}-{next(self.counter)}"
        self.tenants[tid] = {"id": tid, "name": name, "created_at": _now()}
        return tid, self._add_key(tid, "default")["key"] or ""

    def _add_key(self, tenant_id: str, name: str) -> dict[str, str | None]:
        kid = f"key-{next(self.counter)}"
        secret = f"ck_{kid}_{secrets.token_hex(8)}"
        record: dict[str, str | None] = {
            "id": kid,
            "name": name,
            "tenant_id": tenant_id,
            "created_at": _now(),
            "revoked_at": None,
            "key": secret,
        }
        self.keys[secret] = record
        return record

    def _issue_token(self, sandbox_id: str) -> dict[str, str]:
        token = f"sbt_{secrets.token_hex(12)}"
        exp = datetime.now(UTC) + timedelta(seconds=self.token_ttl_s)
        self.tokens[token] = (sandbox_id, exp)
        return {
            "access_token": token,
            "expires_at": exp.isoformat(),
            "data_plane_url": self.data_plane_url,
        }

    def _caller(self, request: Request) -> tuple[str, str | None]:
        """("operator", None) or ("tenant", tenant_id); 401 otherwise."""
        token = _bearer(request)
        if token == ADMIN_TOKEN:
            return "operator", None
        record = self.keys.get(token)
        if record is None or record["revoked_at"] is not None:
            raise FakeError(401, "unauthenticated", "invalid or revoked API key")
        return "tenant", record["tenant_id"]

    def _operator(self, request: Request) -> None:
        role, _ = self._caller(request)
        if role != "operator":
            raise FakeError(403, "forbidden", "operator role required")

    def _tenant(self, request: Request) -> str:
        role, tenant = self._caller(request)
        if role != "tenant" or tenant is None:
            raise FakeError(403, "forbidden", "a tenant API key is required")
        return tenant

    def _own_sandbox(self, request: Request, sandbox_id: str) -> FakeSandbox:
        tenant = self._tenant(request)
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None or sandbox.tenant_id != tenant:
            raise FakeError(404, "not_found", f"sandbox {sandbox_id} not found")
        return sandbox

    def _data_sandbox(self, request: Request, sandbox_id: str) -> FakeSandbox:
        token = _bearer(request)
        grant = self.tokens.get(token)
        if self.reject_all_tokens or grant is None:
            raise FakeError(401, "unauthenticated", "invalid sandbox token")
        granted_id, exp = grant
        if exp <= datetime.now(UTC):
            raise FakeError(401, "unauthenticated", "sandbox token expired")
        if granted_id != sandbox_id:
            raise FakeError(403, "forbidden", "token is for another sandbox")
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            raise FakeError(404, "not_found", "no such sandbox on this agent")
        if sandbox.state != "running":
            raise FakeError(409, "sandbox_not_running", f"sandbox is {sandbox.state}")
        return sandbox

    def _install_common(self, app: FastAPI, plane: str) -> None:
        @app.exception_handler(FakeError)
        async def _on_error(request: Request, exc: FakeError) -> JSONResponse:
            return _error_response(exc)

        @app.middleware("http")
        async def _record_and_inject(request: Request, call_next):  # type: ignore[no-untyped-def]
            path = request.url.path
            self.seen.append(
                Seen(plane, request.method, path, request.headers.get("authorization", ""))
            )
            for i, inj in enumerate(self.injected):
                if inj.plane == plane and inj.path_contains in path:
                    del self.injected[i]
                    return Response(
                        inj.body,
                        status_code=inj.status,
                        media_type=inj.content_type,
                        headers={"x-request-id": "req-injected"},
                    )
            return await call_next(request)

        @app.get("/healthz")
        async def _healthz() -> dict[str, str]:
            return {"status": "ok"}

    # ---- control plane ----

    def control_app(self) -> FastAPI:
        app = FastAPI()
        self._install_common(app, "control")

        @app.post("/v1/tenants", status_code=201)
        async def create_tenant(request: Request) -> dict[str, object]:
            self._operator(request)
            body = await _json(request)
            name = body.get("name")
            if not isinstance(name, str) or not name:
                raise FakeError(400, "invalid_argument", "name is required", "name")
            tid, secret = self._add_tenant(name)
            key = dict(self.keys[secret])
            key.pop("tenant_id")
            return {"tenant": self.tenants[tid], "api_key": key}

        @app.get("/v1/tenants")
        async def list_tenants(request: Request) -> dict[str, object]:
            self._operator(request)
            return _page(list(self.tenants.values()), request, default_limit=1)

        @app.get("/v1/tenants/{tenant_id}")
        async def get_tenant(request: Request, tenant_id: str) -> dict[str, str]:
            self._operator(request)
            if tenant_id not in self.tenants:
                raise FakeError(404, "not_found", f"tenant {tenant_id} not found")
            return self.tenants[tenant_id]

        @app.post("/v1/tenants/{tenant_id}/api-keys", status_code=201)
        async def create_key(request: Request, tenant_id: str) -> dict[str, str | None]:
            self._operator(request)
            if tenant_id not in self.tenants:
                raise FakeError(404, "not_found", f"tenant {tenant_id} not found")
            body = await _json(request)
            record = dict(self._add_key(tenant_id, str(body.get("name", "default"))))
            record.pop("tenant_id")
            return record

        @app.get("/v1/tenants/{tenant_id}/api-keys")
        async def list_keys(request: Request, tenant_id: str) -> list[dict[str, str | None]]:
            self._operator(request)
            return [
                {k: v for k, v in r.items() if k not in ("key", "tenant_id")}
                for r in self.keys.values()
                if r["tenant_id"] == tenant_id
            ]

        @app.delete("/v1/tenants/{tenant_id}/api-keys/{key_id}", status_code=204)
        async def revoke_key(request: Request, tenant_id: str, key_id: str) -> Response:
            self._operator(request)
            for record in self.keys.values():
                if record["id"] == key_id and record["tenant_id"] == tenant_id:
                    record["revoked_at"] = _now()
                    return Response(status_code=204)
            raise FakeError(404, "not_found", f"api key {key_id} not found")

        @app.post("/v1/agents/enrollment-tokens", status_code=201)
        async def enrollment_token(request: Request) -> dict[str, str]:
            self._operator(request)
            body = await _json(request)
            if body.get("tenant_id") not in self.tenants:
                raise FakeError(400, "invalid_argument", "unknown tenant", "tenant_id")
            ttl = int(str(body.get("ttl_s", 3600)))
            exp = datetime.now(UTC) + timedelta(seconds=ttl)
            return {"token": f"enr_{secrets.token_hex(8)}", "expires_at": exp.isoformat()}

        @app.get("/v1/agents")
        async def list_agents(request: Request) -> dict[str, object]:
            self._caller(request)
            agent = {
                "id": "agent-1",
                "name": "laptop",
                "tenant_id": self.acme_id,
                "status": "online",
                "data_plane_url": self.data_plane_url,
                "last_heartbeat_at": _now(),
                "runtimes": ["gvisor"],
                "templates": sorted(TEMPLATES),
            }
            return {"items": [agent], "next_cursor": None}

        @app.post("/v1/sandboxes", status_code=201)
        async def create_sandbox(request: Request, response: Response) -> dict[str, object]:
            tenant = self._tenant(request)
            body = await _json(request)
            cpu = body.get("cpu", 1)
            if not isinstance(cpu, int) or cpu < 1:
                raise FakeError(400, "invalid_argument", "cpu must be at least 1", "cpu")
            template = str(body.get("template", "base"))
            if template not in TEMPLATES:
                raise FakeError(404, "template_not_found", f"no agent offers {template!r}")
            if cpu > MAX_CPU:
                raise FakeError(503, "capacity", f"no agent has {cpu} free vCPUs")
            sandbox = self.add_sandbox(
                tenant,
                template=template,
                cpu=cpu,
                memory_mb=body.get("memory_mb", 512),
                timeout_s=body.get("timeout_s", 300),
                env=body.get("env") or {},
                metadata=body.get("metadata") or {},
                isolation=body.get("isolation") or "gvisor",
                egress=body.get("egress") or [],
            )
            if self.create_pending_polls:
                sandbox.state = "pending"
                sandbox.polls_until_running = self.create_pending_polls
                response.status_code = 202  # as the control plane: the agent has not answered
            wire = sandbox.wire()
            if self.create_includes_access:
                access = self._issue_token(sandbox.id)
                wire["data_plane_url"] = access["data_plane_url"]
                wire["access_token"] = access["access_token"]
                wire["access_token_expires_at"] = access["expires_at"]
            return wire

        @app.get("/v1/sandboxes")
        async def list_sandboxes(request: Request) -> dict[str, object]:
            tenant = self._tenant(request)
            state = request.query_params.get("state")
            wanted = {
                k.removeprefix("metadata."): v
                for k, v in request.query_params.items()
                if k.startswith("metadata.")
            }
            found = [
                s.wire()
                for s in self.sandboxes.values()
                if s.tenant_id == tenant
                and (state is None or s.state == state)
                and all(s.metadata.get(k) == v for k, v in wanted.items())
            ]
            return _page(found, request, default_limit=100)

        @app.get("/v1/sandboxes/{sandbox_id}")
        async def get_sandbox(request: Request, sandbox_id: str) -> dict[str, object]:
            sandbox = self._own_sandbox(request, sandbox_id)
            if sandbox.state == "pending":
                sandbox.polls_until_running -= 1
                if sandbox.polls_until_running <= 0:
                    sandbox.state = "running"
            return sandbox.wire()

        @app.post("/v1/sandboxes/{sandbox_id}/timeout")
        async def set_timeout(request: Request, sandbox_id: str) -> dict[str, object]:
            sandbox = self._own_sandbox(request, sandbox_id)
            body = await _json(request)
            timeout = body.get("timeout_s")
            if not isinstance(timeout, int) or timeout < 1:
                raise FakeError(400, "invalid_argument", "timeout_s must be >= 1", "timeout_s")
            sandbox.timeout_s = timeout
            return sandbox.wire()

        @app.delete("/v1/sandboxes/{sandbox_id}", status_code=204)
        async def kill(request: Request, sandbox_id: str) -> Response:
            sandbox = self._own_sandbox(request, sandbox_id)
            sandbox.state = "killed"
            return Response(status_code=204)

        @app.post("/v1/sandboxes/{sandbox_id}/token")
        async def token(request: Request, sandbox_id: str) -> dict[str, str]:
            sandbox = self._own_sandbox(request, sandbox_id)
            if sandbox.state != "running":
                raise FakeError(409, "sandbox_not_running", f"sandbox is {sandbox.state}")
            return self._issue_token(sandbox_id)

        return app

    # ---- data plane ----

    def data_app(self) -> FastAPI:
        app = FastAPI()
        self._install_common(app, "data")

        @app.post("/v1/sandboxes/{sandbox_id}/exec")
        async def exec_(request: Request, sandbox_id: str) -> StreamingResponse:
            sandbox = self._data_sandbox(request, sandbox_id)
            body = await _json(request)
            if self.exec_script is not None:
                script = list(self.exec_script)
                return StreamingResponse(_scripted(script), media_type="application/x-ndjson")
            cwd = sandbox.root / str(body.get("cwd") or "/home/user").lstrip("/")
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/home/user"}
            env |= sandbox.env | dict(body.get("env") or {})  # type: ignore[arg-type]
            stdin = base64.b64decode(str(body.get("stdin") or ""))
            timeout = body.get("timeout_s")
            events = _run(
                str(body["cmd"]),
                cwd,
                env,
                stdin,
                None if timeout is None else float(str(timeout)),
            )
            return StreamingResponse(events, media_type="application/x-ndjson")

        @app.get("/v1/sandboxes/{sandbox_id}/files")
        async def read_file(request: Request, sandbox_id: str) -> Response:
            sandbox = self._data_sandbox(request, sandbox_id)
            target = _inside(sandbox, request)
            if not target.is_file():
                raise FakeError(404, "file_not_found", f"{target.name}: no such file")

            async def chunks() -> AsyncIterator[bytes]:
                with target.open("rb") as f:
                    while chunk := f.read(32 * 1024):
                        yield chunk

            return StreamingResponse(chunks(), media_type="application/octet-stream")

        @app.put("/v1/sandboxes/{sandbox_id}/files", status_code=204)
        async def write_file(request: Request, sandbox_id: str) -> Response:
            sandbox = self._data_sandbox(request, sandbox_id)
            target = _inside(sandbox, request)
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as f:
                async for chunk in request.stream():
                    f.write(chunk)
            return Response(status_code=204)

        @app.get("/v1/sandboxes/{sandbox_id}/files/list")
        async def list_dir(request: Request, sandbox_id: str) -> dict[str, object]:
            sandbox = self._data_sandbox(request, sandbox_id)
            target = _inside(sandbox, request)
            if not target.is_dir():
                raise FakeError(404, "file_not_found", "no such directory")
            sandbox_path = request.query_params["path"].rstrip("/")
            items = []
            for child in sorted(target.iterdir()):
                st = child.stat()
                items.append(
                    {
                        "name": child.name,
                        "path": f"{sandbox_path}/{child.name}",
                        "type": "dir" if child.is_dir() else "file",
                        "size": st.st_size,
                        "mode": st.st_mode & 0o7777,
                        "mtime": st.st_mtime,
                    }
                )
            return {"items": items}

        @app.delete("/v1/sandboxes/{sandbox_id}/files", status_code=204)
        async def remove(request: Request, sandbox_id: str) -> Response:
            sandbox = self._data_sandbox(request, sandbox_id)
            target = _inside(sandbox, request)
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            else:
                raise FakeError(404, "file_not_found", "no such file or directory")
            return Response(status_code=204)

        @app.post("/v1/sandboxes/{sandbox_id}/files/mkdir", status_code=204)
        async def mkdir(request: Request, sandbox_id: str) -> Response:
            sandbox = self._data_sandbox(request, sandbox_id)
            _inside(sandbox, request).mkdir(parents=True, exist_ok=True)
            return Response(status_code=204)

        return app


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    return header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""


async def _json(request: Request) -> dict[str, object]:
    try:
        body = json.loads(await request.body())
    except ValueError as e:
        raise FakeError(400, "invalid_argument", "body must be JSON") from e
    if not isinstance(body, dict):
        raise FakeError(400, "invalid_argument", "body must be a JSON object")
    return body


def _page(items: list[object], request: Request, *, default_limit: int) -> dict[str, object]:
    limit = int(request.query_params.get("limit", default_limit))
    start = int(request.query_params.get("cursor", "0"))
    chunk = items[start : start + limit]
    more = start + limit < len(items)
    return {"items": chunk, "next_cursor": str(start + limit) if more else None}


def _inside(sandbox: FakeSandbox, request: Request) -> Path:
    path = request.query_params.get("path", "")
    if not path.startswith("/"):
        raise FakeError(400, "invalid_argument", "path must be absolute", "path")
    target = (sandbox.root / path.lstrip("/")).resolve()
    if not target.is_relative_to(sandbox.root.resolve()):
        raise FakeError(400, "invalid_argument", "path escapes the sandbox", "path")
    return target


def _event(kind: str, **fields: object) -> bytes:
    return json.dumps({"type": kind, **fields}).encode() + b"\n"


async def _scripted(lines: list[str]) -> AsyncIterator[bytes]:
    for line in lines:
        yield line.encode() + b"\n"
        await asyncio.sleep(0)


async def _run(
    cmd: str, cwd: Path, env: dict[str, str], stdin: bytes, limit_s: float | None
) -> AsyncIterator[bytes]:
    proc = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        cmd,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdin.write(stdin)
    with contextlib.suppress(ConnectionError):
        await proc.stdin.drain()
    proc.stdin.close()
    queue: asyncio.Queue[tuple[str, bytes | None]] = asyncio.Queue()

    async def pump(stream: asyncio.StreamReader, kind: str) -> None:
        while chunk := await stream.read(65536):
            await queue.put((kind, chunk))
        await queue.put((kind, None))

    tasks = [
        asyncio.create_task(pump(proc.stdout, "stdout")),
        asyncio.create_task(pump(proc.stderr, "stderr")),
    ]
    loop = asyncio.get_running_loop()
    deadline = None if limit_s is None else loop.time() + limit_s
    open_streams, timed_out = 2, False
    try:
        while open_streams:
            wait = None if deadline is None or timed_out else max(deadline - loop.time(), 0)
            try:
                kind, chunk = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                continue
            if chunk is None:
                open_streams -= 1
            else:
                yield _event(kind, data=base64.b64encode(chunk).decode())
        code = await proc.wait()
        yield _event("exit", exit_code=code, timed_out=timed_out)
    finally:
        for task in tasks:
            task.cancel()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


class ServedApp:
    """Serve an ASGI app with uvicorn on a free localhost port, in a background thread."""

    def __init__(self, app: FastAPI, *, lifespan: str = "off") -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", lifespan=lifespan)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServedApp:
        self._thread.start()
        eventually_sync(
            lambda: self._server.started or not self._thread.is_alive(),
            within_s=10,
            every_s=0.01,
            what="the fake server to start",
        )
        if not self._server.started:
            raise RuntimeError("the fake server's thread ended before it started")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
