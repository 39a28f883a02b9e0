"""The audit log: the operator reads all of it, a tenant key its own tenant's entries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from byoc_agent.protocol.errors import InvalidArgumentError
from control_plane.api.auth import JobReader, Operator, Role, Svc
from control_plane.api.pagination import decode_cursor, encode_cursor
from control_plane.api.schemas import AuditEntryOut, AuditPage, AuditVerifyOut
from control_plane.store import MAX_PAGE, audit
from control_plane.store.audit import AuditEntry

router = APIRouter(tags=["audit"])


def entry_out(e: AuditEntry) -> AuditEntryOut:
    return AuditEntryOut(
        seq=e.seq, at=e.at, actor=e.actor, tenant_id=e.tenant_id, action=e.action,
        subject=e.subject, detail=e.detail, prev_hash=e.prev_hash, hash=e.hash,
    )


def _cursor_seq(cursor: str | None) -> int | None:
    text = decode_cursor(cursor)
    if text is None:
        return None
    if not text.startswith("s") or not text[1:].isdigit():
        raise InvalidArgumentError("cursor is not valid", field="cursor")
    return int(text[1:])


@router.get("/v1/audit", response_model=AuditPage)
async def list_audit(
    who: JobReader,
    svc: Svc,
    tenant_id: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=256)] = None,
) -> AuditPage:
    """Entries in chain order. A tenant key sees only its tenant (``tenant_id`` is ignored
    for it); the operator sees everything or filters by ``tenant_id``."""
    after = _cursor_seq(cursor)
    scope = who.tenant_id if who.role == Role.TENANT else tenant_id
    page = await svc.db.run(
        lambda s: audit.list_entries(s, tenant_id=scope, after=after, limit=limit,
                                     action=action)
    )
    last = f"s{int(page.last_id):012d}" if page.last_id is not None else None
    return AuditPage(items=[entry_out(e) for e in page.items], next_cursor=encode_cursor(last))


@router.get("/v1/audit/verify", response_model=AuditVerifyOut)
async def verify_audit(_: Operator, svc: Svc) -> AuditVerifyOut:
    """Recompute the whole hash chain; names the first entry that does not match."""
    check = await svc.db.run(audit.verify_chain)
    return AuditVerifyOut(
        ok=check.ok, entries=check.entries, head_hash=check.head_hash,
        first_bad_seq=check.first_bad_seq, problem=check.problem,
    )
