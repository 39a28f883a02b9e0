"""A tenant's own API keys, managed with a key whose role has ``keys:manage``.

An ``owner`` key mints and revokes keys of any role; an ``admin`` key any role but
``owner`` (see :func:`control_plane.roles.may_manage`). Another tenant's key is a 404.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from sqlalchemy.orm import Session

from control_plane.api.auth import KeyManager, Svc
from control_plane.api.schemas import ApiKeyList, CreateApiKeyRequest, NewTenantApiKeyOut
from control_plane.api.views import api_key_out, new_api_key_out
from control_plane.errors import ForbiddenError
from control_plane.roles import KeyRole, may_manage
from control_plane.store import tenants

router = APIRouter(prefix="/v1/api-keys", tags=["api-keys"])


def _check(actor: KeyRole, target: KeyRole) -> None:
    if not may_manage(actor, target):
        raise ForbiddenError(f"a {actor} key cannot manage {target} keys")


@router.get("", response_model=ApiKeyList)
async def list_own_api_keys(who: KeyManager, svc: Svc) -> ApiKeyList:
    """The tenant's keys, with roles, never their secrets."""
    keys = await svc.db.run(lambda s: tenants.list_api_keys(s, who.tenant_id))
    return ApiKeyList(items=[api_key_out(k) for k in keys])


@router.post("", status_code=201, response_model=NewTenantApiKeyOut)
async def create_own_api_key(
    body: CreateApiKeyRequest, who: KeyManager, svc: Svc
) -> NewTenantApiKeyOut:
    """Mint a key for the caller's tenant; its secret is in this response only."""
    _check(who.role, body.role)
    issued = await svc.db.run(
        lambda s: tenants.create_api_key(s, who.tenant_id, body.name, body.role)
    )
    return new_api_key_out(issued)


@router.delete("/{key_id}", status_code=204)
async def revoke_own_api_key(
    key_id: Annotated[str, Path(max_length=32)], who: KeyManager, svc: Svc
) -> Response:
    """Revoke one of the tenant's keys; requests with it get 401 from now on."""

    def revoke(s: Session) -> None:
        target = tenants.get_api_key(s, who.tenant_id, key_id)
        _check(who.role, target.role)
        tenants.revoke_api_key(s, who.tenant_id, key_id)

    await svc.db.run(revoke)
    return Response(status_code=204)
