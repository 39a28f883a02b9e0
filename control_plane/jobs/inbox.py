"""Results, events, usage and heartbeats from agents: verified first, then applied idempotently.

Every message is checked against the *sending* agent's enrolled public key, and the
subject's tenant/agent must match both the payload and the agent's database record,
before any state changes. Anything that fails is logged (reason only, never the
payload) and dropped; a redelivered message changes nothing twice. Usage records are
stored once per (tenant, agent, record_id): a redelivery is acknowledged and ignored, the
same id with different content is logged as a conflict and ignored (the first one stands),
and late or out-of-order records are accepted as they come.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from byoc_agent.protocol import subjects
from byoc_agent.protocol.errors import EnvelopeRejectedError, NotFoundError
from byoc_agent.protocol.messages import (
    EVENT_TYP,
    HEARTBEAT_TYP,
    RESULT_TYP,
    USAGE_TYP,
    Heartbeat,
    JobKind,
    JobResult,
    JobStatus,
    SandboxEvent,
    SandboxReport,
    SandboxState,
    UsageReport,
)
from byoc_agent.protocol.signing import key_id, public_key_from_text
from byoc_agent.protocol.verify import CLOCK_SKEW_S, Keyring, verify_model
from byoc_agent.runtimes.base import EndReason
from control_plane.jobs.waiters import JobOutcome, JobWaiters
from control_plane.store import Database, agents, audit, jobs, sandboxes, usage, utcnow
from control_plane.store.agents import AgentRecord, AgentReport, Capacity
from control_plane.store.audit import AuditEvent
from control_plane.store.usage import Ingested, Usage
from control_plane.transport.base import Disposition

log = structlog.get_logger("control_plane.inbox")

END_REASONS = frozenset(r.value for r in EndReason)
MAX_LIST = 256
MAX_ITEM = 64
MAX_URL = 512


class ForeignMessageError(ValueError):
    """A verified message that does not belong to its sender (ids, sandbox, job)."""


def agent_keyring(agent: AgentRecord) -> Keyring:
    """The sender's key, trusted under its key id (and, for convenience, its agent id)."""
    public = public_key_from_text(agent.public_key)
    return Keyring(keys={key_id(public): public, agent.id: public})


def _when(ts: float | None) -> datetime | None:
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _usage_of(report: UsageReport) -> Usage:
    """The record to store, or :class:`ForeignMessageError` when it cannot be billed."""
    start, end = _when(report.start), _when(report.end)
    if start is None or end is None or end <= start:
        raise ForeignMessageError("usage interval is empty or out of range")
    if bool(report.gpu_count) != bool(report.gpu_model):
        raise ForeignMessageError("usage names GPUs without a model, or a model without GPUs")
    if not report.template or not report.host:
        raise ForeignMessageError("usage without a template or host")
    return Usage(
        tenant_id=report.tenant_id,
        agent_id=report.agent_id,
        record_id=report.record_id,
        sandbox_id=report.sandbox_id,
        start=start,
        end=end,
        vcpu=report.vcpu,
        memory_mb=report.memory_mb,
        gpu_count=report.gpu_count,
        gpu_model=report.gpu_model,
        isolation=report.isolation,
        template=report.template,
        host=report.host,
    )


def _end_reason(report: SandboxReport | None, default: str) -> str:
    if report is not None and report.end_reason in END_REASONS:
        return report.end_reason
    return default


class AgentInbox:
    """Implements :class:`~control_plane.transport.base.Inbox` over the database."""

    def __init__(self, db: Database, waiters: JobWaiters) -> None:
        self._db = db
        self._waiters = waiters

    async def handle(self, subject: str, data: bytes) -> Disposition:
        try:
            tenant_id, agent_id, kind = subjects.parse_agent_subject(subject)
        except ValueError:
            log.warning("message_dropped", reason="bad_subject")
            return Disposition.DROPPED
        bound = log.bind(tenant_id=tenant_id, agent_id=agent_id, kind=kind)
        try:
            agent = await self._db.run(lambda s: agents.get_agent(s, agent_id))
            if agent.tenant_id != tenant_id or agent.revoked_at is not None:
                raise ForeignMessageError("agent is not enrolled for this tenant")
            keyring = agent_keyring(agent)
            if kind == "results":
                await self._result(agent, keyring, data)
            elif kind == "events":
                await self._event(agent, keyring, data)
            elif kind == "usage":
                await self._usage(agent, keyring, data)
            elif kind == "heartbeat":
                await self._heartbeat(agent, keyring, data)
            else:
                raise ForeignMessageError(f"unknown subject kind {kind[:32]!r}")
        except EnvelopeRejectedError as e:
            bound.warning("message_dropped", reason=e.reason.value, detail=e.message[:200])
            return await self._dropped(tenant_id, agent_id, kind, e.reason.value, e.message)
        except (NotFoundError, ForeignMessageError, ValueError) as e:
            bound.warning("message_dropped", reason="foreign", detail=str(e)[:200])
            return await self._dropped(tenant_id, agent_id, kind, "foreign", str(e))
        except SQLAlchemyError as e:
            bound.error("message_retry", error=type(e).__name__)
            return Disposition.RETRY
        return Disposition.APPLIED

    async def _dropped(
        self, tenant_id: str, agent_id: str, kind: str, reason: str, detail: str
    ) -> Disposition:
        """Audit a refused agent message (not heartbeats: stale ones are routine). The
        tenant and agent are only what the subject claims, so they go in the detail."""
        if kind != "heartbeat":
            event = AuditEvent(
                action="agent_message.rejected", actor=f"agent:{agent_id[:64]}",
                subject=kind[:32],
                detail={"reason": reason, "claimed_tenant": tenant_id[:64],
                        "detail": detail[:200]},
            )
            try:
                await self._db.run(lambda s: audit.append(s, event))
            except SQLAlchemyError as e:
                log.error("message_retry", error=type(e).__name__)
                return Disposition.RETRY
        return Disposition.DROPPED

    @staticmethod
    def _check_ids(agent: AgentRecord, tenant_id: str, agent_id: str) -> None:
        if tenant_id != agent.tenant_id or agent_id != agent.id:
            raise ForeignMessageError("payload names another tenant or agent")

    async def _result(self, agent: AgentRecord, keyring: Keyring, data: bytes) -> None:
        _, result = verify_model(data, typ=RESULT_TYP, model=JobResult, keyring=keyring)
        self._check_ids(agent, result.tenant_id, result.agent_id)
        status = JobStatus(result.status)
        code = result.error.code if result.error else None
        message = result.error.message if result.error else None

        def apply(s: Session) -> JobOutcome:
            job = jobs.get_job(s, result.job_id, tenant_id=agent.tenant_id)
            if job.agent_id != agent.id:
                raise ForeignMessageError("result for another agent's job")
            if not jobs.complete_job(s, job.id, status, error_code=code, error_message=message):
                done = jobs.get_job(s, job.id, tenant_id=None)
                return JobOutcome(done.id, done.status, done.error_code, done.error_message)
            audit.append(s, _result_event(agent, job.id, status, message))
            report = result.sandbox
            if report is not None and report.sandbox_id != job.sandbox_id:
                report = None
            if job.sandbox_id is not None:
                _apply_job_to_sandbox(s, job.kind, job.sandbox_id, job.id, status, code, report)
            return JobOutcome(job.id, status, code, message)

        outcome = await self._db.run(apply)
        log.info(
            "result_applied",
            job_id=outcome.job_id,
            tenant_id=agent.tenant_id,
            agent_id=agent.id,
            status=outcome.status.value,
        )
        self._waiters.resolve(outcome)

    async def _event(self, agent: AgentRecord, keyring: Keyring, data: bytes) -> None:
        _, event = verify_model(data, typ=EVENT_TYP, model=SandboxEvent, keyring=keyring)
        self._check_ids(agent, event.tenant_id, event.agent_id)
        report = event.sandbox

        def apply(s: Session) -> bool:
            sandbox = sandboxes.get_sandbox(s, report.sandbox_id, tenant_id=agent.tenant_id)
            if sandbox.agent_id != agent.id:
                raise ForeignMessageError("event for another agent's sandbox")
            reason = _end_reason(report, report.state.value)
            return sandboxes.transition(
                s,
                sandbox.id,
                report.state,
                reason=None if report.state == SandboxState.RUNNING else reason,
                source=event.event_id,
                started_at=_when(report.started_at),
                ended_at=_when(report.ended_at),
            )

        changed = await self._db.run(apply)
        log.info(
            "event_applied",
            sandbox_id=report.sandbox_id,
            tenant_id=agent.tenant_id,
            agent_id=agent.id,
            state=report.state.value,
            changed=changed,
        )

    async def _usage(self, agent: AgentRecord, keyring: Keyring, data: bytes) -> None:
        _, report = verify_model(data, typ=USAGE_TYP, model=UsageReport, keyring=keyring)
        self._check_ids(agent, report.tenant_id, report.agent_id)
        record = _usage_of(report)

        def apply(s: Session) -> Ingested:
            sandbox = sandboxes.get_sandbox(s, record.sandbox_id, tenant_id=agent.tenant_id)
            if sandbox.agent_id != agent.id:
                raise ForeignMessageError("usage for another agent's sandbox")
            return usage.record_usage(s, record, received_at=utcnow())

        outcome = await self._db.run(apply)
        fields = {
            "tenant_id": agent.tenant_id,
            "agent_id": agent.id,
            "sandbox_id": record.sandbox_id,
            "record_id": record.record_id,
            "outcome": outcome.value,
        }
        if outcome is Ingested.CONFLICT:
            log.warning("usage_conflict", **fields)
        else:
            log.info("usage_recorded", **fields)

    async def _heartbeat(self, agent: AgentRecord, keyring: Keyring, data: bytes) -> None:
        _, hb = verify_model(data, typ=HEARTBEAT_TYP, model=Heartbeat, keyring=keyring)
        self._check_ids(agent, hb.tenant_id, hb.agent_id)
        if abs(time.time() - hb.at) > CLOCK_SKEW_S:
            raise ForeignMessageError("heartbeat is stale or from the future")
        if (
            len(hb.data_plane_url) > MAX_URL
            or len(hb.templates) > MAX_LIST
            or len(hb.runtimes) > MAX_LIST
            or any(len(x) > MAX_ITEM for x in (*hb.templates, *hb.runtimes))
            or len(hb.version) > MAX_ITEM
        ):
            raise ForeignMessageError("heartbeat fields over their limits")
        report = AgentReport(
            data_plane_url=hb.data_plane_url,
            runtimes=tuple(hb.runtimes),
            templates=tuple(hb.templates),
            version=hb.version,
            capacity=Capacity(
                cpu_total=hb.capacity.cpu_total,
                cpu_free=hb.capacity.cpu_free,
                memory_mb_total=hb.capacity.memory_mb_total,
                memory_mb_free=hb.capacity.memory_mb_free,
                sandboxes=hb.capacity.sandboxes,
            ),
        )
        await self._db.run(lambda s: agents.record_heartbeat(s, agent.id, report))


def _result_event(
    agent: AgentRecord, job_id: str, status: JobStatus, message: str | None
) -> AuditEvent:
    """A rejected job names the agent's reason (the message starts ``<reason>: ``)."""
    actor = f"agent:{agent.id}"
    if status == JobStatus.REJECTED:
        reason = (message or "").partition(":")[0].strip() or "unknown"
        return AuditEvent(action="job.rejected", actor=actor, tenant_id=agent.tenant_id,
                          subject=job_id, detail={"reason": reason, "message": message or ""})
    return AuditEvent(action="job.verified", actor=actor, tenant_id=agent.tenant_id,
                      subject=job_id, detail={"outcome": status.value})


def _apply_job_to_sandbox(
    s: Session,
    kind: JobKind,
    sandbox_id: str,
    job_id: str,
    status: JobStatus,
    code: str | None,
    report: SandboxReport | None,
) -> None:
    """What a job's outcome means for its sandbox (set_timeout is applied by the caller)."""
    if kind == JobKind.CREATE_SANDBOX:
        if status == JobStatus.SUCCEEDED:
            state = report.state if report is not None else SandboxState.RUNNING
            sandboxes.transition(
                s,
                sandbox_id,
                state,
                reason=None if state == SandboxState.RUNNING else _end_reason(report, "exited"),
                source=job_id,
                started_at=_when(report.started_at) if report else None,
            )
            current = sandboxes.get_sandbox(s, sandbox_id, tenant_id=None)
            if current.expires_at is None and current.state == SandboxState.RUNNING:
                # A job released by a cosignature: no API call is waiting to set this.
                begin = current.started_at or utcnow()
                sandboxes.set_expiry(s, sandbox_id, current.timeout_s,
                                     begin + timedelta(seconds=current.timeout_s))
        else:
            sandboxes.transition(
                s,
                sandbox_id,
                SandboxState.FAILED,
                reason=EndReason.CREATE_FAILED.value,
                source=job_id,
            )
    elif kind in (JobKind.PAUSE_SANDBOX, JobKind.RESUME_SANDBOX):
        if status == JobStatus.SUCCEEDED and report is not None:
            sandboxes.transition(s, sandbox_id, report.state, reason=None, source=job_id)
    elif kind == JobKind.KILL_SANDBOX:
        if status == JobStatus.SUCCEEDED:
            state = (
                report.state
                if report is not None
                and report.state not in (SandboxState.PENDING, SandboxState.RUNNING)
                else SandboxState.KILLED
            )
            sandboxes.transition(
                s,
                sandbox_id,
                state,
                reason=_end_reason(report, EndReason.KILLED.value),
                source=job_id,
                ended_at=_when(report.ended_at) if report else None,
            )
        elif code in ("not_found", "sandbox_not_found"):
            sandboxes.transition(
                s, sandbox_id, SandboxState.FAILED, reason=EndReason.LOST.value, source=job_id
            )
