"""The routes. Errors leave as E2B's ``{"code": <status>, "message": ...}``, never Corral's.

| method | path                              | Corral                                   |
|--------|-----------------------------------|------------------------------------------|
| POST   | /v2/sandboxes (and /sandboxes)    | SandboxService.create (token for 24 h)   |
| GET    | /v2/sandboxes, /sandboxes         | running sandboxes, metadata filter       |
| GET    | /sandboxes/{id}                   | the sandbox (404 once it ended)          |
| POST   | /v2/sandboxes/{id}/connect (+ v1) | fresh token; extends the deadline only   |
| POST   | /sandboxes/{id}/timeout           | SandboxService.set_timeout               |
| DELETE | /sandboxes/{id}                   | SandboxService.kill (404 once it ended)  |
| POST   | /sandboxes/{id}/pause, /resume    | 501: no pause/resume yet                 |
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import parse_qsl, unquote

import structlog
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from sqlalchemy.orm import Session

from byoc_agent.protocol.errors import CorralError
from byoc_agent.protocol.messages import SandboxState
from control_plane.api import limits
from control_plane.api.auth import MAX_TOKEN
from control_plane.api.pagination import decode_cursor, encode_cursor
from control_plane.api.schemas import MAX_METADATA_VALUE, METADATA_KEY_PATTERN, TEMPLATE_PATTERN
from control_plane.api.services import Services, services
from control_plane.e2b.schemas import (
    DEFAULT_TIMEOUT_S,
    ConnectSandbox,
    ListedSandboxOut,
    NewSandbox,
    SandboxDetailOut,
    SandboxOut,
    SandboxTimeout,
)
from control_plane.errors import ForbiddenError, UnauthenticatedError, http_status
from control_plane.roles import ROLE_PERMISSIONS, Permission
from control_plane.sandbox_service import CreateSandbox, SandboxAccess
from control_plane.store import MAX_PAGE, sandboxes, tenants, utcnow
from control_plane.store.pages import Page
from control_plane.store.sandboxes import SandboxRecord

log = structlog.get_logger("control_plane.e2b")

_TEMPLATE = re.compile(TEMPLATE_PATTERN)
_METADATA_KEY = re.compile(METADATA_KEY_PATTERN)
UNSUPPORTED_KEYS = ("network", "mcp", "iam", "volumeMounts", "autoResume", "autoPauseMemory")


class E2BError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def e2b_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status)


class E2BRoute(APIRoute):
    """Turns every error of an E2B route into E2B's error body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except E2BError as e:
                return e2b_error(e.status, e.message)
            except CorralError as e:
                status = http_status(e)
                if status >= 500:
                    log.warning("e2b_request_failed", path=request.url.path, status=status,
                                code=e.code.value)
                return e2b_error(status, e.message)
            except (RequestValidationError, ValidationError) as e:
                return e2b_error(400, _first_error(e))

        return guarded


def _first_error(e: RequestValidationError | ValidationError) -> str:
    errors = e.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "body is not valid JSON"
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
    return f"{where or 'body'}: {first.get('msg', 'invalid value')}"


# Not in Corral's /openapi.json: this is E2B's API, specified by E2B; docs/e2b-compat.md lists
# what Corral serves of it, and tests/e2e/e2b drives it with the real SDKs.
router = APIRouter(tags=["e2b"], route_class=E2BRoute, include_in_schema=False)

Svc = Annotated[Services, Depends(services)]


def e2b_tenant_with(
    permission: Permission,
) -> Callable[[Services, str | None], Coroutine[Any, Any, str]]:
    """A dependency: the tenant whose Corral API key came in E2B's ``X-API-KEY`` header,
    if the key's role has ``permission`` (the same roles as ``/v1``: a viewer key may list
    and read, not create or kill)."""

    async def dependency(
        svc: Svc, x_api_key: Annotated[str | None, Header(alias="X-API-KEY")] = None
    ) -> str:
        if not x_api_key or len(x_api_key) > MAX_TOKEN:
            raise UnauthenticatedError("missing X-API-KEY (a Corral API key)")
        key = x_api_key.strip()
        caller = await svc.db.run(lambda s: tenants.authenticate(s, key))
        if permission not in ROLE_PERMISSIONS[caller.role]:
            raise ForbiddenError(f"this API key's role ({caller.role}) lacks {permission}")
        return caller.tenant_id

    return dependency


Tenant = Annotated[str, Depends(e2b_tenant_with(Permission.SANDBOXES_READ))]
Writer = Annotated[str, Depends(e2b_tenant_with(Permission.SANDBOXES_WRITE))]
Accessor = Annotated[str, Depends(e2b_tenant_with(Permission.SANDBOXES_ACCESS))]


async def _body(request: Request) -> object:
    raw = await request.body()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError as e:
        raise E2BError(400, "body is not valid JSON") from e


def _sandbox_out(access: SandboxAccess) -> dict[str, object]:
    sb = access.sandbox
    out = SandboxOut(
        template_id=sb.template,
        sandbox_id=sb.id,
        client_id=sb.agent_id,
        envd_access_token=access.token.token,
    )
    return out.model_dump(mode="json")


def _listed(sb: SandboxRecord, model: type[ListedSandboxOut]) -> dict[str, object]:
    started = sb.started_at or sb.created_at
    end = sb.expires_at or started + timedelta(seconds=sb.timeout_s)
    return model(
        template_id=sb.template,
        sandbox_id=sb.id,
        client_id=sb.agent_id,
        started_at=started,
        end_at=end,
        cpu_count=sb.cpu,
        memory_mb=sb.memory_mb,
        state="running",
        metadata=dict(sb.metadata),
    ).model_dump(mode="json")


async def _live(svc: Services, tenant_id: str, sandbox_id: str) -> SandboxRecord:
    """The sandbox if it has not ended; E2B forgets ended sandboxes (404)."""
    sb = await svc.sandboxes.get(tenant_id, sandbox_id)
    if sb.terminal:
        raise E2BError(404, f"sandbox {sandbox_id} not found")
    return sb


@router.post("/v2/sandboxes", status_code=201)
@router.post("/sandboxes", status_code=201)
async def create_sandbox(request: Request, tenant_id: Writer, svc: Svc) -> JSONResponse:
    body = NewSandbox.model_validate(await _body(request))
    unsupported = [k for k in UNSUPPORTED_KEYS if (body.model_extra or {}).get(k) is not None]
    if unsupported:
        raise E2BError(400, f"not supported by Corral: {', '.join(unsupported)}")
    if body.auto_pause:
        raise E2BError(400, "autoPause is not supported by Corral: sandboxes cannot pause yet")
    if body.allow_internet_access:
        raise E2BError(400, "Corral sandboxes have no network access (allow_internet_access)")
    template = body.template_id
    if not _TEMPLATE.match(template):
        raise E2BError(400, f"templateID {template[:80]!r} is not a Corral template name")
    timeout_s = body.timeout if body.timeout is not None else DEFAULT_TIMEOUT_S
    metadata = body.metadata or {}
    lim = svc.settings.limits
    limits.check_timeout(lim, timeout_s)
    limits.check_metadata(lim, metadata)
    for key, value in metadata.items():
        if not _METADATA_KEY.match(key) or len(value) > MAX_METADATA_VALUE:
            raise E2BError(400, f"metadata key {key[:80]!r} or its value is not allowed")
    access = await svc.sandboxes.create(
        CreateSandbox(
            tenant_id=tenant_id,
            template=template,
            cpu=svc.settings.e2b_cpu,
            memory_mb=svc.settings.e2b_memory_mb,
            timeout_s=timeout_s,
            env=body.env_vars or {},
            metadata=metadata,
        ),
        token_ttl_s=svc.settings.e2b_access_token_ttl_s,
    )
    return JSONResponse(_sandbox_out(access), status_code=201)


@router.get("/v2/sandboxes")
@router.get("/sandboxes")
async def list_sandboxes(
    tenant_id: Tenant,
    svc: Svc,
    response: Response,
    metadata: Annotated[str | None, Query(max_length=4096)] = None,
    state: Annotated[str | None, Query(max_length=64)] = None,
    template: Annotated[str | None, Query(max_length=256)] = None,
    started_after: Annotated[datetime | None, Query(alias="startedAfter")] = None,
    order: Annotated[str | None, Query(max_length=8)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    next_token: Annotated[str | None, Query(alias="nextToken", max_length=256)] = None,
) -> JSONResponse:
    states = {s.strip() for s in (state or "running,paused").split(",") if s.strip()}
    if not states <= {"running", "paused"}:
        raise E2BError(400, "state must be running and/or paused")
    if order not in (None, "asc", "desc"):
        raise E2BError(400, "order must be asc or desc")
    labels = _metadata_query(metadata)
    items: list[dict[str, object]] = []
    after = decode_cursor(next_token)
    more = "running" in states
    while more and len(items) < limit:
        want = limit - len(items)

        def fetch(s: Session, after: str | None = after, want: int = want) -> Page[SandboxRecord]:
            return sandboxes.list_sandboxes(
                s, tenant_id=tenant_id, state=SandboxState.RUNNING, metadata=labels,
                after=after, limit=want,
            )

        page = await svc.db.run(fetch)
        for sb in page.items:
            if template is not None and sb.template != template:
                continue
            started = sb.started_at or sb.created_at
            if started_after is not None and started < started_after:
                continue
            items.append(_listed(sb, ListedSandboxOut))
        after = page.last_id
        more = after is not None
    token = encode_cursor(after) if more else None
    headers = {"X-Next-Token": token} if token else {}
    return JSONResponse(items, headers=headers)


def _metadata_query(raw: str | None) -> dict[str, str]:
    """E2B sends ``metadata=k1%3Dv1%26k2%3Dv2`` with each key and value escaped once more."""
    if not raw:
        return {}
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=True)
    except ValueError as e:
        raise E2BError(400, "metadata must be key=value pairs joined by &") from e
    query = {f"metadata.{unquote(k)}": unquote(v) for k, v in pairs}
    return limits.metadata_filters(query)


@router.get("/sandboxes/{sandbox_id}")
async def get_sandbox(sandbox_id: str, tenant_id: Tenant, svc: Svc) -> JSONResponse:
    sb = await _live(svc, tenant_id, sandbox_id)
    return JSONResponse(_listed(sb, SandboxDetailOut))


@router.post("/v2/sandboxes/{sandbox_id}/connect")
@router.post("/sandboxes/{sandbox_id}/connect")
async def connect_sandbox(
    sandbox_id: str, request: Request, tenant_id: Accessor, svc: Svc
) -> JSONResponse:
    body = ConnectSandbox.model_validate(await _body(request))
    sb = await _live(svc, tenant_id, sandbox_id)
    if sb.state != SandboxState.RUNNING:
        raise E2BError(409, f"sandbox {sandbox_id} is still starting")
    if body.timeout is not None:
        limits.check_timeout(svc.settings.limits, body.timeout)
        wanted = utcnow() + timedelta(seconds=body.timeout)
        if sb.expires_at is None or wanted > sb.expires_at:  # only ever extends, as E2B
            await svc.sandboxes.set_timeout(tenant_id, sandbox_id, body.timeout)
    access = await svc.sandboxes.access(
        tenant_id, sandbox_id, token_ttl_s=svc.settings.e2b_access_token_ttl_s
    )
    return JSONResponse(_sandbox_out(access), status_code=200)


@router.post("/sandboxes/{sandbox_id}/timeout", status_code=204)
async def set_timeout(
    sandbox_id: str, request: Request, tenant_id: Writer, svc: Svc
) -> Response:
    body = SandboxTimeout.model_validate(await _body(request))
    limits.check_timeout(svc.settings.limits, body.timeout)
    await _live(svc, tenant_id, sandbox_id)
    await svc.sandboxes.set_timeout(tenant_id, sandbox_id, body.timeout)
    return Response(status_code=204)


@router.delete("/sandboxes/{sandbox_id}", status_code=204)
async def kill_sandbox(sandbox_id: str, tenant_id: Writer, svc: Svc) -> Response:
    await _live(svc, tenant_id, sandbox_id)
    await svc.sandboxes.kill(tenant_id, sandbox_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/pause")
@router.post("/sandboxes/{sandbox_id}/resume")
@router.post("/v2/sandboxes/{sandbox_id}/resume")
async def pause_or_resume(sandbox_id: str, tenant_id: Writer, svc: Svc) -> JSONResponse:
    await _live(svc, tenant_id, sandbox_id)
    raise E2BError(501, "pause and resume are not supported by Corral yet")


# E2B calls Corral has no counterpart for: a 501 naming it, so the SDK raises a clear
# SandboxException instead of mistaking a bare 404 for "sandbox not found".
_NOT_SUPPORTED: dict[str, tuple[str, list[str]]] = {
    "/sandboxes/{sandbox_id}/fork": ("forks", ["POST"]),
    "/sandboxes/{sandbox_id}/snapshots": ("snapshots", ["POST"]),
    "/snapshots": ("snapshots", ["GET"]),
    "/sandboxes/{sandbox_id}/metrics": ("sandbox metrics", ["GET"]),
    "/sandboxes/{sandbox_id}/logs": ("sandbox logs", ["GET"]),
    "/v2/sandboxes/{sandbox_id}/logs": ("sandbox logs", ["GET"]),
    "/sandboxes/{sandbox_id}/network": ("network rules (sandboxes have no network)", ["PUT"]),
    "/sandboxes/{sandbox_id}/refreshes": ("refreshes (use set_timeout)", ["POST"]),
}


def _not_supported(what: str) -> Callable[[Tenant], Coroutine[Any, Any, JSONResponse]]:
    async def handler(tenant_id: Tenant) -> JSONResponse:
        raise E2BError(501, f"{what}: not supported by Corral")

    return handler


for _path, (_what, _methods) in _NOT_SUPPORTED.items():
    router.add_api_route(_path, _not_supported(_what), methods=_methods)


