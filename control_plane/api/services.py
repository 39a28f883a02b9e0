"""What request handlers need, built once per app and kept on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from control_plane.api.rate_limit import TenantRateLimiter
from control_plane.jobs.inbox import AgentInbox
from control_plane.jobs.issuer import JobIssuer
from control_plane.jobs.keys import SigningKeys
from control_plane.sandbox_service import SandboxService
from control_plane.settings import Settings
from control_plane.store import Database


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    db: Database
    keys: SigningKeys
    issuer: JobIssuer
    sandboxes: SandboxService
    inbox: AgentInbox
    create_limiter: TenantRateLimiter


def services(request: Request) -> Services:
    found = request.app.state.services
    if not isinstance(found, Services):
        raise RuntimeError("app.state.services is not set")
    return found
