"""Agent enrollment and status, and the control plane's public signing keys."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.protocol.signing import key_id, public_key_from_text
from byoc_agent.protocol.subjects import agent_permissions
from control_plane.api.auth import AgentReader, Operator, Svc
from control_plane.api.pagination import decode_cursor, encode_cursor
from control_plane.api.schemas import (
    AgentOut,
    AgentPage,
    CreateEnrollmentTokenRequest,
    EnrolledAgentOut,
    EnrollmentTokenOut,
    EnrollRequest,
    SigningKeyList,
)
from control_plane.api.views import agent_out, signing_key_out
from control_plane.errors import UnauthenticatedError
from control_plane.store import MAX_PAGE, agents, audit, utcnow
from control_plane.store.agents import AgentRecord, AgentReport, Capacity
from control_plane.store.audit import AuditEvent

log = structlog.get_logger("control_plane.api")

router = APIRouter(tags=["agents"])


@router.post("/v1/agents/enrollment-tokens", status_code=201, response_model=EnrollmentTokenOut)
async def create_enrollment_token(
    body: CreateEnrollmentTokenRequest, _: Operator, svc: Svc
) -> EnrollmentTokenOut:
    if body.ttl_s > svc.settings.enrollment_token_max_ttl_s:
        raise InvalidArgumentError("ttl_s is too long", field="ttl_s")

    def create(s: Session) -> agents.IssuedEnrollmentToken:
        issued = agents.create_enrollment_token(s, body.tenant_id, body.ttl_s)
        audit.append(s, AuditEvent(
            action="enrollment_token.created", actor="operator", tenant_id=body.tenant_id,
            detail={"expires_at": issued.expires_at.isoformat()},
        ))
        return issued

    issued = await svc.db.run(create)
    return EnrollmentTokenOut(
        token=issued.token, tenant_id=issued.tenant_id, expires_at=issued.expires_at
    )


@router.post("/v1/agents/enroll", status_code=201, response_model=EnrolledAgentOut)
async def enroll(body: EnrollRequest, svc: Svc) -> EnrolledAgentOut:
    """Authenticated by the one-use enrollment token in the body."""
    c = body.capacity
    report = AgentReport(
        data_plane_url=body.data_plane_url,
        runtimes=tuple(body.runtimes),
        templates=tuple(body.templates),
        capacity=Capacity(
            cpu_total=c.cpu_total,
            cpu_free=c.cpu_free,
            memory_mb_total=c.memory_mb_total,
            memory_mb_free=c.memory_mb_free,
            sandboxes=c.sandboxes,
        ),
    )
    authority = svc.nats.authority
    if authority is not None and body.nats_public_key is None:
        raise InvalidArgumentError(
            "this control plane runs NATS with per-agent users: send nats_public_key",
            field="nats_public_key",
        )

    def run(s: Session) -> tuple[AgentRecord, str | None]:
        agent = agents.enroll(
            s, body.token, body.name, body.public_key, report,
            cosign_rules=tuple(body.cosign_rules), cosigner_keys=tuple(body.cosigner_keys),
        )
        jwt = None
        if authority is not None and body.nats_public_key is not None:
            jwt = authority.user_jwt(
                body.nats_public_key, f"agent-{agent.id}",
                agent_permissions(agent.tenant_id, agent.id),
            )
        audit.append(s, AuditEvent(
            action="agent.enrolled", actor=f"agent:{agent.id}", tenant_id=agent.tenant_id,
            subject=agent.id,
            detail={"name": agent.name, "kid": key_id(public_key_from_text(body.public_key)),
                    "nats_user": body.nats_public_key or ""},
        ))
        return agent, jwt

    try:
        agent, jwt = await svc.db.run(run)
    except UnauthenticatedError as e:
        await svc.audit.record(AuditEvent(
            action="agent.enroll_refused", actor="anonymous", detail={"reason": e.message},
        ))
        raise
    log.info("agent_enrolled", agent_id=agent.id, tenant_id=agent.tenant_id)
    keys = await svc.keys.public_keys()
    return EnrolledAgentOut(
        agent_id=agent.id,
        tenant_id=agent.tenant_id,
        nats_url=svc.settings.public_nats_url,
        control_plane_keys=[signing_key_out(k) for k in keys],
        nats_jwt=jwt,
    )


@router.get("/v1/agents", response_model=AgentPage)
async def list_agents(
    who: AgentReader,
    svc: Svc,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=256)] = None,
) -> AgentPage:
    after = decode_cursor(cursor)
    tenant_id = who.scope()
    page = await svc.db.run(
        lambda s: agents.list_agents(s, tenant_id=tenant_id, after=after, limit=limit)
    )
    now = utcnow()
    offline = svc.settings.heartbeat_offline_s
    return AgentPage(
        items=[agent_out(a, now=now, offline_after_s=offline) for a in page.items],
        next_cursor=encode_cursor(page.last_id),
    )


@router.get("/v1/agents/{agent_id}", response_model=AgentOut)
async def get_agent(agent_id: str, who: AgentReader, svc: Svc) -> AgentOut:
    tenant_id = who.scope()
    agent = await svc.db.run(lambda s: agents.get_agent(s, agent_id, tenant_id=tenant_id))
    return agent_out(agent, now=utcnow(), offline_after_s=svc.settings.heartbeat_offline_s)


@router.get("/v1/signing-keys", response_model=SigningKeyList)
async def signing_keys(svc: Svc) -> SigningKeyList:
    """Public keys only, so no credential is needed (agents refresh their keyring here)."""
    return SigningKeyList(keys=[signing_key_out(k) for k in await svc.keys.public_keys()])
