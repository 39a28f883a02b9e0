"""Jobs that need a customer cosignature: held here, released when the customer signs.

When the agent chosen for a job reported co-signing rules at enrollment and one matches
the job's body, the control plane does not send the job (the agent would refuse it as
``missing_cosignature``). It stores a *cosign request* — job id, agent, body and its
digest — and the customer reviews and signs it with a key only they hold
(``corral cosign sign``). Only then is the job given its ``seq``, signed and published
with the cosignature attached. The control plane checks the cosignature against the
keys the agent reported, for a clear 400 early; the agent checks it again and is the
authority.
"""

from __future__ import annotations

import time

import structlog
from pydantic import BaseModel
from sqlalchemy.orm import Session

from byoc_agent.protocol import cosign, messages
from byoc_agent.protocol.errors import EnvelopeRejectedError, InvalidArgumentError
from byoc_agent.protocol.messages import SandboxState
from byoc_agent.runtimes.base import EndReason
from control_plane.errors import ConflictError
from control_plane.jobs.issuer import IssuedJob, JobIssuer
from control_plane.store import Database, agents, audit, cosign_requests, sandboxes
from control_plane.store.agents import AgentRecord
from control_plane.store.audit import AuditEvent
from control_plane.store.cosign_requests import CosignRequest

log = structlog.get_logger("control_plane.cosign")

REQUEST_TTL_S = 24 * 3600


def agent_policy(agent: AgentRecord) -> cosign.CosignPolicy | None:
    """The agent's co-signing policy, or None when it reported no rules."""
    if not agent.cosign_rules:
        return None
    return cosign.CosignPolicy.from_config(agent.cosigner_keys, agent.cosign_rules)


class CosignService:
    def __init__(self, db: Database, issuer: JobIssuer) -> None:
        self._db = db
        self._issuer = issuer

    def hold_in(
        self, s: Session, *, job_id: str, agent: AgentRecord, sandbox_id: str | None,
        body: BaseModel, rule: cosign.CosignRule, actor: str,
    ) -> CosignRequest:
        """Store a held job inside the caller's transaction (audited there too)."""
        raw = body.model_dump(mode="json", by_alias=True)
        request = cosign_requests.create(
            s, job_id=job_id, tenant_id=agent.tenant_id, agent_id=agent.id,
            sandbox_id=sandbox_id, kind=str(raw["kind"]), body=raw,
            body_sha256=cosign.body_digest(body), rule=str(rule), ttl_s=REQUEST_TTL_S,
        )
        audit.append(s, AuditEvent(
            action="job.held_for_cosignature", actor=actor, tenant_id=agent.tenant_id,
            subject=job_id, detail={"agent_id": agent.id, "rule": str(rule),
                                    "kind": request.kind},
        ))
        return request

    def expire_in(self, s: Session, tenant_id: str) -> int:
        """Expire the tenant's overdue requests; their sandboxes fail (``create_failed``),
        so they stop holding the agent's capacity. Runs lazily before each placement."""
        expired = cosign_requests.expire_due(s, tenant_id)
        for r in expired:
            if r.sandbox_id is not None:
                sandboxes.transition(s, r.sandbox_id, SandboxState.FAILED,
                                     reason=EndReason.CREATE_FAILED.value, source=r.id)
            audit.append(s, AuditEvent(
                action="job.cosign_expired", actor="control-plane", tenant_id=tenant_id,
                subject=r.id, detail={"agent_id": r.agent_id, "sandbox_id": r.sandbox_id or ""},
            ))
        return len(expired)

    async def release(self, tenant_id: str, request_id: str, cosignature: str) -> IssuedJob:
        """Check the customer's cosignature, then sign and publish the held job with it."""
        request = await self._db.run(
            lambda s: cosign_requests.get(s, request_id, tenant_id=tenant_id)
        )
        if request.status == cosign_requests.EXPIRED or (
            time.time() > request.expires_at.timestamp()
        ):
            raise ConflictError("this cosign request expired; create the sandbox again")
        if request.status != cosign_requests.PENDING:
            raise ConflictError("this cosign request was already released")
        agent = await self._db.run(lambda s: agents.get_agent(s, request.agent_id))
        policy = agent_policy(agent)
        body = cosign.parse_body(request.body)
        data = cosignature.encode("ascii", errors="replace")
        if policy is not None:
            now = int(time.time())
            probe = messages.Job(
                job_id=request.id, tenant_id=request.tenant_id, agent_id=request.agent_id,
                iat=now, exp=now + 1, seq=1, body=body,
            )
            try:
                cosign.check(probe, [data], policy)
            except EnvelopeRejectedError as e:
                raise InvalidArgumentError(
                    f"the cosignature does not approve this job: {e.message}",
                    field="cosignature",
                ) from None

        def released(s: Session) -> bool:
            ok = cosign_requests.mark_released(s, request.id)
            if ok:
                audit.append(s, AuditEvent(
                    action="job.cosigned", actor=f"tenant:{tenant_id}", tenant_id=tenant_id,
                    subject=request.id, detail={"agent_id": request.agent_id},
                ))
            return ok

        if not await self._db.run(released):
            raise ConflictError("this cosign request was already released")
        log.info("cosign_request_released", job_id=request.id, tenant_id=tenant_id)
        return await self._issuer.issue(
            tenant_id=request.tenant_id, agent_id=request.agent_id,
            sandbox_id=request.sandbox_id, body=body,
            job_id=request.id, actor=f"tenant:{tenant_id}", cosignatures=[data],
        )
