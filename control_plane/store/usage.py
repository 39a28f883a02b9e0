"""Usage records as agents reported them (signed, verified by the inbox), deduplicated.

A row keeps what the agent's meter observed: whole-second UTC times, integer vCPUs,
MiB and GPUs. Nothing here is money; prices are applied by :mod:`billing` at export
time. ``seq`` is the arrival order, which the billing ledger uses to tell late usage apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    ForeignKey,
    Index,
    Integer,
    Row,
    String,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from control_plane.store.base import Base, UTCDateTime
from control_plane.store.pages import Page, page_of

READ_BATCH = 1000


class UsageRow(Base):
    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("tenant_id", "agent_id", "record_id", name="uq_usage_records_key"),
        Index("ix_usage_records_tenant_start", "tenant_id", "start"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"))
    record_id: Mapped[str] = mapped_column(String(64))
    sandbox_id: Mapped[str] = mapped_column(ForeignKey("sandboxes.id"), index=True)
    start: Mapped[datetime] = mapped_column(UTCDateTime())
    end: Mapped[datetime] = mapped_column(UTCDateTime())
    vcpu: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    gpu_count: Mapped[int] = mapped_column(Integer)
    gpu_model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    isolation: Mapped[str] = mapped_column(String(16))
    template: Mapped[str] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(String(255))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


@dataclass(frozen=True, slots=True)
class Usage:
    """One observed interval of one sandbox, as its agent reported it."""

    tenant_id: str
    agent_id: str
    record_id: str
    sandbox_id: str
    start: datetime
    end: datetime
    vcpu: int
    memory_mb: int
    gpu_count: int
    gpu_model: str | None
    isolation: str
    template: str
    host: str


@dataclass(frozen=True, slots=True)
class StoredUsage:
    """A usage record with its arrival order and when the control plane received it."""

    seq: int
    usage: Usage
    received_at: datetime


class Ingested(StrEnum):
    """What storing a record did: a closed set, logged and counted."""

    NEW = "new"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


def _usage(row: UsageRow) -> Usage:
    return Usage(
        tenant_id=row.tenant_id,
        agent_id=row.agent_id,
        record_id=row.record_id,
        sandbox_id=row.sandbox_id,
        start=row.start,
        end=row.end,
        vcpu=row.vcpu,
        memory_mb=row.memory_mb,
        gpu_count=row.gpu_count,
        gpu_model=row.gpu_model,
        isolation=row.isolation,
        template=row.template,
        host=row.host,
    )


def _stored(row: UsageRow) -> StoredUsage:
    return StoredUsage(seq=row.seq, usage=_usage(row), received_at=row.received_at)


def record_usage(s: Session, usage: Usage, *, received_at: datetime) -> Ingested:
    """Store a record once per (tenant, agent, record_id); a redelivery changes nothing.

    The same key with different content is a ``CONFLICT``: the first record stands.
    """
    existing = s.scalars(
        select(UsageRow).where(
            UsageRow.tenant_id == usage.tenant_id,
            UsageRow.agent_id == usage.agent_id,
            UsageRow.record_id == usage.record_id,
        )
    ).one_or_none()
    if existing is not None:
        return Ingested.DUPLICATE if _usage(existing) == usage else Ingested.CONFLICT
    s.add(
        UsageRow(
            tenant_id=usage.tenant_id,
            agent_id=usage.agent_id,
            record_id=usage.record_id,
            sandbox_id=usage.sandbox_id,
            start=usage.start,
            end=usage.end,
            vcpu=usage.vcpu,
            memory_mb=usage.memory_mb,
            gpu_count=usage.gpu_count,
            gpu_model=usage.gpu_model,
            isolation=usage.isolation,
            template=usage.template,
            host=usage.host,
            received_at=received_at,
        )
    )
    s.flush()
    return Ingested.NEW


def list_usage(
    s: Session,
    *,
    start: datetime,
    end: datetime,
    tenant_id: str | None,
    after_seq: int | None,
    limit: int,
) -> Page[StoredUsage]:
    """Records overlapping ``[start, end)``, in arrival order, one keyset page."""
    query = select(UsageRow).where(UsageRow.start < end, UsageRow.end > start)
    if tenant_id is not None:
        query = query.where(UsageRow.tenant_id == tenant_id)
    if after_seq is not None:
        query = query.where(UsageRow.seq > after_seq)
    rows = s.scalars(query.order_by(UsageRow.seq).limit(limit + 1)).all()
    return page_of([_stored(r) for r in rows], limit, lambda u: str(u.seq))


def tenants_with_usage(s: Session, *, start: datetime, end: datetime) -> list[str]:
    """Tenants that have usage overlapping ``[start, end)``, sorted."""
    query = (
        select(UsageRow.tenant_id)
        .where(UsageRow.start < end, UsageRow.end > start)
        .distinct()
        .order_by(UsageRow.tenant_id)
    )
    return list(s.scalars(query).all())


def usage_batch(
    s: Session, *, tenant_id: str, start: datetime, end: datetime, after_seq: int
) -> list[StoredUsage]:
    """Up to :data:`READ_BATCH` of a tenant's records overlapping ``[start, end)`` after a seq."""
    query = (
        select(UsageRow)
        .where(
            UsageRow.tenant_id == tenant_id,
            UsageRow.start < end,
            UsageRow.end > start,
            UsageRow.seq > after_seq,
        )
        .order_by(UsageRow.seq)
        .limit(READ_BATCH)
    )
    return [_stored(r) for r in s.scalars(query).all()]


def tenant_usage_batch(s: Session, *, tenant_id: str, after_seq: int) -> list[StoredUsage]:
    """Up to :data:`READ_BATCH` of a tenant's records of any month, in arrival order."""
    query = (
        select(UsageRow)
        .where(UsageRow.tenant_id == tenant_id, UsageRow.seq > after_seq)
        .order_by(UsageRow.seq)
        .limit(READ_BATCH)
    )
    return [_stored(r) for r in s.scalars(query).all()]


def tenant_usage_count(s: Session, *, tenant_id: str) -> int:
    """How many records the tenant has, of every month (its billing watermark)."""
    query = select(func.count()).select_from(UsageRow).where(UsageRow.tenant_id == tenant_id)
    return int(s.scalar(query) or 0)


RANKED_COLUMNS = (
    "rank", "agent_id", "record_id", "sandbox_id", "start", "end", "vcpu", "memory_mb",
    "gpu_count", "gpu_model", "isolation", "template", "host",
)
"""The columns of :func:`stream_ranked_usage` rows, in order."""


def stream_ranked_usage(
    s: Session, *, tenant_id: str, start: datetime, end: datetime, batch_size: int
) -> Iterator[Sequence[Row[tuple[object, ...]]]]:
    """The tenant's records overlapping ``[start, end)`` in arrival order, ``batch_size`` at a
    time, each with its ``rank``: its position among *all* the tenant's records (1, 2, ...).

    One query, streamed (a server-side cursor on PostgreSQL; SQLite steps its cursor), so
    memory holds one batch of plain rows, never the tenant's history. The rank is what the
    billing ledger calls a sequence number; the window runs over every month, so records
    outside the range still count.
    """
    ranked = (
        select(
            func.row_number().over(order_by=UsageRow.seq).label("rank"),
            UsageRow.agent_id,
            UsageRow.record_id,
            UsageRow.sandbox_id,
            UsageRow.start,
            UsageRow.end,
            UsageRow.vcpu,
            UsageRow.memory_mb,
            UsageRow.gpu_count,
            UsageRow.gpu_model,
            UsageRow.isolation,
            UsageRow.template,
            UsageRow.host,
        )
        .where(UsageRow.tenant_id == tenant_id)
        .subquery()
    )
    query = (
        select(*(ranked.c[name] for name in RANKED_COLUMNS))
        .where(ranked.c.start < end, ranked.c.end > start)
        .order_by(ranked.c.rank)
        .execution_options(stream_results=True, yield_per=batch_size)
    )
    result = s.execute(query)
    try:
        yield from result.partitions(batch_size)
    finally:
        result.close()
