"""Jobs the control plane issued: kind, target, seq and outcome — never the job body."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from byoc_agent.protocol.errors import NotFoundError
from byoc_agent.protocol.messages import JobKind, JobStatus
from control_plane.store.base import Base, UTCDateTime, utcnow

FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.REJECTED})
MAX_ERROR_MESSAGE = 500


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("agent_id", "seq", name="uq_jobs_agent_seq"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), index=True)
    sandbox_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(String(MAX_ERROR_MESSAGE), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    tenant_id: str
    agent_id: str
    sandbox_id: str | None
    kind: JobKind
    seq: int
    status: JobStatus
    error_code: str | None
    error_message: str | None
    created_at: datetime
    delivered_at: datetime | None
    completed_at: datetime | None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


def _record(row: JobRow) -> JobRecord:
    return JobRecord(
        id=row.id,
        tenant_id=row.tenant_id,
        agent_id=row.agent_id,
        sandbox_id=row.sandbox_id,
        kind=JobKind(row.kind),
        seq=row.seq,
        status=JobStatus(row.status),
        error_code=row.error_code,
        error_message=row.error_message,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
        completed_at=row.completed_at,
    )


def create_job(
    s: Session,
    *,
    job_id: str,
    tenant_id: str,
    agent_id: str,
    sandbox_id: str | None,
    kind: JobKind,
    seq: int,
) -> JobRecord:
    row = JobRow(
        id=job_id,
        tenant_id=tenant_id,
        agent_id=agent_id,
        sandbox_id=sandbox_id,
        kind=kind.value,
        seq=seq,
        status=JobStatus.QUEUED.value,
        created_at=utcnow(),
    )
    s.add(row)
    s.flush()
    return _record(row)


def get_job(s: Session, job_id: str, *, tenant_id: str | None) -> JobRecord:
    row = s.get(JobRow, job_id)
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        raise NotFoundError("no such job", job_id=job_id)
    return _record(row)


def mark_delivered(s: Session, job_id: str) -> None:
    """queued → delivered, in one conditional UPDATE: a result applied concurrently (the
    agent can answer before the publisher's ack is processed) is never overwritten."""
    s.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status == JobStatus.QUEUED.value)
        .values(status=JobStatus.DELIVERED.value, delivered_at=utcnow())
    )


def complete_job(
    s: Session,
    job_id: str,
    status: JobStatus,
    *,
    error_code: str | None = None,
    error_message: str | None = None,
) -> bool:
    """Record a job's outcome once; a second outcome for the same job changes nothing."""
    row = s.get(JobRow, job_id, with_for_update=True)
    if row is None:
        raise NotFoundError("no such job", job_id=job_id)
    if JobStatus(row.status) in FINAL_STATUSES:
        return False
    row.status = status.value
    row.error_code = error_code[:64] if error_code else None
    row.error_message = error_message[:MAX_ERROR_MESSAGE] if error_message else None
    row.completed_at = utcnow()
    if row.delivered_at is None:
        row.delivered_at = row.completed_at
    return True
