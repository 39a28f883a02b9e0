"""The console's pages: one GET per page, one POST per action, each checking its role.

Every POST answers with a redirect (303) to a page, except the ones that show a secret
once (a new tenant's first API key, a new API key, an enrollment token): those render the
secret in the response and never again.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from datetime import timedelta
from pathlib import Path as FilePath
from typing import Annotated
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from billing import Period
from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.protocol.messages import JobStatus, SandboxState
from control_plane.console import chart, queries
from control_plane.console.passwords import hash_password, needs_rehash, verify_password
from control_plane.console.roles import Permission
from control_plane.console.web import (
    LOGIN_COOKIE,
    PREFIX,
    SESSION_COOKIE,
    SESSION_TTL_S,
    check_csrf,
    login_token,
    posted,
    read_form,
    render,
    see_other,
    services_of,
    set_login_cookie,
    set_session_cookie,
    viewer_of,
)
from control_plane.invoicing import InvoiceService
from control_plane.jobs.rotation import rotate_signing_key
from control_plane.store import MAX_PAGE, agents, console_users, sandboxes, tenants, utcnow
from control_plane.store.agents import AgentRecord
from control_plane.store.jobs import JobRecord
from control_plane.store.pages import Page
from control_plane.store.sandboxes import SandboxRecord, StateChangeRecord
from control_plane.store.tenants import ApiKeyRecord, TenantRecord
from control_plane.usage_export import ExportFormat, UsageExporter, parse_format, parse_period

router = APIRouter()
log = structlog.get_logger("control_plane.console")

PAGE_SIZE = 25
NAME_MAX = 128
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
After = Annotated[str | None, Query(max_length=64)]
IdPath = Annotated[str, Path(max_length=64)]
NOTICES = {
    "killed": "Kill sent; the sandbox is no longer running.",
    "revoked": "API key revoked. Requests with it now fail with 401.",
    "rotated": "A new signing key is active; the previous one stays trusted as retired.",
}


def _page_links(request: Request, last_id: str | None) -> dict[str, str | None]:
    """Next and first-page links that keep the current filters."""
    kept = [(k, v) for k, v in request.query_params.multi_items() if k != "after"]
    base = request.url.path
    nxt = f"{base}?{urlencode([*kept, ('after', last_id)])}" if last_id else None
    first = None
    if "after" in request.query_params:
        first = f"{base}?{urlencode(kept)}" if kept else base
    return {"next": nxt, "first": first}


def _name(form: dict[str, str], field: str, what: str) -> str:
    value = form.get(field, "").strip()
    if not value:
        raise InvalidArgumentError(f"{what} must not be empty", field=field)
    if len(value) > NAME_MAX:
        raise InvalidArgumentError(f"{what} must be at most {NAME_MAX} characters", field=field)
    return value


def _metadata_filter(text: str) -> dict[str, str]:
    """``key=value`` pairs separated by commas or spaces."""
    pairs: dict[str, str] = {}
    for item in text.replace(",", " ").split():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgumentError(
                f"metadata filter must be key=value pairs, got {item[:40]!r}", field="metadata"
            )
        pairs[key] = value
    return pairs


def _periods(now_period: Period, count: int = 12) -> list[str]:
    out, p = [], now_period
    for _ in range(count):
        out.append(str(p))
        p = Period(p.year - 1, 12) if p.month == 1 else Period(p.year, p.month - 1)
    return out


# ---------------------------------------------------------------- sign in and out


@router.get("/login", response_class=HTMLResponse)
async def login_page(
    request: Request, next: Annotated[str, Query(max_length=256)] = ""
) -> Response:
    token, fresh = login_token(request)
    response = render(request, "login.html", None, csrf=token, next=_safe_next(next), error=None)
    if fresh:
        set_login_cookie(request, response, token)
    return response


def _safe_next(target: str) -> str:
    """Only a path inside the console; anything else (another site) goes to the overview."""
    if target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return PREFIX + "/"


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    form = await read_form(request)
    check_csrf(request.cookies.get(LOGIN_COOKIE, ""), form)
    svc = services_of(request)
    username = form.get("username", "")
    password = form.get("password", "")
    found = await svc.db.run(lambda s: console_users.credentials(s, username))
    stored_hash = found[1] if found else None
    ok = await asyncio.to_thread(verify_password, stored_hash, password)
    if found is None or not ok:
        log.warning("console_login_failed", username=username[:64])
        return render(
            request,
            "login.html",
            None,
            status_code=401,
            csrf=form.get("csrf_token", ""),
            next=_safe_next(form.get("next", "")),
            error="Wrong username or password.",
        )
    user, password_hash = found
    if needs_rehash(password_hash):
        new_hash = await asyncio.to_thread(hash_password, password)
        await svc.db.run(lambda s: console_users.set_password_hash(s, user.id, new_hash))
    opened = await svc.db.run(lambda s: console_users.open_session(s, user.id, SESSION_TTL_S))
    log.info("console_login", user=user.username, role=user.role)
    response = RedirectResponse(_safe_next(form.get("next", "")), status_code=303)
    set_session_cookie(request, response, opened.token)
    response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    viewer = await viewer_of(request)
    check_csrf(viewer.csrf, await read_form(request))
    token = request.cookies.get(SESSION_COOKIE, "")
    await services_of(request).db.run(lambda s: console_users.close_session(s, token))
    response = see_other("/login")
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response


# ---------------------------------------------------------------- overview


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request) -> Response:
    viewer = await viewer_of(request)
    svc = services_of(request)
    now = utcnow()
    exporter = InvoiceService(svc.db)
    found = await svc.db.run(
        lambda s: queries.overview(
            s,
            now=now,
            offline_after_s=svc.settings.heartbeat_offline_s,
            pricebook=exporter.pricebook,
        )
    )
    return render(request, "overview.html", viewer, nav="overview", o=found, now=now)


# ---------------------------------------------------------------- tenants and API keys


@router.get("/tenants", response_class=HTMLResponse)
async def tenant_list(request: Request, after: After = None, limit: Limit = PAGE_SIZE) -> Response:
    viewer = await viewer_of(request, Permission.VIEW_OPERATIONS)
    page = await services_of(request).db.run(
        lambda s: queries.tenant_page(s, after=after, limit=limit)
    )
    return render(
        request,
        "tenants.html",
        viewer,
        nav="tenants",
        page=page,
        links=_page_links(request, page.last_id),
    )


@router.post("/tenants", response_class=HTMLResponse)
async def tenant_create(request: Request) -> Response:
    viewer, form = await posted(request, Permission.OPERATE)
    name = _name(form, "name", "tenant name")
    tenant, key = await services_of(request).db.run(lambda s: tenants.create_tenant(s, name))
    log.info("console_tenant_created", user=viewer.username, tenant_id=tenant.id)
    return render(
        request, "secret.html", viewer, nav="tenants",
        heading=f"Tenant {tenant.name} created",
        what="API key", secret=key.key, note=f"Its first API key, named {key.record.name}.",
        back=f"{PREFIX}/tenants/{tenant.id}", back_label=f"Go to tenant {tenant.name}",
    )  # fmt: skip


@router.get("/tenants/{tenant_id}", response_class=HTMLResponse)
async def tenant_detail(request: Request, tenant_id: IdPath, done: str = "") -> Response:
    viewer = await viewer_of(request, Permission.VIEW_OPERATIONS)

    def read(
        s: Session,
    ) -> tuple[TenantRecord, list[ApiKeyRecord], tuple[AgentRecord, ...]]:
        tenant = tenants.get_tenant(s, tenant_id)
        keys = tenants.list_api_keys(s, tenant_id)
        tenant_agents = agents.list_agents(s, tenant_id=tenant_id, after=None, limit=MAX_PAGE)
        return tenant, keys, tenant_agents.items

    tenant, keys, tenant_agents = await services_of(request).db.run(read)
    return render(
        request, "tenant.html", viewer, nav="tenants", tenant=tenant, keys=keys,
        agents=tenant_agents, notice=NOTICES.get(done),
    )  # fmt: skip


@router.post("/tenants/{tenant_id}/api-keys", response_class=HTMLResponse)
async def api_key_create(request: Request, tenant_id: IdPath) -> Response:
    viewer, form = await posted(request, Permission.OPERATE)
    name = _name(form, "name", "key name")
    issued = await services_of(request).db.run(
        lambda s: tenants.create_api_key(s, tenant_id, name)
    )
    log.info("console_api_key_created", user=viewer.username, tenant_id=tenant_id,
             key_id=issued.record.id)
    return render(
        request, "secret.html", viewer, nav="tenants", heading=f"API key {name} created",
        what="API key", secret=issued.key, note=f"For tenant {tenant_id}.",
        back=f"{PREFIX}/tenants/{tenant_id}", back_label="Back to the tenant",
    )  # fmt: skip


@router.post("/tenants/{tenant_id}/api-keys/{key_id}/revoke")
async def api_key_revoke(request: Request, tenant_id: IdPath, key_id: IdPath) -> Response:
    viewer, _ = await posted(request, Permission.OPERATE)
    await services_of(request).db.run(lambda s: tenants.revoke_api_key(s, tenant_id, key_id))
    log.info("console_api_key_revoked", user=viewer.username, tenant_id=tenant_id, key_id=key_id)
    return see_other(f"/tenants/{tenant_id}", done="revoked")


# ---------------------------------------------------------------- agents and hosts


@router.get("/agents", response_class=HTMLResponse)
async def agent_list(request: Request, after: After = None, limit: Limit = PAGE_SIZE) -> Response:
    viewer = await viewer_of(request, Permission.VIEW_OPERATIONS)
    svc = services_of(request)

    def read(s: Session) -> tuple[Page[AgentRecord], dict[str, list[str]], dict[str, str]]:
        return (
            queries.agent_page(s, after=after, limit=limit),
            queries.agent_hosts(s),
            queries.tenant_names(s),
        )

    page, hosts, names = await svc.db.run(read)
    return render(
        request, "agents.html", viewer, nav="agents", page=page, hosts=hosts, names=names,
        now=utcnow(), offline_after_s=svc.settings.heartbeat_offline_s,
        links=_page_links(request, page.last_id),
    )  # fmt: skip


@router.post("/agents/enrollment-tokens", response_class=HTMLResponse)
async def enrollment_token(request: Request) -> Response:
    viewer, form = await posted(request, Permission.OPERATE)
    svc = services_of(request)
    tenant_id = form.get("tenant_id", "").strip()
    if not tenant_id:
        raise InvalidArgumentError("choose a tenant", field="tenant_id")
    try:
        ttl_s = int(form.get("ttl_s", "3600"))
    except ValueError:
        raise InvalidArgumentError("ttl_s must be a number of seconds", field="ttl_s") from None
    if not 60 <= ttl_s <= svc.settings.enrollment_token_max_ttl_s:
        raise InvalidArgumentError(
            f"ttl_s must be between 60 and {svc.settings.enrollment_token_max_ttl_s}",
            field="ttl_s",
        )
    issued = await svc.db.run(lambda s: agents.create_enrollment_token(s, tenant_id, ttl_s))
    log.info("console_enrollment_token_created", user=viewer.username, tenant_id=tenant_id)
    return render(
        request, "secret.html", viewer, nav="agents", heading="Enrollment token created",
        what="Enrollment token", secret=issued.token,
        note=f"One use, for tenant {tenant_id}, valid until "
        f"{issued.expires_at:%Y-%m-%d %H:%M UTC}. Give it to the agent as "
        "CORRAL_AGENT_ENROLLMENT_TOKEN.",
        back=f"{PREFIX}/agents", back_label="Back to agents",
    )  # fmt: skip


@router.get("/hosts", response_class=HTMLResponse)
async def host_list(request: Request) -> Response:
    viewer = await viewer_of(request, Permission.VIEW_OPERATIONS)
    since = utcnow() - timedelta(days=30)

    def read(s: Session) -> tuple[list[queries.HostRow], tuple[AgentRecord, ...]]:
        page = agents.list_agents(s, tenant_id=None, after=None, limit=MAX_PAGE)
        return queries.hosts(s, since=since), page.items

    hosts, every_agent = await services_of(request).db.run(read)
    return render(
        request, "hosts.html", viewer, nav="hosts", hosts=hosts, agents=every_agent, since=since
    )


# ---------------------------------------------------------------- sandboxes


@router.get("/sandboxes", response_class=HTMLResponse)
async def sandbox_list(
    request: Request,
    tenant: Annotated[str, Query(max_length=64)] = "",
    state: Annotated[str, Query(max_length=16)] = "",
    metadata: Annotated[str, Query(max_length=512)] = "",
    after: After = None,
    limit: Limit = PAGE_SIZE,
) -> Response:
    viewer = await viewer_of(request, Permission.VIEW_OPERATIONS)
    try:
        wanted = SandboxState(state) if state else None
    except ValueError:
        raise InvalidArgumentError(f"unknown state {state[:16]!r}", field="state") from None
    labels = _metadata_filter(metadata)

    def read(s: Session) -> tuple[Page[SandboxRecord], dict[str, str]]:
        page = queries.sandbox_page(
            s, tenant_id=tenant or None, state=wanted, metadata=labels, after=after, limit=limit
        )
        return page, queries.tenant_names(s)

    page, names = await services_of(request).db.run(read)
    return render(
        request, "sandboxes.html", viewer, nav="sandboxes", page=page, names=names,
        states=[s.value for s in SandboxState], f_tenant=tenant, f_state=state,
        f_metadata=metadata, links=_page_links(request, page.last_id),
    )  # fmt: skip


@router.get("/sandboxes/{sandbox_id}", response_class=HTMLResponse)
async def sandbox_detail(request: Request, sandbox_id: IdPath, done: str = "") -> Response:
    viewer = await viewer_of(request, Permission.VIEW_OPERATIONS)

    def read(
        s: Session,
    ) -> tuple[SandboxRecord, list[StateChangeRecord], tuple[JobRecord, ...]]:
        sandbox = sandboxes.get_sandbox(s, sandbox_id, tenant_id=None)
        sandbox_jobs = queries.job_page(
            s, status=None, tenant_id=None, sandbox_id=sandbox_id, after=None, limit=MAX_PAGE
        )
        return sandbox, sandboxes.history(s, sandbox_id), sandbox_jobs.items

    sandbox, history, sandbox_jobs = await services_of(request).db.run(read)
    return render(
        request, "sandbox.html", viewer, nav="sandboxes", sb=sandbox, history=history,
        jobs=sandbox_jobs, notice=NOTICES.get(done),
    )  # fmt: skip


@router.post("/sandboxes/{sandbox_id}/kill")
async def sandbox_kill(request: Request, sandbox_id: IdPath) -> Response:
    viewer, _ = await posted(request, Permission.OPERATE)
    svc = services_of(request)
    sandbox = await svc.db.run(lambda s: sandboxes.get_sandbox(s, sandbox_id, tenant_id=None))
    log.info("console_sandbox_kill", user=viewer.username, tenant_id=sandbox.tenant_id,
             sandbox_id=sandbox.id)
    await svc.sandboxes.kill(sandbox.tenant_id, sandbox.id)
    return see_other(f"/sandboxes/{sandbox_id}", done="killed")


# ---------------------------------------------------------------- jobs


@router.get("/jobs", response_class=HTMLResponse)
async def job_list(
    request: Request,
    status: Annotated[str, Query(max_length=16)] = "",
    tenant: Annotated[str, Query(max_length=64)] = "",
    after: After = None,
    limit: Limit = PAGE_SIZE,
) -> Response:
    viewer = await viewer_of(request, Permission.VIEW_OPERATIONS)
    try:
        wanted = JobStatus(status) if status else None
    except ValueError:
        raise InvalidArgumentError(f"unknown status {status[:16]!r}", field="status") from None

    def read(s: Session) -> tuple[Page[JobRecord], dict[str, str]]:
        page = queries.job_page(
            s, status=wanted, tenant_id=tenant or None, sandbox_id=None, after=after, limit=limit
        )
        return page, queries.tenant_names(s)

    page, names = await services_of(request).db.run(read)
    return render(
        request, "jobs.html", viewer, nav="jobs", page=page, names=names,
        statuses=[s.value for s in JobStatus], f_status=status, f_tenant=tenant,
        links=_page_links(request, page.last_id),
    )  # fmt: skip


# ---------------------------------------------------------------- usage and billing


@router.get("/billing", response_class=HTMLResponse)
async def billing_page(
    request: Request, period: Annotated[str, Query(max_length=16)] = ""
) -> Response:
    viewer = await viewer_of(request, Permission.VIEW_BILLING)
    svc = services_of(request)
    now_period = Period.containing(utcnow())
    month = parse_period(period) if period else now_period
    invoicing = InvoiceService(svc.db)

    def read(s: Session) -> tuple[list[queries.DailyUsage], dict[str, str]]:
        daily = queries.daily_usage(
            s, start=month.start, end=month.end, pricebook=invoicing.pricebook
        )
        return daily, queries.tenant_names(s)

    daily, names = await svc.db.run(read)
    invoices = await asyncio.to_thread(invoicing.invoices, month)
    days = (month.end - month.start).days
    first = month.start.date()
    vcpu_chart = chart.stacked_by_day(
        "Daily vCPU-hours per tenant", daily, first_day=first, days=days,
        value=lambda r: r.vcpu_hours, fmt=lambda v, d: f"{v:,.{d}f} h", names=names,
    )  # fmt: skip
    cost_chart = chart.stacked_by_day(
        "Daily cost per tenant (USD, estimate)", daily, first_day=first, days=days,
        value=lambda r: r.cost, fmt=lambda v, d: f"${v:,.{d}f}", names=names,
    )  # fmt: skip
    return render(
        request, "billing.html", viewer, nav="billing", period=str(month),
        periods=_periods(now_period), daily=daily, names=names, invoices=invoices,
        charts=[vcpu_chart, cost_chart], formats=[f.value for f in ExportFormat],
    )  # fmt: skip


@router.get("/billing/export")
async def billing_export(
    request: Request,
    period: Annotated[str, Query(max_length=16)],
    format_name: Annotated[str, Query(alias="format", max_length=16)] = "focus",
) -> Response:
    await viewer_of(request, Permission.VIEW_BILLING)
    month = parse_period(period)
    fmt = parse_format(format_name)
    exporter = UsageExporter(services_of(request).db)

    def write() -> str:
        fd, name = tempfile.mkstemp(prefix=f"corral-usage-{month}-", suffix=f".{fmt.suffix}")
        os.close(fd)
        try:
            exporter.check(month)  # a finalized invoice that fails its hash is an error
            exporter.write(month, fmt, FilePath(name))
        except BaseException:
            FilePath(name).unlink(missing_ok=True)
            raise
        return name

    path = await asyncio.to_thread(write)
    return FileResponse(
        path,
        media_type=fmt.media_type,
        filename=f"corral-usage-{month}-{fmt.value}.{fmt.suffix}",
        background=BackgroundTask(FilePath(path).unlink, missing_ok=True),
    )


# ---------------------------------------------------------------- signing keys


@router.get("/keys", response_class=HTMLResponse)
async def key_list(request: Request, done: str = "") -> Response:
    viewer = await viewer_of(request, Permission.VIEW_OPERATIONS)
    keys = await services_of(request).keys.public_keys()
    return render(
        request, "keys.html", viewer, nav="keys", keys=list(reversed(keys)),
        notice=NOTICES.get(done),
    )  # fmt: skip


@router.post("/keys/rotate")
async def key_rotate(request: Request) -> Response:
    viewer, _ = await posted(request, Permission.OPERATE)
    await rotate_signing_key(services_of(request).keys, actor=f"console:{viewer.username}")
    return see_other("/keys", done="rotated")
