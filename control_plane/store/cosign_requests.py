"""Jobs held until the customer co-signs them (agent rules mark them high-risk).

A held job has no ``seq`` and no control-plane signature yet: both are made when the
cosignature arrives, so a job that waited an hour is still in order for the agent. The
stored body never holds environment variables (such sandboxes are refused env).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import JSON, String, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from byoc_agent.protocol.errors import NotFoundError
from control_plane.store.base import Base, UTCDateTime, utcnow
from control_plane.store.pages import Page, page_of

PENDING = "pending"
RELEASED = "released"
EXPIRED = "expired"


class CosignRequestRow(Base):
    __tablename__ = "cosign_requests"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    agent_id: Mapped[str] = mapped_column(String(64))
    sandbox_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    body: Mapped[dict[str, object]] = mapped_column(JSON)
    body_sha256: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(160))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


@dataclass(frozen=True, slots=True)
class CosignRequest:
    id: str
    tenant_id: str
    agent_id: str
    sandbox_id: str | None
    kind: str
    body: dict[str, object]
    body_sha256: str
    rule: str
    status: str
    created_at: datetime
    expires_at: datetime
    released_at: datetime | None


def _record(r: CosignRequestRow) -> CosignRequest:
    return CosignRequest(
        id=r.id, tenant_id=r.tenant_id, agent_id=r.agent_id, sandbox_id=r.sandbox_id,
        kind=r.kind, body=dict(r.body), body_sha256=r.body_sha256, rule=r.rule,
        status=r.status, created_at=r.created_at, expires_at=r.expires_at,
        released_at=r.released_at,
    )


def create(
    s: Session, *, job_id: str, tenant_id: str, agent_id: str, sandbox_id: str | None,
    kind: str, body: dict[str, object], body_sha256: str, rule: str, ttl_s: int,
) -> CosignRequest:
    now = utcnow()
    row = CosignRequestRow(
        id=job_id, tenant_id=tenant_id, agent_id=agent_id, sandbox_id=sandbox_id, kind=kind,
        body=body, body_sha256=body_sha256, rule=rule, status=PENDING, created_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
    )
    s.add(row)
    s.flush()
    return _record(row)


def get(s: Session, request_id: str, *, tenant_id: str | None) -> CosignRequest:
    row = s.get(CosignRequestRow, request_id)
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        raise NotFoundError("no such cosign request", job_id=request_id[:64])
    return _record(row)


def list_requests(
    s: Session, *, tenant_id: str | None, status: str | None, after: str | None, limit: int
) -> Page[CosignRequest]:
    q = select(CosignRequestRow).order_by(CosignRequestRow.id).limit(limit + 1)
    if tenant_id is not None:
        q = q.where(CosignRequestRow.tenant_id == tenant_id)
    if status is not None:
        q = q.where(CosignRequestRow.status == status)
    if after is not None:
        q = q.where(CosignRequestRow.id > after)
    return page_of([_record(r) for r in s.scalars(q)], limit, lambda r: r.id)


def mark_released(s: Session, request_id: str) -> bool:
    """Pending → released, once (False if another call released it first)."""
    done = s.execute(
        update(CosignRequestRow)
        .where(CosignRequestRow.id == request_id, CosignRequestRow.status == PENDING)
        .values(status=RELEASED, released_at=utcnow())
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]


def expire_due(s: Session, tenant_id: str) -> list[CosignRequest]:
    """Pending requests of the tenant past their deadline become ``expired``."""
    rows = list(s.scalars(
        select(CosignRequestRow).where(
            CosignRequestRow.tenant_id == tenant_id,
            CosignRequestRow.status == PENDING,
            CosignRequestRow.expires_at <= utcnow(),
        ).with_for_update()
    ))
    for row in rows:
        row.status = EXPIRED
    s.flush()
    return [_record(r) for r in rows]
