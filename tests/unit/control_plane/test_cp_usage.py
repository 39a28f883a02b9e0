"""Usage reports in the inbox: verified, checked against the sandbox, stored once; exported."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from billing.errors import InvalidPeriodError
from byoc_agent.protocol import subjects
from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.protocol.signing import SigningKey
from control_plane.jobs.inbox import AgentInbox
from control_plane.jobs.waiters import JobWaiters
from control_plane.store import Database, agents, sandboxes, tenants, usage
from control_plane.store.agents import AgentRecord, AgentReport, Capacity
from control_plane.store.sandboxes import NewSandbox
from control_plane.testing import usage_message
from control_plane.transport import Disposition
from control_plane.usage_export import ExportFormat, UsageExporter, memory_gib, parse_period

pytestmark = pytest.mark.anyio

NOV = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())
REPORT = AgentReport(
    data_plane_url="http://10.0.0.5:7000",
    runtimes=(),
    templates=(),
    capacity=Capacity(cpu_total=0, cpu_free=0, memory_mb_total=0, memory_mb_free=0, sandboxes=0),
)


def enrolled(db: Database, key: SigningKey) -> tuple[AgentRecord, str]:
    """An enrolled agent and one sandbox placed on it."""
    tenant, _ = db.run_sync(lambda s: tenants.create_tenant(s, "acme"))
    token = db.run_sync(lambda s: agents.create_enrollment_token(s, tenant.id, 600))
    agent = db.run_sync(lambda s: agents.enroll(s, token.token, "a", key.public_text, REPORT))
    new = NewSandbox(tenant.id, agent.id, "base", cpu=1, memory_mb=512, timeout_s=60)
    sandbox = db.run_sync(lambda s: sandboxes.create_sandbox(s, new))
    return agent, sandbox.id


def stored(db: Database) -> list[usage.StoredUsage]:
    period = parse_period("2026-11")
    page = db.run_sync(
        lambda s: usage.list_usage(
            s, start=period.start, end=period.end, tenant_id=None, after_seq=None, limit=100
        )
    )
    return list(page.items)


async def test_a_redelivered_record_is_acked_and_a_conflicting_one_ignored(db: Database) -> None:
    """Same id and content: applied, stored once; same id, other content: the first stands."""
    key = SigningKey.generate()
    agent, sandbox_id = enrolled(db, key)
    inbox = AgentInbox(db, JobWaiters())
    subject = subjects.usage(agent.tenant_id, agent.id)
    ids = {"agent_id": agent.id, "tenant_id": agent.tenant_id, "sandbox_id": sandbox_id}
    first = usage_message(key, **ids, record_id="u-1", start=NOV, end=NOV + 60, vcpu=2)
    other = usage_message(key, **ids, record_id="u-1", start=NOV, end=NOV + 60, vcpu=4)
    for data in (first, first, other):
        assert await inbox.handle(subject, data) == Disposition.APPLIED
    [row] = stored(db)
    assert (row.usage.record_id, row.usage.vcpu) == ("u-1", 2)
    assert row.usage.start == datetime(2026, 11, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "case", ["payload_names_other_agent", "subject_of_other_tenant", "empty", "gpu_no_model"]
)
async def test_usage_that_cannot_be_billed_to_its_sender_is_dropped(
    db: Database, case: str
) -> None:
    """Mismatched ids, an empty interval or GPUs without a model store nothing."""
    key = SigningKey.generate()
    agent, sandbox_id = enrolled(db, key)
    subject = subjects.usage(agent.tenant_id, agent.id)
    fields: dict[str, object] = {
        "agent_id": agent.id,
        "tenant_id": agent.tenant_id,
        "sandbox_id": sandbox_id,
        "record_id": "u-1",
        "start": NOV,
        "end": NOV + 60,
    }
    if case == "payload_names_other_agent":
        fields["agent_id"] = "a_someone_else"
    elif case == "subject_of_other_tenant":
        subject = subjects.usage("t_someone_else", agent.id)
    elif case == "empty":
        fields["end"] = NOV
    else:
        fields["gpu_count"] = 1
    data = usage_message(key, **fields)  # type: ignore[arg-type]
    inbox = AgentInbox(db, JobWaiters())
    assert await inbox.handle(subject, data) == Disposition.DROPPED
    assert stored(db) == []


def test_memory_converts_to_gib_with_six_places() -> None:
    """Multiples of 16 MiB are exact; anything else rounds half-even to 6 places."""
    assert memory_gib(512) == Decimal("0.5")
    assert memory_gib(16) == Decimal("0.015625")
    assert memory_gib(1000) == Decimal("0.976562")


def test_a_period_must_be_a_month() -> None:
    """The error names the ``period`` field."""
    with pytest.raises(InvalidArgumentError) as caught:
        parse_period("2026-13")
    assert caught.value.fields.get("field") == "period"
    assert not isinstance(caught.value, InvalidPeriodError)


def test_an_empty_period_exports_only_a_header(db: Database, tmp_path: Path) -> None:
    """No usage: a CSV with its header and no rows."""
    path = tmp_path / "empty.csv"
    assert UsageExporter(db).write(parse_period("2026-11"), ExportFormat.CSV, path) == 0
    assert path.read_text().count("\n") == 1
