"""Tenants and their API keys (operator only; tenants manage their own at /v1/api-keys)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from control_plane.api.auth import Operator, Svc
from control_plane.api.pagination import decode_cursor, encode_cursor
from control_plane.api.schemas import (
    ApiKeyList,
    CreateApiKeyRequest,
    CreatedTenantOut,
    CreateTenantRequest,
    NewTenantApiKeyOut,
    TenantOut,
    TenantPage,
    TenantPolicyRequest,
)
from control_plane.api.views import api_key_out, new_api_key_out, tenant_out
from control_plane.store import MAX_PAGE, tenants

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])


@router.post("", status_code=201, response_model=CreatedTenantOut)
async def create_tenant(body: CreateTenantRequest, _: Operator, svc: Svc) -> CreatedTenantOut:
    tenant, key = await svc.db.run(lambda s: tenants.create_tenant(s, body.name))
    return CreatedTenantOut(tenant=tenant_out(tenant), api_key=new_api_key_out(key))


@router.get("", response_model=TenantPage)
async def list_tenants(
    _: Operator,
    svc: Svc,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=256)] = None,
) -> TenantPage:
    after = decode_cursor(cursor)
    page = await svc.db.run(lambda s: tenants.list_tenants(s, after=after, limit=limit))
    return TenantPage(
        items=[tenant_out(t) for t in page.items], next_cursor=encode_cursor(page.last_id)
    )


@router.get("/{tenant_id}", response_model=TenantOut)
async def get_tenant(tenant_id: str, _: Operator, svc: Svc) -> TenantOut:
    return tenant_out(await svc.db.run(lambda s: tenants.get_tenant(s, tenant_id)))


@router.put("/{tenant_id}/policy", response_model=TenantOut)
async def set_tenant_policy(
    tenant_id: str, body: TenantPolicyRequest, _: Operator, svc: Svc
) -> TenantOut:
    """Require an isolation class (``microvm``) for every sandbox of the tenant, or clear it."""
    record = await svc.db.run(
        lambda s: tenants.set_required_isolation(s, tenant_id, body.required_isolation)
    )
    return tenant_out(record)


@router.post("/{tenant_id}/api-keys", status_code=201, response_model=NewTenantApiKeyOut)
async def create_api_key(
    tenant_id: str, body: CreateApiKeyRequest, _: Operator, svc: Svc
) -> NewTenantApiKeyOut:
    """Mint a key for the tenant in ``role`` (default ``member``); its secret is shown once."""
    issued = await svc.db.run(
        lambda s: tenants.create_api_key(s, tenant_id, body.name, body.role)
    )
    return new_api_key_out(issued)


@router.get("/{tenant_id}/api-keys", response_model=ApiKeyList)
async def list_api_keys(tenant_id: str, _: Operator, svc: Svc) -> ApiKeyList:
    keys = await svc.db.run(lambda s: tenants.list_api_keys(s, tenant_id))
    return ApiKeyList(items=[api_key_out(k) for k in keys])


@router.delete("/{tenant_id}/api-keys/{key_id}", status_code=204)
async def revoke_api_key(tenant_id: str, key_id: str, _: Operator, svc: Svc) -> Response:
    await svc.db.run(lambda s: tenants.revoke_api_key(s, tenant_id, key_id))
    return Response(status_code=204)
