"""Cosign requests: jobs held until the tenant's customer-held key co-signs them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from control_plane.api.auth import SandboxReader, SandboxWriter, Svc
from control_plane.api.pagination import decode_cursor, encode_cursor
from control_plane.api.schemas import (
    CosignatureRequest,
    CosignReleasedOut,
    CosignRequestOut,
    CosignRequestPage,
)
from control_plane.store import MAX_PAGE, cosign_requests
from control_plane.store.cosign_requests import CosignRequest

router = APIRouter(prefix="/v1/cosign-requests", tags=["cosign"])


def request_out(r: CosignRequest) -> CosignRequestOut:
    return CosignRequestOut.model_validate({
        "id": r.id, "tenant_id": r.tenant_id, "agent_id": r.agent_id,
        "sandbox_id": r.sandbox_id, "kind": r.kind, "body": r.body,
        "body_sha256": r.body_sha256, "rule": r.rule, "status": r.status,
        "created_at": r.created_at, "expires_at": r.expires_at, "released_at": r.released_at,
    })


@router.get("", response_model=CosignRequestPage)
async def list_cosign_requests(
    who: SandboxReader,
    svc: Svc,
    status: Annotated[str | None, Query(pattern="^(pending|released|expired)$")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=256)] = None,
) -> CosignRequestPage:
    after = decode_cursor(cursor)
    tenant_id = who.tenant_id
    page = await svc.db.run(
        lambda s: cosign_requests.list_requests(
            s, tenant_id=tenant_id, status=status, after=after, limit=limit
        )
    )
    return CosignRequestPage(
        items=[request_out(r) for r in page.items], next_cursor=encode_cursor(page.last_id)
    )


@router.get("/{request_id}", response_model=CosignRequestOut)
async def get_cosign_request(request_id: str, who: SandboxReader, svc: Svc) -> CosignRequestOut:
    return request_out(
        await svc.db.run(lambda s: cosign_requests.get(s, request_id, tenant_id=who.tenant_id))
    )


@router.post("/{request_id}/cosignature", status_code=202, response_model=CosignReleasedOut)
async def cosign_request(
    request_id: str, body: CosignatureRequest, who: SandboxWriter, svc: Svc
) -> CosignReleasedOut:
    """Attach the customer's cosignature; the job is signed, sent, and runs on the agent."""
    issued = await svc.sandboxes.cosign.release(who.tenant_id, request_id, body.cosignature)
    return CosignReleasedOut(job_id=issued.job_id, status="delivered")
