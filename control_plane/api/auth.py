"""Bearer auth and roles: the operator token, a billing key (finance), or a tenant API key.

Every endpoint states what it needs with one dependency:

- ``Operator``: the operator token only.
- ``SandboxReader``, ``SandboxWriter``, ``SandboxAccess``, ``KeyManager``: an API key whose
  role has that permission (see :mod:`control_plane.roles`); the operator and billing keys
  are refused.
- ``JobReader``, ``AgentReader``: the operator (across tenants), or an API key whose role
  has the permission (its own tenant only).
- ``BillingReader``: the operator, a platform billing key (``cbk_``), or an API key with
  ``billing:read`` (its own tenant's billing only).

A caller that is authenticated but not allowed gets 403; one not authenticated, 401.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Header

from byoc_agent.protocol.errors import NotFoundError
from control_plane.api.services import Services, services
from control_plane.errors import ForbiddenError, UnauthenticatedError
from control_plane.roles import KeyRole, Permission, allows
from control_plane.store import billing_keys, tenants

MAX_TOKEN = 512


class Role(StrEnum):
    """The kind of credential: operator token, platform billing key, or tenant API key."""

    OPERATOR = "operator"
    BILLING = "billing"
    TENANT = "tenant"


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    tenant_id: str | None = None
    key_role: KeyRole | None = None
    key_id: str | None = None

    def may(self, permission: Permission) -> bool:
        return self.key_role is not None and allows(self.key_role, permission)

    def scope(self) -> str | None:
        """The tenant this caller is confined to; ``None`` for the operator and finance."""
        return self.tenant_id if self.role == Role.TENANT else None

    def check_tenant(self, tenant_id: str | None) -> None:
        """404 (not 403) when a tenant-scoped caller names another tenant."""
        own = self.scope()
        if own is not None and tenant_id is not None and tenant_id != own:
            raise NotFoundError("no such tenant", tenant_id=tenant_id)


@dataclass(frozen=True, slots=True)
class TenantCaller:
    """An API key acting for its tenant."""

    tenant_id: str
    role: KeyRole
    key_id: str


def bearer(authorization: str | None) -> str:
    if not authorization or len(authorization) > MAX_TOKEN + 16:
        raise UnauthenticatedError("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise UnauthenticatedError("missing bearer token")
    return token


async def caller(
    svc: Annotated[Services, Depends(services)],
    # Not a documented parameter: it is the credential, described in ARCHITECTURE.md.
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    """Whoever the bearer token authenticates, in any role."""
    token = bearer(authorization)
    if hmac.compare_digest(token.encode(), svc.settings.admin_token.encode()):
        return Principal(role=Role.OPERATOR)
    if billing_keys.is_billing_key(token):
        await svc.db.run(lambda s: billing_keys.authenticate_billing_key(s, token))
        return Principal(role=Role.BILLING)
    key = await svc.db.run(lambda s: tenants.authenticate(s, token))
    return Principal(
        role=Role.TENANT, tenant_id=key.tenant_id, key_role=key.role, key_id=key.key_id
    )


async def operator(who: Annotated[Principal, Depends(caller)]) -> Principal:
    if who.role != Role.OPERATOR:
        raise ForbiddenError("this needs the operator role")
    return who


def _refuse(who: Principal, permission: Permission) -> None:
    if who.role == Role.BILLING:
        raise ForbiddenError("a billing key may only read /v1/billing")
    if who.role == Role.TENANT and not who.may(permission):
        raise ForbiddenError(f"this API key's role ({who.key_role}) lacks {permission}")


def tenant_with(permission: Permission) -> Callable[[Principal], Awaitable[TenantCaller]]:
    """A dependency: an API key whose role has ``permission``; the operator is refused."""

    async def dependency(who: Annotated[Principal, Depends(caller)]) -> TenantCaller:
        _refuse(who, permission)
        if who.role != Role.TENANT or who.tenant_id is None or who.key_role is None:
            raise ForbiddenError("this needs a tenant API key")
        return TenantCaller(tenant_id=who.tenant_id, role=who.key_role, key_id=who.key_id or "")

    return dependency


def operator_or(permission: Permission) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency: the operator, or an API key whose role has ``permission``."""

    async def dependency(who: Annotated[Principal, Depends(caller)]) -> Principal:
        _refuse(who, permission)
        return who

    return dependency


async def billing_reader(who: Annotated[Principal, Depends(caller)]) -> Principal:
    """The operator, a billing key, or an API key with ``billing:read`` (own tenant only)."""
    if who.role == Role.TENANT and who.may(Permission.BILLING_READ):
        return who
    if who.role not in (Role.OPERATOR, Role.BILLING):
        raise ForbiddenError("this needs the billing or operator role, or billing:read")
    return who


Operator = Annotated[Principal, Depends(operator)]
BillingReader = Annotated[Principal, Depends(billing_reader)]
Svc = Annotated[Services, Depends(services)]

# Tenant endpoints, by the permission they need.
SandboxReader = Annotated[TenantCaller, Depends(tenant_with(Permission.SANDBOXES_READ))]
SandboxWriter = Annotated[TenantCaller, Depends(tenant_with(Permission.SANDBOXES_WRITE))]
SandboxAccess = Annotated[TenantCaller, Depends(tenant_with(Permission.SANDBOXES_ACCESS))]
KeyManager = Annotated[TenantCaller, Depends(tenant_with(Permission.KEYS_MANAGE))]
# Endpoints the operator may call too (across tenants).
JobReader = Annotated[Principal, Depends(operator_or(Permission.JOBS_READ))]
AgentReader = Annotated[Principal, Depends(operator_or(Permission.AGENTS_READ))]
