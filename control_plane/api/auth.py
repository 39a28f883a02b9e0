"""Bearer auth and roles: the operator token, a billing key (finance), or a tenant API key.

``principal`` admits the operator and tenants only, so every endpoint written before the
billing role refuses a billing key with 403; billing reads opt in with ``BillingReader``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Header

from control_plane.api.services import Services, services
from control_plane.errors import ForbiddenError, UnauthenticatedError
from control_plane.store import billing_keys, tenants

MAX_TOKEN = 512


class Role(StrEnum):
    OPERATOR = "operator"
    BILLING = "billing"
    TENANT = "tenant"


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    tenant_id: str | None = None


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
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    """Whoever the bearer token authenticates, in any role."""
    token = bearer(authorization)
    if hmac.compare_digest(token.encode(), svc.settings.admin_token.encode()):
        return Principal(role=Role.OPERATOR)
    if billing_keys.is_billing_key(token):
        await svc.db.run(lambda s: billing_keys.authenticate_billing_key(s, token))
        return Principal(role=Role.BILLING)
    tenant_id = await svc.db.run(lambda s: tenants.authenticate_api_key(s, token))
    return Principal(role=Role.TENANT, tenant_id=tenant_id)


async def principal(who: Annotated[Principal, Depends(caller)]) -> Principal:
    """The operator or a tenant; a billing key is refused (it reads billing only)."""
    if who.role == Role.BILLING:
        raise ForbiddenError("a billing key may only read /v1/billing")
    return who


async def operator(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if who.role != Role.OPERATOR:
        raise ForbiddenError("this needs the operator role")
    return who


async def billing_reader(who: Annotated[Principal, Depends(caller)]) -> Principal:
    """The operator or a billing key: reads of usage, invoices and exports."""
    if who.role not in (Role.OPERATOR, Role.BILLING):
        raise ForbiddenError("this needs the billing or operator role")
    return who


async def tenant(who: Annotated[Principal, Depends(principal)]) -> str:
    """The caller's tenant id; the operator is refused (it acts for no tenant)."""
    if who.role != Role.TENANT or who.tenant_id is None:
        raise ForbiddenError("this needs a tenant API key")
    return who.tenant_id


Operator = Annotated[Principal, Depends(operator)]
BillingReader = Annotated[Principal, Depends(billing_reader)]
TenantId = Annotated[str, Depends(tenant)]
AnyPrincipal = Annotated[Principal, Depends(principal)]
Svc = Annotated[Services, Depends(services)]
