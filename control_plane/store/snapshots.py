"""Snapshots: a sandbox's memory and files saved on the agent that took them.

The files stay on that agent; this table records whose they are and what they hold, so a
restore is placed there and another tenant never sees them. A deleted snapshot keeps its row
with ``deleted_at`` set.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from byoc_agent.protocol.errors import NotFoundError
from control_plane.store.base import Base, UTCDateTime, new_id, utcnow
from control_plane.store.pages import Page, page_of


class Snapshot(Base):
    __tablename__ = "snapshots"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"))
    sandbox_id: Mapped[str] = mapped_column(ForeignKey("sandboxes.id"))
    isolation: Mapped[str] = mapped_column(String(16))
    template: Mapped[str] = mapped_column(String(64))
    cpu: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    id: str
    tenant_id: str
    agent_id: str
    sandbox_id: str
    isolation: str
    template: str
    cpu: int
    memory_mb: int
    created_at: datetime
    deleted_at: datetime | None


def _record(row: Snapshot) -> SnapshotRecord:
    return SnapshotRecord(
        id=row.id,
        tenant_id=row.tenant_id,
        agent_id=row.agent_id,
        sandbox_id=row.sandbox_id,
        isolation=row.isolation,
        template=row.template,
        cpu=row.cpu,
        memory_mb=row.memory_mb,
        created_at=row.created_at,
        deleted_at=row.deleted_at,
    )


def new_snapshot_id() -> str:
    return new_id("snap")


def add_snapshot(
    s: Session,
    *,
    snapshot_id: str,
    tenant_id: str,
    agent_id: str,
    sandbox_id: str,
    isolation: str,
    template: str,
    cpu: int,
    memory_mb: int,
) -> SnapshotRecord:
    row = Snapshot(
        id=snapshot_id,
        tenant_id=tenant_id,
        agent_id=agent_id,
        sandbox_id=sandbox_id,
        isolation=isolation,
        template=template,
        cpu=cpu,
        memory_mb=memory_mb,
        created_at=utcnow(),
    )
    s.add(row)
    s.flush()
    return _record(row)


def get_snapshot(s: Session, snapshot_id: str, *, tenant_id: str) -> SnapshotRecord:
    """A live snapshot of ``tenant_id``; another tenant's or a deleted one is not found."""
    row = s.get(Snapshot, snapshot_id)
    if row is None or row.tenant_id != tenant_id or row.deleted_at is not None:
        raise NotFoundError("no such snapshot", snapshot_id=snapshot_id)
    return _record(row)


def list_snapshots(
    s: Session, *, tenant_id: str, after: str | None, limit: int
) -> Page[SnapshotRecord]:
    q = select(Snapshot).where(Snapshot.tenant_id == tenant_id, Snapshot.deleted_at.is_(None))
    if after is not None:
        q = q.where(Snapshot.id > after)
    rows = [_record(r) for r in s.scalars(q.order_by(Snapshot.id).limit(limit + 1))]
    return page_of(rows, limit, lambda r: r.id)


def mark_deleted(s: Session, snapshot_id: str) -> None:
    row = s.get(Snapshot, snapshot_id)
    if row is not None and row.deleted_at is None:
        row.deleted_at = utcnow()
