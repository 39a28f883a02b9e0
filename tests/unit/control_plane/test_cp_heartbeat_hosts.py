"""A heartbeat that lists the agent's hosts is accepted like any other (ADR 0017)."""

from __future__ import annotations

import time

import pytest

from byoc_agent.protocol import subjects
from byoc_agent.protocol.messages import (
    HEARTBEAT_TYP,
    Capacity,
    Heartbeat,
    HostSummary,
    to_json_bytes,
)
from byoc_agent.protocol.signing import SigningKey, sign
from control_plane.jobs.inbox import AgentInbox
from control_plane.jobs.waiters import JobWaiters
from control_plane.store import Database, agents, tenants
from control_plane.store.agents import AgentReport
from control_plane.store.agents import Capacity as StoredCapacity

pytestmark = [pytest.mark.anyio, pytest.mark.providers]


async def test_a_heartbeat_with_hosts_marks_the_agent_online(db: Database) -> None:
    """The control plane verifies and applies a heartbeat carrying a hosts list."""
    key = SigningKey.generate()
    tenant, _ = db.run_sync(lambda s: tenants.create_tenant(s, "acme"))
    token = db.run_sync(lambda s: agents.create_enrollment_token(s, tenant.id, 600))
    report = AgentReport(
        data_plane_url="http://10.0.0.5:7000", runtimes=(), templates=(),
        capacity=StoredCapacity(cpu_total=0, cpu_free=0, memory_mb_total=0, memory_mb_free=0,
                                sandboxes=0),
    )
    agent = db.run_sync(lambda s: agents.enroll(s, token.token, "a", key.public_text, report))
    hb = Heartbeat(
        agent_id=agent.id, tenant_id=agent.tenant_id, at=time.time(), version="test",
        data_plane_url="http://127.0.0.1:1", runtimes=["gvisor"], templates=["base"],
        capacity=Capacity(cpu_total=8, cpu_free=8, memory_mb_total=16384,
                          memory_mb_free=16384, sandboxes=0),
        hosts=[HostSummary(host_id="i-0abc", instance_type="c5.metal", state="ready",
                           cpu_total=96, cpu_free=96, memory_mb_total=196608,
                           memory_mb_free=196608, kvm=True)],
    )
    data = sign(key, HEARTBEAT_TYP, to_json_bytes(hb))
    assert b'"hosts"' in to_json_bytes(hb)
    inbox = AgentInbox(db, JobWaiters())
    assert await inbox.handle(subjects.heartbeat(agent.tenant_id, agent.id), data) == "applied"
    got = db.run_sync(lambda s: agents.get_agent(s, agent.id))
    assert got.last_heartbeat_at is not None
