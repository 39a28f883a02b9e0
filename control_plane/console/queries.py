"""Read-only queries behind the console pages, across tenants, newest first.

The API's store functions serve one tenant in id order; the platform team wants every
tenant and the latest first, so these use keyset pages on descending time-ordered ids
(``after`` is the last id of the previous page). Nothing here writes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from billing import PriceBook, Resource
from byoc_agent.protocol.messages import JobStatus, SandboxState
from control_plane.store import agents, jobs, sandboxes, tenants
from control_plane.store.agents import AgentRecord
from control_plane.store.jobs import JobRecord
from control_plane.store.pages import Page, page_of
from control_plane.store.sandboxes import SandboxRecord
from control_plane.store.tenants import TenantRecord
from control_plane.store.usage import UsageRow

HOUR = Decimal(3600)
MIB_PER_GIB = Decimal(1024)


@dataclass(frozen=True, slots=True)
class Overview:
    agents_online: int
    agents_total: int
    sandboxes_running: int
    sandboxes_pending: int
    tenants: int
    vcpu_hours_today: Decimal
    gib_hours_today: Decimal
    cost_today: Decimal
    jobs_rejected_today: int


@dataclass(frozen=True, slots=True)
class HostRow:
    """A machine sandboxes ran on, as the meters named it, and the agent that ran them."""

    host: str
    agent_id: str
    tenant_id: str
    sandboxes: int
    vcpu_hours: Decimal
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class DailyUsage:
    """One tenant's usage on one UTC day, priced at the rates in force (before rounding)."""

    tenant_id: str
    day: date
    vcpu_hours: Decimal
    gib_hours: Decimal
    cost: Decimal


def tenant_names(s: Session) -> dict[str, str]:
    return {t.id: t.name for t in s.scalars(select(tenants.Tenant))}


def tenant_page(s: Session, *, after: str | None, limit: int) -> Page[TenantRecord]:
    q = select(tenants.Tenant).order_by(tenants.Tenant.id.desc()).limit(limit + 1)
    if after is not None:
        q = q.where(tenants.Tenant.id < after)
    rows = [tenants.get_tenant(s, r.id) for r in s.scalars(q)]
    return page_of(rows, limit, lambda r: r.id)


def agent_page(s: Session, *, after: str | None, limit: int) -> Page[AgentRecord]:
    q = select(agents.Agent.id).order_by(agents.Agent.id.desc()).limit(limit + 1)
    if after is not None:
        q = q.where(agents.Agent.id < after)
    return page_of([agents.get_agent(s, i) for i in s.scalars(q)], limit, lambda a: a.id)


def sandbox_page(
    s: Session,
    *,
    tenant_id: str | None,
    state: SandboxState | None,
    metadata: Mapping[str, str],
    after: str | None,
    limit: int,
) -> Page[SandboxRecord]:
    model, label = sandboxes.Sandbox, sandboxes.SandboxLabel
    q = select(model.id)
    if tenant_id is not None:
        q = q.where(model.tenant_id == tenant_id)
    if state is not None:
        q = q.where(model.state == state.value)
    for key, value in metadata.items():
        q = q.where(
            exists().where(label.sandbox_id == model.id, label.key == key, label.value == value)
        )
    if after is not None:
        q = q.where(model.id < after)
    ids = list(s.scalars(q.order_by(model.id.desc()).limit(limit + 1)))
    records = [sandboxes.get_sandbox(s, i, tenant_id=None) for i in ids]
    return page_of(records, limit, lambda r: r.id)


def job_page(
    s: Session,
    *,
    status: JobStatus | None,
    tenant_id: str | None,
    sandbox_id: str | None,
    after: str | None,
    limit: int,
) -> Page[JobRecord]:
    row = jobs.JobRow
    q = select(row.id)
    if status is not None:
        q = q.where(row.status == status.value)
    if tenant_id is not None:
        q = q.where(row.tenant_id == tenant_id)
    if sandbox_id is not None:
        q = q.where(row.sandbox_id == sandbox_id)
    if after is not None:
        q = q.where(row.id < after)
    ids = list(s.scalars(q.order_by(row.id.desc()).limit(limit + 1)))
    return page_of([jobs.get_job(s, i, tenant_id=None) for i in ids], limit, lambda j: j.id)


def _overlap_seconds(start: datetime, end: datetime, lo: datetime, hi: datetime) -> int:
    return max(0, int((min(end, hi) - max(start, lo)).total_seconds()))


def overview(
    s: Session, *, now: datetime, offline_after_s: float, pricebook: PriceBook
) -> Overview:
    every_agent = [agents.get_agent(s, i) for i in s.scalars(select(agents.Agent.id))]
    online = sum(1 for a in every_agent if a.is_online(now, offline_after_s))

    def count_state(state: SandboxState) -> int:
        q = select(func.count()).where(sandboxes.Sandbox.state == state.value)
        return int(s.execute(q).scalar_one())

    day_start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    daily = daily_usage(s, start=day_start, end=day_start + timedelta(days=1), pricebook=pricebook)
    rejected = s.execute(
        select(func.count()).where(
            jobs.JobRow.status == JobStatus.REJECTED.value, jobs.JobRow.created_at >= day_start
        )
    ).scalar_one()
    return Overview(
        agents_online=online,
        agents_total=len(every_agent),
        sandboxes_running=count_state(SandboxState.RUNNING),
        sandboxes_pending=count_state(SandboxState.PENDING),
        tenants=int(s.execute(select(func.count()).select_from(tenants.Tenant)).scalar_one()),
        vcpu_hours_today=sum((d.vcpu_hours for d in daily), Decimal(0)),
        gib_hours_today=sum((d.gib_hours for d in daily), Decimal(0)),
        cost_today=sum((d.cost for d in daily), Decimal(0)),
        jobs_rejected_today=int(rejected),
    )


def daily_usage(
    s: Session, *, start: datetime, end: datetime, pricebook: PriceBook
) -> list[DailyUsage]:
    """Usage overlapping ``[start, end)`` split at UTC midnights, per tenant and day.

    Cost is vCPU-hours and GiB-hours times the tenant's rate in force at the start of the
    day, unrounded: an estimate for the chart. The invoice is the authority on money.
    """
    vcpu_s: dict[tuple[str, date], int] = defaultdict(int)
    mib_s: dict[tuple[str, date], int] = defaultdict(int)
    q = select(UsageRow).where(UsageRow.start < end, UsageRow.end > start)
    for r in s.scalars(q.order_by(UsageRow.seq)):
        lo, hi = max(r.start, start), min(r.end, end)
        day = lo.replace(hour=0, minute=0, second=0, microsecond=0)
        while day < hi:
            nxt = day + timedelta(days=1)
            seconds = _overlap_seconds(lo, hi, day, nxt)
            if seconds:
                vcpu_s[(r.tenant_id, day.date())] += seconds * r.vcpu
                mib_s[(r.tenant_id, day.date())] += seconds * r.memory_mb
            day = nxt
    out = []
    for key in sorted(vcpu_s.keys() | mib_s.keys()):
        tenant_id, day_ = key
        at = datetime(day_.year, day_.month, day_.day, tzinfo=UTC)
        vcpu_h = Decimal(vcpu_s[key]) / HOUR
        gib_h = Decimal(mib_s[key]) / MIB_PER_GIB / HOUR
        cost = vcpu_h * pricebook.rate_at(tenant_id, Resource.VCPU, None, at).per_hour
        cost += gib_h * pricebook.rate_at(tenant_id, Resource.MEMORY, None, at).per_hour
        out.append(DailyUsage(tenant_id, day_, vcpu_h, gib_h, cost))
    return out


def hosts(s: Session, *, since: datetime) -> list[HostRow]:
    """Hosts the meters reported since ``since``, busiest first."""
    q = (
        select(
            UsageRow.host,
            UsageRow.agent_id,
            UsageRow.tenant_id,
            func.count(func.distinct(UsageRow.sandbox_id)),
            func.max(UsageRow.end),
        )
        .where(UsageRow.end > since)
        .group_by(UsageRow.host, UsageRow.agent_id, UsageRow.tenant_id)
    )
    out = []
    for host, agent_id, tenant_id, count, last in s.execute(q):
        seconds = 0
        usage_q = select(UsageRow).where(
            UsageRow.host == host, UsageRow.agent_id == agent_id, UsageRow.end > since
        )
        for r in s.scalars(usage_q):
            seconds += _overlap_seconds(r.start, r.end, since, r.end) * r.vcpu
        last_seen = last if last.tzinfo is not None else last.replace(tzinfo=UTC)
        out.append(
            HostRow(host, agent_id, tenant_id, int(count), Decimal(seconds) / HOUR, last_seen)
        )
    return sorted(out, key=lambda h: (-h.vcpu_hours, h.host, h.agent_id))


def agent_hosts(s: Session) -> dict[str, list[str]]:
    """Every host name each agent's meter has reported, sorted."""
    q = select(UsageRow.agent_id, UsageRow.host).distinct()
    found: dict[str, list[str]] = defaultdict(list)
    for agent_id, host in s.execute(q):
        found[agent_id].append(host)
    return {k: sorted(v) for k, v in found.items()}
