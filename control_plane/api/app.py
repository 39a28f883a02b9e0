"""The FastAPI application: services, routes, error handlers, lifespan.

Startup runs migrations, loads (or creates) the signing key, connects to NATS, makes
sure the streams exist, and starts the loop that feeds agent messages to the inbox.
Shutdown cancels that loop, drains NATS and closes the database pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from control_plane import e2b, nats_auth
from control_plane.api import errors
from control_plane.api.body_limit import BodyLimit
from control_plane.api.rate_limit import TenantRateLimiter
from control_plane.api.routes import (
    admin_keys,
    agents,
    api_keys,
    audit,
    billing,
    console_users,
    cosign,
    jobs,
    sandboxes,
    tenants,
)
from control_plane.api.schemas import Health
from control_plane.api.services import Services
from control_plane.audit import AuditLog
from control_plane.jobs.inbox import AgentInbox
from control_plane.jobs.issuer import JobIssuer
from control_plane.jobs.keys import SigningKeys
from control_plane.jobs.waiters import JobWaiters
from control_plane.sandbox_service import SandboxService
from control_plane.settings import Settings
from control_plane.store import Database, upgrade_to_head
from control_plane.transport.base import Publisher

log = structlog.get_logger("control_plane.api")

STARTUP_TIMEOUT_S = 60.0


def create_app(settings: Settings, *, publisher: Publisher | None = None) -> FastAPI:
    """Build the app. Without ``publisher`` it connects to NATS at ``settings.nats_url``.

    With a ``publisher`` (e.g. :class:`~control_plane.transport.MemoryPublisher`) nothing
    touches the network: jobs go to the publisher and tests feed the inbox directly.
    """
    db = Database(settings.database_url)
    keys = SigningKeys(db, settings.master_key)
    waiters = JobWaiters()
    nats_transport = None
    if publisher is None:
        from control_plane.transport.nats import NatsTransport

        nats_transport = NatsTransport(settings.nats_url)
        publisher = nats_transport
    issuer = JobIssuer(db, keys, publisher, waiters, job_ttl_s=settings.job_ttl_s)
    svc = Services(
        settings=settings,
        db=db,
        keys=keys,
        issuer=issuer,
        sandboxes=SandboxService(db, issuer, keys, settings),
        inbox=AgentInbox(db, waiters),
        create_limiter=TenantRateLimiter(
            settings.sandbox_create_rate_per_s, settings.sandbox_create_burst
        ),
        audit=AuditLog(db),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with asyncio.timeout(STARTUP_TIMEOUT_S):
            await asyncio.to_thread(upgrade_to_head, settings.database_url)
            key = await keys.load()
            log.info("signing_key_loaded", kid=key.kid)
            if settings.nats_auth == "jwt":
                authority = await asyncio.to_thread(
                    nats_auth.load_or_create, db, settings.master_key
                )
                svc.nats.authority = authority
                log.info("nats_authority_loaded", account=authority.account_public)
                if nats_transport is not None:
                    nats_transport.use_credentials(
                        authority.new_user("corral-control-plane", permissions=None)
                    )
            if nats_transport is not None:
                await nats_transport.connect()
                await nats_transport.ensure_streams()
        consumer: asyncio.Task[None] | None = None
        if nats_transport is not None:
            consumer = asyncio.create_task(nats_transport.run(svc.inbox), name="agent-inbox")
        try:
            yield
        finally:
            if consumer is not None:
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await consumer
            if nats_transport is not None:
                await nats_transport.close()
            db.dispose()
            log.info("control_plane_stopped")

    app = FastAPI(
        title="Corral control plane",
        version="1",
        lifespan=lifespan,
        openapi_url="/openapi.json",
    )
    app.state.services = svc
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    @app.get("/healthz", response_model=Health, tags=["health"], responses=errors.COMMON_ERRORS)
    async def healthz() -> Health:
        return Health()

    for module in (
        tenants, api_keys, agents, sandboxes, jobs, billing, console_users, admin_keys, audit,
        cosign,
    ):  # fmt: skip
        app.include_router(module.router, responses=errors.COMMON_ERRORS)

    @app.get("/console", include_in_schema=False)
    async def console_root() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=307)

    from control_plane.console.app import create_console  # it imports the API's services

    app.mount("/console", create_console(svc))
    app.include_router(e2b.router)  # E2B-compatible lifecycle API (docs/e2b-compat.md)
    return app
