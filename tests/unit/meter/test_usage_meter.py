"""The usage meter's cutting rules, against a real state file (no network)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from byoc_agent.meter import UsageMeter, billing_second, usage_record_id
from byoc_agent.protocol import messages, signing, subjects, verify
from byoc_agent.protocol.messages import SandboxState, UsageReport
from byoc_agent.runtimes.base import SandboxHandle
from byoc_agent.state import AgentIdentity, AgentStateStore, SandboxRecord

TENANT = "ten-u"
AGENT = "agt-u"
KEY = signing.SigningKey.generate()
RING = verify.Keyring({KEY.kid: KEY.public_key})
T0 = 1_767_225_600.75  # 2026-01-01T00:00:00.75Z


@pytest.fixture
def state(tmp_path: Path) -> Iterator[AgentStateStore]:
    store = AgentStateStore(tmp_path / "state.db")
    yield store
    store.close()


def _meter(state: AgentStateStore) -> UsageMeter:
    ident = AgentIdentity(AGENT, TENANT, KEY.kid, "nats://127.0.0.1:1")
    return UsageMeter(identity=ident, signing_key=KEY, state=state, host="h1")


def _running(state: AgentStateStore, sandbox_id: str = "sbx-1", runtime: str = "gvisor",
             started_at: float = T0) -> SandboxRecord:
    rec = SandboxRecord(
        sandbox_id=sandbox_id, tenant_id=TENANT,
        handle=SandboxHandle(sandbox_id=sandbox_id, runtime=runtime, created_at=started_at),
        state=SandboxState.RUNNING, cpu=4, memory_mb=2048, template="base",
        started_at=started_at, deadline=started_at + 3600,
    )
    state.put_sandbox(rec)
    return rec


def _end(state: AgentStateStore, rec: SandboxRecord, at: float) -> SandboxRecord:
    ended = dataclasses.replace(rec, state=SandboxState.KILLED, ended_at=at, end_reason="killed")
    state.put_sandbox(ended)
    return ended


def _spooled(state: AgentStateStore) -> list[UsageReport]:
    return [
        verify.verify_model(data, typ=messages.USAGE_TYP, model=UsageReport, keyring=RING)[1]
        for _, subject, data in state.pending_outbox(limit=1000)
        if subject == subjects.usage(TENANT, AGENT)
    ]


def test_every_boundary_is_the_whole_second_at_or_before_the_instant() -> None:
    """Start, interim ends and the final end all use floor."""
    assert billing_second(T0) == 1_767_225_600
    assert billing_second(1_767_225_600.0) == 1_767_225_600
    assert billing_second(1_767_225_600.999) == 1_767_225_600


def test_the_record_id_depends_only_on_the_sandbox_and_the_start() -> None:
    """Re-cutting the same interval yields the same id; another start or sandbox does not."""
    a = usage_record_id("sbx-1", 100)
    assert a == usage_record_id("sbx-1", 100)
    assert a != usage_record_id("sbx-1", 101)
    assert a != usage_record_id("sbx-2", 100)
    assert messages.is_id(a)


def test_the_record_id_derivation_is_pinned() -> None:
    """Changing it would make an upgraded agent re-emit old intervals under new ids (double
    billing), so it matches the golden usage example."""
    assert usage_record_id("sbx-0001", 1_767_226_141) == (
        "usage-15ef8332d275fa420187c4467a811d949fbc13d6"
    )


def test_interim_and_final_records_tile_the_life_of_a_sandbox(state: AgentStateStore) -> None:
    """Ticks cut [last_end, floor(now)); the final record ends at floor(ended_at)."""
    meter = _meter(state)
    rec = _running(state)
    assert meter.tick(T0 + 0.1) == 0  # still within the start second: nothing accrued
    assert meter.tick(T0 + 1.0) == 1
    assert meter.tick(T0 + 1.1) == 0
    assert meter.tick(T0 + 61.3) == 1
    assert meter.close(_end(state, rec, T0 + 62.9)) is True
    records = _spooled(state)
    assert [(r.start, r.end, r.final) for r in records] == [
        (1_767_225_600, 1_767_225_601, False),
        (1_767_225_601, 1_767_225_662, False),
        (1_767_225_662, 1_767_225_663, True),
    ]
    for a, b in itertools.pairwise(records):
        assert a.end == b.start
    assert sum(r.end - r.start for r in records) == billing_second(T0 + 62.9) - billing_second(T0)
    assert {(r.vcpu, r.memory_mb, r.template, r.host, r.isolation, r.gpu_count)
            for r in records} == {(4, 2048, "base", "h1", "gvisor", 0)}


def test_a_sandbox_ended_within_its_start_second_gets_one_empty_final_record(
    state: AgentStateStore,
) -> None:
    """Zero billed seconds, but the end is still recorded."""
    meter = _meter(state)
    rec = _running(state)
    assert meter.close(_end(state, rec, T0 + 0.2)) is True
    [only] = _spooled(state)
    assert (only.end - only.start, only.final) == (0, True)


def test_a_second_close_emits_nothing(state: AgentStateStore) -> None:
    """The final record is emitted once, however often the end is metered."""
    meter = _meter(state)
    ended = _end(state, _running(state), T0 + 5)
    assert meter.close(ended) is True
    assert meter.close(ended) is False
    assert meter.settle() == 0
    assert len(_spooled(state)) == 1


def test_a_stale_cut_is_refused_by_the_store(state: AgentStateStore) -> None:
    """The cursor is compare-and-set: a record from an outdated start cannot overlap."""
    meter = _meter(state)
    _running(state)
    meter.tick(T0 + 10)
    applied = state.spool_usage(
        "sbx-1", start=billing_second(T0), end=billing_second(T0 + 20), final=False,
        msg_id="usage-stale", subject="x", data=b"x",
    )
    assert applied is False
    assert len(_spooled(state)) == 1


def test_a_clock_stepping_back_never_yields_a_negative_interval(state: AgentStateStore) -> None:
    """An end before the cursor gives an empty final record, not a negative one."""
    meter = _meter(state)
    rec = _running(state)
    meter.tick(T0 + 30)
    meter.close(_end(state, rec, T0 + 10))
    last = _spooled(state)[-1]
    assert last.final
    assert last.end == last.start


def test_settle_emits_the_final_record_a_crash_cut_off(state: AgentStateStore) -> None:
    """An end recorded but not metered before a crash is metered by the next process."""
    rec = _running(state)
    _meter(state).tick(T0 + 3)
    _end(state, rec, T0 + 7.5)  # the agent died here, before meter.close
    assert _meter(state).settle() == 1
    records = _spooled(state)
    assert [(r.start, r.end, r.final) for r in records] == [
        (1_767_225_600, 1_767_225_603, False), (1_767_225_603, 1_767_225_608, True)]


def test_a_microvm_sandbox_is_reported_with_microvm_isolation(state: AgentStateStore) -> None:
    """Isolation follows the runtime that holds the sandbox."""
    _running(state, runtime="firecracker")
    _meter(state).tick(T0 + 2)
    assert _spooled(state)[0].isolation == "microvm"
