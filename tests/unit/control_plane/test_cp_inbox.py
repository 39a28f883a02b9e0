"""The agent inbox verifies with the sender's enrolled key before it changes anything."""

from __future__ import annotations

import pytest

from byoc_agent.protocol import subjects
from byoc_agent.protocol.signing import SigningKey
from control_plane.jobs.inbox import AgentInbox
from control_plane.jobs.waiters import JobWaiters
from control_plane.store import Database, agents, tenants
from control_plane.store.agents import AgentRecord, AgentReport, Capacity
from control_plane.testing import heartbeat_message
from control_plane.transport import Disposition

pytestmark = pytest.mark.anyio

REPORT = AgentReport(
    data_plane_url="http://10.0.0.5:7000",
    runtimes=(),
    templates=(),
    capacity=Capacity(cpu_total=0, cpu_free=0, memory_mb_total=0, memory_mb_free=0, sandboxes=0),
)


def enrolled(db: Database, key: SigningKey) -> AgentRecord:
    tenant, _ = db.run_sync(lambda s: tenants.create_tenant(s, "acme"))
    token = db.run_sync(lambda s: agents.create_enrollment_token(s, tenant.id, 600))
    return db.run_sync(lambda s: agents.enroll(s, token.token, "a", key.public_text, REPORT))


async def test_a_heartbeat_signed_by_the_agent_marks_it_online(db: Database) -> None:
    """The heartbeat's templates and capacity land on the agent record."""
    key = SigningKey.generate()
    agent = enrolled(db, key)
    data = heartbeat_message(key, agent_id=agent.id, tenant_id=agent.tenant_id)
    inbox = AgentInbox(db, JobWaiters())
    assert await inbox.handle(subjects.heartbeat(agent.tenant_id, agent.id), data) == "applied"
    got = db.run_sync(lambda s: agents.get_agent(s, agent.id))
    assert got.last_heartbeat_at is not None
    assert got.templates == ("base",)


@pytest.mark.parametrize("case", ["other_key", "wrong_subject", "stale", "garbage", "unknown"])
async def test_untrustworthy_heartbeats_are_dropped_without_effect(db: Database, case: str) -> None:
    """Another key, another agent's subject, an old timestamp or junk change nothing."""
    key = SigningKey.generate()
    agent = enrolled(db, key)
    subject = subjects.heartbeat(agent.tenant_id, agent.id)
    if case == "other_key":
        data = heartbeat_message(
            SigningKey.generate(), agent_id=agent.id, tenant_id=agent.tenant_id
        )
    elif case == "wrong_subject":
        data = heartbeat_message(key, agent_id=agent.id, tenant_id=agent.tenant_id)
        subject = subjects.heartbeat("t_someone_else", agent.id)
    elif case == "stale":
        data = heartbeat_message(key, agent_id=agent.id, tenant_id=agent.tenant_id, at=1.0)
    elif case == "garbage":
        data = b"not.a.message"
    else:
        data = heartbeat_message(key, agent_id=agent.id, tenant_id=agent.tenant_id)
        subject = subjects.heartbeat(agent.tenant_id, "a_never_enrolled")
    inbox = AgentInbox(db, JobWaiters())
    assert await inbox.handle(subject, data) == Disposition.DROPPED
    assert db.run_sync(lambda s: agents.get_agent(s, agent.id)).last_heartbeat_at is None
