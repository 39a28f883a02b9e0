"""Sandboxes (allow-listed metadata only), their labels, and every state change they made.

Never stored here: env values, command output, file contents. A sandbox row holds what
the scheduler and billing need; ``metadata`` holds the caller's labels for filtering.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, exists, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from byoc_agent.protocol.errors import NotFoundError, SandboxNotFoundError
from byoc_agent.protocol.messages import TERMINAL_STATES, SandboxState
from byoc_agent.runtimes.base import can_transition
from control_plane.store.base import Base, UTCDateTime, new_id, utcnow
from control_plane.store.pages import Page, page_of

LIVE_STATES = (SandboxState.PENDING.value, SandboxState.RUNNING.value)


class Sandbox(Base):
    __tablename__ = "sandboxes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"), index=True)
    template: Mapped[str] = mapped_column(String(64))
    isolation: Mapped[str] = mapped_column(String(16), default="gvisor", server_default="gvisor")
    cpu: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    timeout_s: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)
    end_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The egress allow-list the sandbox was created with (a policy, not customer data;
    # ADR 0027). NULL (rows before 0010) and [] both mean no network.
    egress: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class SandboxLabel(Base):
    """One ``metadata`` key/value of a sandbox, a row each so filters are plain SQL."""

    __tablename__ = "sandbox_metadata"
    __table_args__ = (Index("ix_sandbox_metadata_key_value", "key", "value"),)

    sandbox_id: Mapped[str] = mapped_column(ForeignKey("sandboxes.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class SandboxStateChange(Base):
    __tablename__ = "sandbox_state_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sandbox_id: Mapped[str] = mapped_column(ForeignKey("sandboxes.id"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    source: Mapped[str | None] = mapped_column(String(64), nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())


@dataclass(frozen=True, slots=True)
class NewSandbox:
    tenant_id: str
    agent_id: str
    template: str
    cpu: int
    memory_mb: int
    timeout_s: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    isolation: str = "gvisor"
    egress: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SandboxRecord:
    id: str
    tenant_id: str
    agent_id: str
    template: str
    cpu: int
    memory_mb: int
    timeout_s: int
    state: SandboxState
    end_reason: str | None
    metadata: Mapping[str, str]
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    expires_at: datetime | None
    isolation: str = "gvisor"
    egress: tuple[str, ...] = ()

    @property
    def terminal(self) -> bool:
        """Ended for good: killed, timed out or failed (a paused sandbox has not ended)."""
        return self.state in TERMINAL_STATES


@dataclass(frozen=True, slots=True)
class StateChangeRecord:
    from_state: SandboxState | None
    to_state: SandboxState
    reason: str | None
    source: str | None
    at: datetime


def _labels(s: Session, sandbox_id: str) -> dict[str, str]:
    q = select(SandboxLabel).where(SandboxLabel.sandbox_id == sandbox_id)
    return {r.key: r.value for r in s.scalars(q)}


def _record(row: Sandbox, labels: Mapping[str, str]) -> SandboxRecord:
    return SandboxRecord(
        id=row.id,
        tenant_id=row.tenant_id,
        agent_id=row.agent_id,
        template=row.template,
        cpu=row.cpu,
        memory_mb=row.memory_mb,
        timeout_s=row.timeout_s,
        state=SandboxState(row.state),
        end_reason=row.end_reason,
        metadata=dict(labels),
        created_at=row.created_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
        expires_at=row.expires_at,
        isolation=row.isolation,
        egress=tuple(row.egress or ()),
    )


def create_sandbox(s: Session, new: NewSandbox) -> SandboxRecord:
    now = utcnow()
    row = Sandbox(
        id=new_id("sb"),
        tenant_id=new.tenant_id,
        agent_id=new.agent_id,
        template=new.template,
        isolation=new.isolation,
        egress=list(new.egress),
        cpu=new.cpu,
        memory_mb=new.memory_mb,
        timeout_s=new.timeout_s,
        state=SandboxState.PENDING.value,
        created_at=now,
    )
    s.add(row)
    s.flush()
    for key, value in new.metadata.items():
        s.add(SandboxLabel(sandbox_id=row.id, key=key, value=value))
    s.add(
        SandboxStateChange(
            sandbox_id=row.id, from_state=None, to_state=row.state, reason=None, at=now
        )
    )
    s.flush()
    return _record(row, new.metadata)


def get_sandbox(s: Session, sandbox_id: str, *, tenant_id: str | None) -> SandboxRecord:
    """A sandbox by id; with ``tenant_id`` set, another tenant's sandbox is not found."""
    row = s.get(Sandbox, sandbox_id)
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        raise SandboxNotFoundError("no such sandbox", sandbox_id=sandbox_id)
    return _record(row, _labels(s, row.id))


def list_sandboxes(
    s: Session,
    *,
    tenant_id: str,
    state: SandboxState | Collection[SandboxState] | None,
    metadata: Mapping[str, str],
    after: str | None,
    limit: int,
) -> Page[SandboxRecord]:
    """The tenant's sandboxes in id order; ``state`` is one state or any of several."""
    q = select(Sandbox).where(Sandbox.tenant_id == tenant_id)
    if isinstance(state, SandboxState):
        q = q.where(Sandbox.state == state.value)
    elif state is not None:
        q = q.where(Sandbox.state.in_(sorted(st.value for st in state)))
    for key, value in metadata.items():
        q = q.where(
            exists().where(
                SandboxLabel.sandbox_id == Sandbox.id,
                SandboxLabel.key == key,
                SandboxLabel.value == value,
            )
        )
    if after is not None:
        q = q.where(Sandbox.id > after)
    rows = list(s.scalars(q.order_by(Sandbox.id).limit(limit + 1)))
    records = [_record(r, _labels(s, r.id)) for r in rows]
    return page_of(records, limit, lambda r: r.id)


def transition(
    s: Session,
    sandbox_id: str,
    to: SandboxState,
    *,
    reason: str | None = None,
    source: str | None = None,
    started_at: datetime | None = None,
    ended_at: datetime | None = None,
) -> bool:
    """Move a sandbox to ``to`` if the state machine allows it; False (no change) otherwise."""
    row = s.get(Sandbox, sandbox_id, with_for_update=True)
    if row is None:
        raise NotFoundError("no such sandbox", sandbox_id=sandbox_id)
    current = SandboxState(row.state)
    if current == to or not can_transition(current, to):
        return False
    now = utcnow()
    row.state = to.value
    if to == SandboxState.RUNNING:
        if current == SandboxState.PENDING or row.started_at is None:  # not on a resume
            row.started_at = started_at or now
    elif to == SandboxState.PAUSED:
        pass  # neither started nor ended: the state history records when
    elif to != SandboxState.PENDING:
        row.ended_at = ended_at or now
        row.end_reason = reason
    s.add(
        SandboxStateChange(
            sandbox_id=sandbox_id,
            from_state=current.value,
            to_state=to.value,
            reason=reason,
            source=source,
            at=now,
        )
    )
    return True


def set_expiry(
    s: Session, sandbox_id: str, timeout_s: int, expires_at: datetime | None
) -> None:
    """Set the timeout; ``expires_at`` is None while the sandbox is paused (its clock stops)."""
    row = s.get(Sandbox, sandbox_id)
    if row is None:
        raise NotFoundError("no such sandbox", sandbox_id=sandbox_id)
    row.timeout_s = timeout_s
    row.expires_at = expires_at


def history(s: Session, sandbox_id: str) -> list[StateChangeRecord]:
    q = (
        select(SandboxStateChange)
        .where(SandboxStateChange.sandbox_id == sandbox_id)
        .order_by(SandboxStateChange.id)
    )
    return [
        StateChangeRecord(
            from_state=SandboxState(r.from_state) if r.from_state else None,
            to_state=SandboxState(r.to_state),
            reason=r.reason,
            source=r.source,
            at=r.at,
        )
        for r in s.scalars(q)
    ]


def reserved_since(s: Session, agent_id: str, since: datetime | None) -> tuple[int, int]:
    """CPU and memory of live sandboxes placed on an agent after its last heartbeat."""
    q = select(
        func.coalesce(func.sum(Sandbox.cpu), 0), func.coalesce(func.sum(Sandbox.memory_mb), 0)
    )
    q = q.where(Sandbox.agent_id == agent_id, Sandbox.state.in_(LIVE_STATES))
    if since is not None:
        q = q.where(Sandbox.created_at >= since)
    cpu, mem = s.execute(q).one()
    return int(cpu), int(mem)
