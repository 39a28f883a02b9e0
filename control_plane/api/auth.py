"""Bearer auth and roles: the operator token, or an API key acting for one tenant."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Header

from control_plane.api.services import Services, services
from control_plane.errors import ForbiddenError, UnauthenticatedError
from control_plane.store import tenants

MAX_TOKEN = 512


class Role(StrEnum):
    OPERATOR = "operator"
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


async def principal(
    svc: Annotated[Services, Depends(services)],
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    token = bearer(authorization)
    if hmac.compare_digest(token.encode(), svc.settings.admin_token.encode()):
        return Principal(role=Role.OPERATOR)
    tenant_id = await svc.db.run(lambda s: tenants.authenticate_api_key(s, token))
    return Principal(role=Role.TENANT, tenant_id=tenant_id)


async def operator(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if who.role != Role.OPERATOR:
        raise ForbiddenError("this needs the operator role")
    return who


async def tenant(who: Annotated[Principal, Depends(principal)]) -> str:
    """The caller's tenant id; the operator is refused (it acts for no tenant)."""
    if who.role != Role.TENANT or who.tenant_id is None:
        raise ForbiddenError("this needs a tenant API key")
    return who.tenant_id


Operator = Annotated[Principal, Depends(operator)]
TenantId = Annotated[str, Depends(tenant)]
AnyPrincipal = Annotated[Principal, Depends(principal)]
Svc = Annotated[Services, Depends(services)]
