"""What request handlers need, built once per app and kept on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from control_plane.api.rate_limit import TenantRateLimiter
from control_plane.audit import AuditLog
from control_plane.jobs.inbox import AgentInbox
from control_plane.jobs.issuer import JobIssuer
from control_plane.jobs.keys import SigningKeys
from control_plane.nats_auth import NatsAuthority
from control_plane.sandbox_service import SandboxService
from control_plane.settings import Settings
from control_plane.store import Database


class NatsAccess:
    """The NATS authority once loaded at startup (``None`` when NATS runs without auth)."""

    def __init__(self) -> None:
        self.authority: NatsAuthority | None = None


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    db: Database
    keys: SigningKeys
    issuer: JobIssuer
    sandboxes: SandboxService
    inbox: AgentInbox
    create_limiter: TenantRateLimiter
    audit: AuditLog
    nats: NatsAccess = field(default_factory=NatsAccess)


def services(request: Request) -> Services:
    found = request.app.state.services
    if not isinstance(found, Services):
        raise RuntimeError("app.state.services is not set")
    return found
