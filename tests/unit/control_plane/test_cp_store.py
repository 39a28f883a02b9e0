"""The store on SQLite and PostgreSQL: schema, credentials, seqs, states, filters."""

from __future__ import annotations

from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text, update

from byoc_agent.protocol.messages import JobKind, JobStatus, SandboxState
from control_plane.errors import UnauthenticatedError
from control_plane.store import Base, Database, agents, jobs, sandboxes, tenants, upgrade_to_head
from control_plane.store.agents import AgentReport, Capacity, EnrollmentToken
from control_plane.store.sandboxes import NewSandbox

REPORT = AgentReport(
    data_plane_url="http://10.0.0.5:7000",
    runtimes=("gvisor",),
    templates=("base",),
    capacity=Capacity(
        cpu_total=8, cpu_free=8, memory_mb_total=16384, memory_mb_free=16384, sandboxes=0
    ),
)
PUBLIC_KEY = "FgiUaL_-PkCvkaHJutup6qTiENxYCFybBEhzRiyzSjo"


def make_agent(db: Database) -> agents.AgentRecord:
    tenant, _ = db.run_sync(lambda s: tenants.create_tenant(s, "acme"))
    token = db.run_sync(lambda s: agents.create_enrollment_token(s, tenant.id, 600))
    return db.run_sync(lambda s: agents.enroll(s, token.token, "agent-1", PUBLIC_KEY, REPORT))


def test_migrations_are_idempotent_and_match_the_models(db: Database) -> None:
    """Upgrading twice is a no-op and autogenerate finds no difference."""
    upgrade_to_head(db.url)
    with db.engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    assert diff == []


def test_an_api_key_authenticates_until_it_is_revoked(db: Database) -> None:
    """The key maps to its tenant; after revocation, or with one wrong character, it fails."""
    tenant, issued = db.run_sync(lambda s: tenants.create_tenant(s, "acme"))
    assert db.run_sync(lambda s: tenants.authenticate_api_key(s, issued.key)) == tenant.id
    tampered = issued.key[:-1] + ("A" if issued.key[-1] != "A" else "B")
    with pytest.raises(UnauthenticatedError):
        db.run_sync(lambda s: tenants.authenticate_api_key(s, tampered))
    db.run_sync(lambda s: tenants.revoke_api_key(s, tenant.id, issued.record.id))
    with pytest.raises(UnauthenticatedError):
        db.run_sync(lambda s: tenants.authenticate_api_key(s, issued.key))


def test_the_database_holds_only_a_hash_of_each_secret(db: Database) -> None:
    """Neither API keys nor enrollment tokens are stored in clear."""
    tenant, issued = db.run_sync(lambda s: tenants.create_tenant(s, "acme"))
    token = db.run_sync(lambda s: agents.create_enrollment_token(s, tenant.id, 600))
    with db.engine.connect() as conn:
        dump = " ".join(
            str(row)
            for table in ("api_keys", "enrollment_tokens")
            for row in conn.execute(text(f"SELECT * FROM {table}"))  # noqa: S608 (fixed names)
        )
    assert issued.key not in dump
    assert token.token not in dump


def test_an_enrollment_token_works_once(db: Database) -> None:
    """The second enrollment with the same token is refused."""
    tenant, _ = db.run_sync(lambda s: tenants.create_tenant(s, "acme"))
    token = db.run_sync(lambda s: agents.create_enrollment_token(s, tenant.id, 600))
    agent = db.run_sync(lambda s: agents.enroll(s, token.token, "a", PUBLIC_KEY, REPORT))
    assert agent.tenant_id == tenant.id
    with pytest.raises(UnauthenticatedError):
        db.run_sync(lambda s: agents.enroll(s, token.token, "b", PUBLIC_KEY, REPORT))


def test_an_expired_enrollment_token_is_refused(db: Database) -> None:
    """A token past its expiry cannot enroll an agent."""
    tenant, _ = db.run_sync(lambda s: tenants.create_tenant(s, "acme"))
    token = db.run_sync(lambda s: agents.create_enrollment_token(s, tenant.id, 600))
    db.run_sync(
        lambda s: s.execute(
            update(EnrollmentToken).values(expires_at=token.expires_at - timedelta(hours=1))
        )
    )
    with pytest.raises(UnauthenticatedError):
        db.run_sync(lambda s: agents.enroll(s, token.token, "a", PUBLIC_KEY, REPORT))


def test_job_seqs_increase_by_one_per_agent(db: Database) -> None:
    """Each allocation returns the next seq for that agent."""
    agent = make_agent(db)
    seqs = [db.run_sync(lambda s: agents.next_seq(s, agent.id)) for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]


def test_a_job_outcome_is_recorded_once(db: Database) -> None:
    """A redelivered result does not overwrite the first outcome."""
    agent = make_agent(db)
    db.run_sync(
        lambda s: jobs.create_job(
            s,
            job_id="j_one",
            tenant_id=agent.tenant_id,
            agent_id=agent.id,
            sandbox_id=None,
            kind=JobKind.KILL_SANDBOX,
            seq=1,
        )
    )
    assert db.run_sync(lambda s: jobs.complete_job(s, "j_one", JobStatus.SUCCEEDED))
    assert not db.run_sync(
        lambda s: jobs.complete_job(s, "j_one", JobStatus.FAILED, error_code="internal")
    )
    assert db.run_sync(lambda s: jobs.get_job(s, "j_one", tenant_id=None)).status == "succeeded"


def test_sandbox_states_follow_the_state_machine_with_history(db: Database) -> None:
    """pending → running → killed is recorded; a terminal sandbox never changes again."""
    agent = make_agent(db)
    sb = db.run_sync(
        lambda s: sandboxes.create_sandbox(
            s,
            NewSandbox(
                tenant_id=agent.tenant_id,
                agent_id=agent.id,
                template="base",
                cpu=1,
                memory_mb=512,
                timeout_s=60,
            ),
        )
    )
    assert db.run_sync(lambda s: sandboxes.transition(s, sb.id, SandboxState.RUNNING))
    assert db.run_sync(
        lambda s: sandboxes.transition(s, sb.id, SandboxState.KILLED, reason="killed")
    )
    assert not db.run_sync(lambda s: sandboxes.transition(s, sb.id, SandboxState.RUNNING))
    assert not db.run_sync(
        lambda s: sandboxes.transition(s, sb.id, SandboxState.TIMED_OUT, reason="timed_out")
    )
    got = db.run_sync(lambda s: sandboxes.get_sandbox(s, sb.id, tenant_id=agent.tenant_id))
    assert (got.state, got.end_reason) == (SandboxState.KILLED, "killed")
    steps = db.run_sync(lambda s: sandboxes.history(s, sb.id))
    assert [(h.from_state, h.to_state) for h in steps] == [
        (None, SandboxState.PENDING),
        (SandboxState.PENDING, SandboxState.RUNNING),
        (SandboxState.RUNNING, SandboxState.KILLED),
    ]


def test_sandboxes_filter_by_state_and_metadata_and_paginate(db: Database) -> None:
    """Label filters are ANDed, state filters, and pages follow the cursor to the end."""
    agent = make_agent(db)
    for i in range(5):
        labels = {"team": "red" if i % 2 == 0 else "blue", "n": str(i)}
        db.run_sync(
            lambda s, labels=labels: sandboxes.create_sandbox(
                s,
                NewSandbox(
                    tenant_id=agent.tenant_id,
                    agent_id=agent.id,
                    template="base",
                    cpu=1,
                    memory_mb=512,
                    timeout_s=60,
                    metadata=labels,
                ),
            )
        )

    def page(after: str | None, **labels: str) -> sandboxes.Page[sandboxes.SandboxRecord]:
        return db.run_sync(
            lambda s: sandboxes.list_sandboxes(
                s, tenant_id=agent.tenant_id, state=None, metadata=labels, after=after, limit=2
            )
        )

    first = page(None, team="red")
    second = page(first.last_id, team="red")
    assert len(first.items) == 2
    assert len(second.items) == 1
    assert second.last_id is None
    assert {r.metadata["n"] for r in (*first.items, *second.items)} == {"0", "2", "4"}
    assert [r.metadata["n"] for r in page(None, team="blue", n="3").items] == ["3"]
    running = db.run_sync(
        lambda s: sandboxes.list_sandboxes(
            s,
            tenant_id=agent.tenant_id,
            state=SandboxState.RUNNING,
            metadata={},
            after=None,
            limit=10,
        )
    )
    assert running.items == ()


def test_another_tenants_sandbox_is_not_found(db: Database) -> None:
    """Reads scoped to a tenant never see another tenant's rows."""
    agent = make_agent(db)
    other, _ = db.run_sync(lambda s: tenants.create_tenant(s, "other"))
    sb = db.run_sync(
        lambda s: sandboxes.create_sandbox(
            s,
            NewSandbox(
                tenant_id=agent.tenant_id,
                agent_id=agent.id,
                template="base",
                cpu=1,
                memory_mb=512,
                timeout_s=60,
            ),
        )
    )
    with pytest.raises(sandboxes.SandboxNotFoundError):
        db.run_sync(lambda s: sandboxes.get_sandbox(s, sb.id, tenant_id=other.id))
    with db.engine.connect() as conn:
        assert conn.execute(select(sandboxes.Sandbox.id)).scalars().all() == [sb.id]
