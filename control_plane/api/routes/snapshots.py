"""Snapshots: list, read and delete (taken with POST /v1/sandboxes/{id}/snapshots)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from control_plane.api.auth import SandboxReader, SandboxWriter, Svc
from control_plane.api.errors import AGENT_ERRORS
from control_plane.api.pagination import decode_cursor, encode_cursor
from control_plane.api.schemas import SnapshotOut, SnapshotPage
from control_plane.api.views import snapshot_out
from control_plane.store import MAX_PAGE, snapshots

router = APIRouter(prefix="/v1/snapshots", tags=["snapshots"])


@router.get("", response_model=SnapshotPage)
async def list_snapshots(
    who: SandboxReader,
    svc: Svc,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=256)] = None,
) -> SnapshotPage:
    after = decode_cursor(cursor)
    tenant_id = who.tenant_id
    page = await svc.db.run(
        lambda s: snapshots.list_snapshots(s, tenant_id=tenant_id, after=after, limit=limit)
    )
    return SnapshotPage(
        items=[snapshot_out(r) for r in page.items], next_cursor=encode_cursor(page.last_id)
    )


@router.get("/{snapshot_id}", response_model=SnapshotOut)
async def get_snapshot(snapshot_id: str, who: SandboxReader, svc: Svc) -> SnapshotOut:
    return snapshot_out(await svc.sandboxes.get_snapshot(who.tenant_id, snapshot_id))


@router.delete("/{snapshot_id}", status_code=204, responses=AGENT_ERRORS)
async def delete_snapshot(snapshot_id: str, who: SandboxWriter, svc: Svc) -> Response:
    """Delete the snapshot's files on its agent; sandboxes restored from it run on."""
    await svc.sandboxes.delete_snapshot(who.tenant_id, snapshot_id)
    return Response(status_code=204)
