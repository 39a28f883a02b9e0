"""Records (frozen dataclasses) to response models."""

from __future__ import annotations

from datetime import datetime

from control_plane.api.schemas import (
    AgentOut,
    ApiKeyOut,
    CapacityOut,
    JobErrorOut,
    JobOut,
    NewTenantApiKeyOut,
    SandboxOut,
    SigningKeyOut,
    SnapshotOut,
    TenantOut,
)
from control_plane.store.agents import AgentRecord
from control_plane.store.jobs import JobRecord
from control_plane.store.sandboxes import SandboxRecord
from control_plane.store.signing_keys import SigningKeyRecord
from control_plane.store.snapshots import SnapshotRecord
from control_plane.store.tenants import ApiKeyRecord, IssuedApiKey, TenantRecord


def tenant_out(r: TenantRecord) -> TenantOut:
    return TenantOut(
        id=r.id, name=r.name, created_at=r.created_at, required_isolation=r.required_isolation
    )


def api_key_out(r: ApiKeyRecord) -> ApiKeyOut:
    return ApiKeyOut(
        id=r.id,
        tenant_id=r.tenant_id,
        name=r.name,
        role=r.role,
        created_at=r.created_at,
        revoked_at=r.revoked_at,
    )


def new_api_key_out(issued: IssuedApiKey) -> NewTenantApiKeyOut:
    r = issued.record
    return NewTenantApiKeyOut(
        id=r.id, name=r.name, role=r.role, key=issued.key, created_at=r.created_at
    )


def signing_key_out(r: SigningKeyRecord) -> SigningKeyOut:
    return SigningKeyOut(kid=r.kid, public_key=r.public_key, status=r.status.value)


def agent_out(r: AgentRecord, *, now: datetime, offline_after_s: float) -> AgentOut:
    c = r.capacity
    return AgentOut(
        id=r.id,
        tenant_id=r.tenant_id,
        name=r.name,
        status="online" if r.is_online(now, offline_after_s) else "offline",
        data_plane_url=r.data_plane_url,
        runtimes=list(r.runtimes),
        templates=list(r.templates),
        version=r.version,
        capacity=CapacityOut(
            cpu_total=c.cpu_total,
            cpu_free=c.cpu_free,
            memory_mb_total=c.memory_mb_total,
            memory_mb_free=c.memory_mb_free,
            sandboxes=c.sandboxes,
        ),
        last_heartbeat_at=r.last_heartbeat_at,
        enrolled_at=r.enrolled_at,
    )


def sandbox_fields(r: SandboxRecord) -> dict[str, object]:
    return {
        "id": r.id,
        "tenant_id": r.tenant_id,
        "agent_id": r.agent_id,
        "template": r.template,
        "isolation": r.isolation,
        "cpu": r.cpu,
        "memory_mb": r.memory_mb,
        "timeout_s": r.timeout_s,
        "state": r.state,
        "end_reason": r.end_reason,
        "metadata": dict(r.metadata),
        "created_at": r.created_at,
        "started_at": r.started_at,
        "ended_at": r.ended_at,
        "expires_at": r.expires_at,
        "egress": list(r.egress),
    }


def sandbox_out(r: SandboxRecord) -> SandboxOut:
    return SandboxOut.model_validate(sandbox_fields(r))


def job_out(r: JobRecord) -> JobOut:
    return JobOut(
        id=r.id,
        tenant_id=r.tenant_id,
        agent_id=r.agent_id,
        sandbox_id=r.sandbox_id,
        kind=r.kind,
        seq=r.seq,
        status=r.status,
        error=JobErrorOut(code=r.error_code, message=r.error_message) if r.error_code else None,
        created_at=r.created_at,
        delivered_at=r.delivered_at,
        completed_at=r.completed_at,
    )


def snapshot_out(r: SnapshotRecord) -> SnapshotOut:
    return SnapshotOut(
        id=r.id,
        tenant_id=r.tenant_id,
        agent_id=r.agent_id,
        sandbox_id=r.sandbox_id,
        isolation=r.isolation,
        template=r.template,
        cpu=r.cpu,
        memory_mb=r.memory_mb,
        created_at=r.created_at,
    )
