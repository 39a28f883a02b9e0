"""Enrolled agents, their one-use enrollment tokens, and each agent's job ``seq`` counter."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import JSON, ForeignKey, Integer, String, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from byoc_agent.protocol.errors import NotFoundError
from control_plane.errors import UnauthenticatedError
from control_plane.store.base import Base, UTCDateTime, new_id, utcnow
from control_plane.store.credentials import mint_enrollment_token, sha256_hex
from control_plane.store.pages import Page, page_of
from control_plane.store.tenants import get_tenant


class Agent(Base):
    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    public_key: Mapped[str] = mapped_column(String(64))
    data_plane_url: Mapped[str] = mapped_column(String(512))
    runtimes: Mapped[list[str]] = mapped_column(JSON)
    templates: Mapped[list[str]] = mapped_column(JSON)
    version: Mapped[str] = mapped_column(String(64), default="")
    cpu_total: Mapped[int] = mapped_column(Integer)
    cpu_free: Mapped[int] = mapped_column(Integer)
    memory_mb_total: Mapped[int] = mapped_column(Integer)
    memory_mb_free: Mapped[int] = mapped_column(Integer)
    sandboxes: Mapped[int] = mapped_column(Integer, default=0)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Customer co-signing as the agent reported it at enrollment (the agent enforces it;
    # the control plane uses it to hold such jobs for a cosignature instead of sending).
    cosign_rules: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    cosigner_keys: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    agent_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


@dataclass(frozen=True, slots=True)
class Capacity:
    cpu_total: int
    cpu_free: int
    memory_mb_total: int
    memory_mb_free: int
    sandboxes: int


@dataclass(frozen=True, slots=True)
class AgentRecord:
    id: str
    tenant_id: str
    name: str
    public_key: str
    data_plane_url: str
    runtimes: tuple[str, ...]
    templates: tuple[str, ...]
    version: str
    capacity: Capacity
    last_heartbeat_at: datetime | None
    enrolled_at: datetime
    revoked_at: datetime | None
    cosign_rules: tuple[str, ...] = ()
    cosigner_keys: tuple[str, ...] = ()

    def is_online(self, now: datetime, offline_after_s: float) -> bool:
        return (
            self.revoked_at is None
            and self.last_heartbeat_at is not None
            and now - self.last_heartbeat_at <= timedelta(seconds=offline_after_s)
        )


@dataclass(frozen=True, slots=True)
class AgentReport:
    """What an agent says about itself at enrollment and in every heartbeat."""

    data_plane_url: str
    runtimes: tuple[str, ...]
    templates: tuple[str, ...]
    capacity: Capacity
    version: str = ""


@dataclass(frozen=True, slots=True)
class IssuedEnrollmentToken:
    token: str
    tenant_id: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"IssuedEnrollmentToken(tenant_id={self.tenant_id!r})"


def _agent(row: Agent) -> AgentRecord:
    return AgentRecord(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        public_key=row.public_key,
        data_plane_url=row.data_plane_url,
        runtimes=tuple(row.runtimes),
        templates=tuple(row.templates),
        version=row.version,
        capacity=Capacity(
            cpu_total=row.cpu_total,
            cpu_free=row.cpu_free,
            memory_mb_total=row.memory_mb_total,
            memory_mb_free=row.memory_mb_free,
            sandboxes=row.sandboxes,
        ),
        last_heartbeat_at=row.last_heartbeat_at,
        enrolled_at=row.enrolled_at,
        revoked_at=row.revoked_at,
        cosign_rules=tuple(row.cosign_rules or ()),
        cosigner_keys=tuple(row.cosigner_keys or ()),
    )


def _apply_report(row: Agent, report: AgentReport) -> None:
    row.data_plane_url = report.data_plane_url
    row.runtimes = list(report.runtimes)
    row.templates = list(report.templates)
    row.version = report.version
    row.cpu_total = report.capacity.cpu_total
    row.cpu_free = report.capacity.cpu_free
    row.memory_mb_total = report.capacity.memory_mb_total
    row.memory_mb_free = report.capacity.memory_mb_free
    row.sandboxes = report.capacity.sandboxes


def create_enrollment_token(s: Session, tenant_id: str, ttl_s: int) -> IssuedEnrollmentToken:
    get_tenant(s, tenant_id)
    secret = mint_enrollment_token()
    now = utcnow()
    row = EnrollmentToken(
        id=new_id("et"),
        tenant_id=tenant_id,
        token_hash=secret.hash,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
    )
    s.add(row)
    s.flush()
    return IssuedEnrollmentToken(token=secret.text, tenant_id=tenant_id, expires_at=row.expires_at)


def enroll(
    s: Session, token: str, name: str, public_key: str, report: AgentReport,
    *, cosign_rules: tuple[str, ...] = (), cosigner_keys: tuple[str, ...] = (),
) -> AgentRecord:
    """Consume a one-use enrollment token and register the agent with its public key."""
    now = utcnow()
    agent_id = new_id("a")
    consumed = s.execute(
        update(EnrollmentToken)
        .where(
            EnrollmentToken.token_hash == sha256_hex(token),
            EnrollmentToken.used_at.is_(None),
            EnrollmentToken.expires_at > now,
        )
        .values(used_at=now, agent_id=agent_id)
        .returning(EnrollmentToken.tenant_id)
    ).scalar_one_or_none()
    if consumed is None:
        raise UnauthenticatedError("enrollment token is unknown, expired or already used")
    row = Agent(
        id=agent_id,
        tenant_id=consumed,
        name=name,
        public_key=public_key,
        last_seq=0,
        enrolled_at=now,
        data_plane_url="",
        runtimes=[],
        templates=[],
        cpu_total=0,
        cpu_free=0,
        memory_mb_total=0,
        memory_mb_free=0,
        sandboxes=0,
        cosign_rules=list(cosign_rules),
        cosigner_keys=list(cosigner_keys),
    )
    _apply_report(row, report)
    s.add(row)
    s.flush()
    return _agent(row)


def get_agent(s: Session, agent_id: str, *, tenant_id: str | None = None) -> AgentRecord:
    """An agent by id; with ``tenant_id`` set, another tenant's agent is not found."""
    row = s.get(Agent, agent_id)
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        raise NotFoundError("no such agent", agent_id=agent_id)
    return _agent(row)


def list_agents(
    s: Session, *, tenant_id: str | None, after: str | None, limit: int
) -> Page[AgentRecord]:
    q = select(Agent).order_by(Agent.id).limit(limit + 1)
    if tenant_id is not None:
        q = q.where(Agent.tenant_id == tenant_id)
    if after is not None:
        q = q.where(Agent.id > after)
    return page_of([_agent(r) for r in s.scalars(q)], limit, lambda a: a.id)


def tenant_agents(s: Session, tenant_id: str) -> list[AgentRecord]:
    q = select(Agent).where(Agent.tenant_id == tenant_id, Agent.revoked_at.is_(None))
    return [_agent(r) for r in s.scalars(q.order_by(Agent.id))]


def record_heartbeat(s: Session, agent_id: str, report: AgentReport) -> None:
    row = s.get(Agent, agent_id)
    if row is None:
        raise NotFoundError("no such agent", agent_id=agent_id)
    _apply_report(row, report)
    row.last_heartbeat_at = utcnow()


def next_seq(s: Session, agent_id: str) -> int:
    """Allocate the agent's next job ``seq`` (row-locked by the UPDATE until commit)."""
    seq = s.execute(
        update(Agent)
        .where(Agent.id == agent_id)
        .values(last_seq=Agent.last_seq + 1)
        .returning(Agent.last_seq)
    ).scalar_one_or_none()
    if seq is None:
        raise NotFoundError("no such agent", agent_id=agent_id)
    return int(seq)
