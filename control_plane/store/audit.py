"""The audit log: append-only, each entry hashing the one before it.

``hash = sha256(prev_hash || canonical JSON of the entry)``; the first entry's
``prev_hash`` is 64 zeros. Appends take the one-row ``audit_head`` with an ``UPDATE``
first, which serializes appenders on SQLite (the write lock) and PostgreSQL (the row
lock) alike, so the chain never forks. :func:`verify_chain` recomputes every hash and
names the first entry that does not match: a changed, removed or inserted row breaks it.
Nothing here updates or deletes an entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import JSON, Integer, String, UniqueConstraint, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from control_plane.store.base import Base, UTCDateTime, utcnow
from control_plane.store.pages import Page, page_of

GENESIS = "0" * 64
MAX_DETAIL = 1000


class AuditEntryRow(Base):
    __tablename__ = "audit_log"
    __table_args__ = (UniqueConstraint("prev_hash", name="uq_audit_log_prev_hash"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(128))
    tenant_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str | None] = mapped_column(String(128), nullable=True)
    detail: Mapped[dict[str, str]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHeadRow(Base):
    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened, before it is chained: who, for which tenant, to what."""

    action: str
    actor: str
    tenant_id: str | None = None
    subject: str | None = None
    detail: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: datetime
    actor: str
    tenant_id: str | None
    action: str
    subject: str | None
    detail: dict[str, str]
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class ChainCheck:
    ok: bool
    entries: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None


def entry_hash(
    prev_hash: str, seq: int, at: datetime, actor: str, tenant_id: str | None, action: str,
    subject: str | None, detail: Mapping[str, str],
) -> str:
    body = json.dumps(
        {
            "seq": seq, "at": at.isoformat(timespec="microseconds"), "actor": actor,
            "tenant_id": tenant_id, "action": action, "subject": subject,
            "detail": dict(detail),
        },
        sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    )
    return hashlib.sha256(prev_hash.encode("ascii") + body.encode("ascii")).hexdigest()


def _clean(detail: Mapping[str, str]) -> dict[str, str]:
    return {str(k)[:64]: str(v)[:MAX_DETAIL] for k, v in detail.items()}


def append(s: Session, event: AuditEvent) -> AuditEntry:
    """Chain one entry onto the log (inside the caller's transaction)."""
    head = s.execute(
        update(AuditHeadRow).where(AuditHeadRow.id == 1)
        .values(seq=AuditHeadRow.seq + 1)
        .returning(AuditHeadRow.seq, AuditHeadRow.hash)
    ).one_or_none()
    if head is None:  # a database made without the migration's seed row
        s.add(AuditHeadRow(id=1, seq=1, hash=GENESIS))
        s.flush()
        seq, prev = 1, GENESIS
    else:
        seq, prev = int(head[0]), str(head[1])
    at = utcnow()
    detail = _clean(event.detail)
    actor = event.actor[:128]
    subject = event.subject[:128] if event.subject else None
    digest = entry_hash(prev, seq, at, actor, event.tenant_id, event.action, subject, detail)
    s.add(AuditEntryRow(seq=seq, at=at, actor=actor, tenant_id=event.tenant_id,
                        action=event.action, subject=subject, detail=detail,
                        prev_hash=prev, hash=digest))
    s.execute(update(AuditHeadRow).where(AuditHeadRow.id == 1).values(hash=digest))
    s.flush()
    return AuditEntry(seq, at, actor, event.tenant_id, event.action, subject, detail, prev,
                      digest)


def _entry(r: AuditEntryRow) -> AuditEntry:
    return AuditEntry(
        seq=r.seq, at=r.at, actor=r.actor, tenant_id=r.tenant_id, action=r.action,
        subject=r.subject, detail=dict(r.detail), prev_hash=r.prev_hash, hash=r.hash,
    )


def list_entries(
    s: Session, *, tenant_id: str | None, after: int | None, limit: int,
    action: str | None = None,
) -> Page[AuditEntry]:
    """Entries in chain order; with ``tenant_id``, only that tenant's."""
    q = select(AuditEntryRow).order_by(AuditEntryRow.seq).limit(limit + 1)
    if tenant_id is not None:
        q = q.where(AuditEntryRow.tenant_id == tenant_id)
    if action is not None:
        q = q.where(AuditEntryRow.action == action)
    if after is not None:
        q = q.where(AuditEntryRow.seq > after)
    return page_of([_entry(r) for r in s.scalars(q)], limit, lambda e: str(e.seq))


def verify_chain(s: Session, batch: int = 1000) -> ChainCheck:
    """Recompute every hash in order; the first mismatch, gap or broken link fails it."""
    prev, expected_seq, count, after = GENESIS, 1, 0, 0
    while True:
        rows = list(s.scalars(
            select(AuditEntryRow).where(AuditEntryRow.seq > after)
            .order_by(AuditEntryRow.seq).limit(batch)
        ))
        for r in rows:
            if r.seq != expected_seq:
                return ChainCheck(False, count, prev, expected_seq, "an entry is missing")
            if r.prev_hash != prev:
                return ChainCheck(False, count, prev, r.seq, "prev_hash does not link")
            digest = entry_hash(prev, r.seq, r.at, r.actor, r.tenant_id, r.action, r.subject,
                                r.detail)
            if digest != r.hash:
                return ChainCheck(False, count, prev, r.seq, "entry content does not match hash")
            prev, expected_seq, count, after = r.hash, r.seq + 1, count + 1, r.seq
        if len(rows) < batch:
            break
    head = s.get(AuditHeadRow, 1)
    if head is not None and (head.seq != count or head.hash != prev):
        return ChainCheck(False, count, prev, count + 1, "entries after the last one are missing")
    return ChainCheck(True, count, prev)
