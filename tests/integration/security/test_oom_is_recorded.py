"""A sandbox killed for memory is recorded as ``oom_killed`` by the agent and the control plane.

The agent here is the real :class:`~byoc_agent.agent.Agent` over a real gVisor runtime; its
signed event goes from its outbox into the control plane's inbox (SQLite and PostgreSQL).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import Sandboxes
from test_sandbox_escapes import HOG, run

from byoc_agent.agent import Agent, AgentConfig
from byoc_agent.protocol.messages import SandboxState
from byoc_agent.protocol.signing import SigningKey
from byoc_agent.protocol.verify import Keyring
from byoc_agent.runtimes.base import SandboxSpec
from byoc_agent.state import AgentIdentity, AgentStateStore, SandboxRecord
from byoc_agent.transport.nats import NatsAgentTransport
from control_plane.jobs.inbox import AgentInbox
from control_plane.jobs.waiters import JobWaiters
from control_plane.store import Database, agents, tenants, upgrade_to_head
from control_plane.store import sandboxes as sandbox_rows
from control_plane.store.agents import AgentReport, Capacity
from control_plane.store.sandboxes import NewSandbox
from control_plane.transport import Disposition

pytestmark = [pytest.mark.gvisor, pytest.mark.asyncio]

REPORT = AgentReport(
    data_plane_url="http://127.0.0.1:1",
    runtimes=("gvisor",),
    templates=("base",),
    capacity=Capacity(
        cpu_total=2, cpu_free=2, memory_mb_total=4096, memory_mb_free=4096, sandboxes=0
    ),
)


async def test_an_oom_killed_sandbox_is_reported_and_recorded_as_oom_killed(
    sandboxes: Sandboxes, database_url: str, tmp_path: Path
) -> None:
    """Agent record, signed event and control-plane row all say ``oom_killed``."""
    upgrade_to_head(database_url)
    db = Database(database_url)
    try:
        key = SigningKey.generate()
        tenant, _ = db.run_sync(lambda s: tenants.create_tenant(s, "acme"))
        token = db.run_sync(lambda s: agents.create_enrollment_token(s, tenant.id, 600))
        agent_rec = db.run_sync(
            lambda s: agents.enroll(s, token.token, "a", key.public_text, REPORT)
        )
        row = db.run_sync(
            lambda s: sandbox_rows.create_sandbox(
                s,
                NewSandbox(
                    tenant_id=tenant.id,
                    agent_id=agent_rec.id,
                    template="base",
                    cpu=1,
                    memory_mb=128,
                    timeout_s=300,
                ),
            )
        )
        db.run_sync(lambda s: sandbox_rows.transition(s, row.id, SandboxState.RUNNING))

        runtime = sandboxes.runtime()
        handle = await runtime.create(
            SandboxSpec(row.id, tenant.id, "base", cpu=1, memory_mb=128, timeout_s=300)
        )
        sandboxes.made.append((runtime, handle))
        state = AgentStateStore(tmp_path / "agent-state.db")
        identity = AgentIdentity(
            agent_id=agent_rec.id, tenant_id=tenant.id, kid=key.kid, nats_url="nats://127.0.0.1:1"
        )
        agent = Agent(
            identity=identity,
            signing_key=key,
            keyring=Keyring(),
            state=state,
            runtime=runtime,
            transport=NatsAgentTransport("nats://127.0.0.1:1", tenant.id, agent_rec.id),
            config=AgentConfig(
                data_plane_url="http://127.0.0.1:1", cpu_total=2, memory_mb_total=4096
            ),
        )
        now = time.time()
        state.put_sandbox(
            SandboxRecord(
                sandbox_id=row.id,
                tenant_id=tenant.id,
                handle=handle,
                state=SandboxState.RUNNING,
                cpu=1,
                memory_mb=128,
                template="base",
                started_at=now,
                deadline=now + 300,
            )
        )
        ran = await run(runtime, handle, f"python3 - <<'EOF'\n{HOG}\nEOF\n", timeout_s=120)
        assert ran.exit_code != 0, ran

        await agent.reap_dead()

        recorded = state.get_sandbox(row.id)
        assert recorded is not None
        assert (recorded.state, recorded.end_reason) == (SandboxState.FAILED, "oom_killed")
        inbox = AgentInbox(db, JobWaiters())
        sent = [m for m in state.pending_outbox() if m[1].endswith(".events")]
        assert len(sent) == 1
        _, subject, data = sent[0]
        assert await inbox.handle(subject, data) == Disposition.APPLIED
        stored = db.run_sync(lambda s: sandbox_rows.get_sandbox(s, row.id, tenant_id=tenant.id))
        assert (stored.state, stored.end_reason) == (SandboxState.FAILED, "oom_killed")
        state.close()
    finally:
        db.dispose()
