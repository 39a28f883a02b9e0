"""Issue signed jobs to one agent, in ``seq`` order, and wait for their results.

Per agent, seq allocation and publish happen under one lock, so jobs reach the stream
in the order of their seqs (the agent rejects a seq that does not increase).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from sqlalchemy.orm import Session

from byoc_agent.protocol import cosign, subjects
from byoc_agent.protocol.errors import ErrorCode
from byoc_agent.protocol.messages import JOB_TYP, Job, JobBody, JobKind, JobStatus, to_json_bytes
from byoc_agent.protocol.signing import sign
from control_plane.errors import AgentTimeoutError, PublishError
from control_plane.jobs.keys import SigningKeys
from control_plane.jobs.waiters import JobOutcome, JobWaiters
from control_plane.store import Database, agents, audit, jobs, new_id
from control_plane.store.audit import AuditEvent
from control_plane.transport.base import Publisher

log = structlog.get_logger("control_plane.jobs")

PUBLISH_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class IssuedJob:
    job_id: str
    tenant_id: str
    agent_id: str
    seq: int


class JobIssuer:
    """Creates the job row, signs, publishes with ``Nats-Msg-Id`` = job id, tracks outcome."""

    def __init__(
        self,
        db: Database,
        keys: SigningKeys,
        publisher: Publisher,
        waiters: JobWaiters,
        *,
        job_ttl_s: int,
    ) -> None:
        self._db = db
        self._keys = keys
        self._publisher = publisher
        self._waiters = waiters
        self._job_ttl_s = job_ttl_s
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, agent_id: str) -> asyncio.Lock:
        lock = self._locks.get(agent_id)
        if lock is None:
            lock = self._locks[agent_id] = asyncio.Lock()
        return lock

    async def issue(
        self,
        *,
        tenant_id: str,
        agent_id: str,
        sandbox_id: str | None,
        body: JobBody,
        job_id: str | None = None,
        actor: str = "control-plane",
        cosignatures: Sequence[bytes] = (),
    ) -> IssuedJob:
        """Publish one job; returns once JetStream acknowledged it (status ``delivered``)."""
        job_id = job_id or new_id("j")
        kind = JobKind(body.kind)
        bound = log.bind(job_id=job_id, tenant_id=tenant_id, agent_id=agent_id, kind=kind.value)
        async with self._lock(agent_id):

            def allocate(s: Session) -> int:
                seq = agents.next_seq(s, agent_id)
                jobs.create_job(
                    s,
                    job_id=job_id,
                    tenant_id=tenant_id,
                    agent_id=agent_id,
                    sandbox_id=sandbox_id,
                    kind=kind,
                    seq=seq,
                )
                audit.append(s, AuditEvent(
                    action="job.issued", actor=actor, tenant_id=tenant_id, subject=job_id,
                    detail={"agent_id": agent_id, "kind": kind.value, "seq": str(seq),
                            "sandbox_id": sandbox_id or ""},
                ))
                return seq

            seq = await self._db.run(allocate)
            now = int(time.time())
            job = Job(
                job_id=job_id,
                tenant_id=tenant_id,
                agent_id=agent_id,
                iat=now,
                exp=now + self._job_ttl_s,
                seq=seq,
                body=body,
            )
            key = await self._keys.current()
            data = cosign.attach(sign(key, JOB_TYP, to_json_bytes(job)), cosignatures)
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                    await self._publisher.publish_job(
                        subjects.jobs(tenant_id, agent_id), job_id, data
                    )
            except (TimeoutError, OSError, ConnectionError, RuntimeError) as e:
                bound.warning("job_publish_failed", seq=seq, error=type(e).__name__)
                error_name = type(e).__name__

                def failed(s: Session) -> None:
                    jobs.complete_job(
                        s,
                        job_id,
                        JobStatus.FAILED,
                        error_code=ErrorCode.UNAVAILABLE.value,
                        error_message="could not publish the job",
                    )
                    audit.append(s, AuditEvent(
                        action="job.publish_failed", actor="control-plane", tenant_id=tenant_id,
                        subject=job_id, detail={"agent_id": agent_id, "error": error_name},
                    ))

                await self._db.run(failed)
                raise PublishError("the job could not be published", job_id=job_id) from e
        def delivered(s: Session) -> None:
            jobs.mark_delivered(s, job_id)
            audit.append(s, AuditEvent(
                action="job.delivered", actor="control-plane", tenant_id=tenant_id,
                subject=job_id, detail={"agent_id": agent_id, "kid": key.kid,
                                        "stream": subjects.JOBS_STREAM},
            ))

        await self._db.run(delivered)
        bound.info("job_published", seq=seq)
        return IssuedJob(job_id=job_id, tenant_id=tenant_id, agent_id=agent_id, seq=seq)

    async def run(
        self,
        *,
        tenant_id: str,
        agent_id: str,
        sandbox_id: str | None,
        body: JobBody,
        timeout_s: float,
        actor: str = "control-plane",
    ) -> JobOutcome:
        """Issue a job and wait for the agent's result; AgentTimeoutError after ``timeout_s``."""
        job_id = new_id("j")
        future = self._waiters.register(job_id)
        try:
            await self.issue(
                tenant_id=tenant_id,
                agent_id=agent_id,
                sandbox_id=sandbox_id,
                body=body,
                job_id=job_id,
                actor=actor,
            )
            try:
                async with asyncio.timeout(timeout_s):
                    return await asyncio.shield(future)
            except TimeoutError:
                pass
            # The result may have been applied by another control-plane replica.
            record = await self._db.run(lambda s: jobs.get_job(s, job_id, tenant_id=None))
            if record.final:
                return JobOutcome(
                    job_id=job_id,
                    status=record.status,
                    error_code=record.error_code,
                    error_message=record.error_message,
                )
            log.warning("job_timed_out", job_id=job_id, agent_id=agent_id, tenant_id=tenant_id)
            raise AgentTimeoutError(
                "the agent did not answer in time", job_id=job_id, agent_id=agent_id
            )
        finally:
            self._waiters.discard(job_id)
