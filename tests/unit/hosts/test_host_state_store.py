"""Hosts and placements in the agent's SQLite state: schema steps, and surviving a reopen."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from byoc_agent.hosts.phases import ALLOWED, LIVE, HostPhase, can_move
from byoc_agent.state import AgentStateStore, HostRecord, Placement
from byoc_agent.state.store import SCHEMA_VERSION

pytestmark = pytest.mark.providers

# The schema as it was before steps were numbered (user_version 0).
_UNVERSIONED = """
CREATE TABLE identity (id INTEGER PRIMARY KEY CHECK (id = 1), agent_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL, kid TEXT NOT NULL, nats_url TEXT NOT NULL);
CREATE TABLE applied_jobs (job_id TEXT PRIMARY KEY, seq INTEGER NOT NULL,
    status TEXT NOT NULL, result BLOB, job BLOB);
INSERT INTO identity VALUES (1, 'agt-old', 'ten-old', 'kid', 'nats://127.0.0.1:4222');
"""


def test_a_state_file_from_before_versioning_is_upgraded_in_place(tmp_path: Path) -> None:
    """An unversioned file keeps its rows and gains the hosts tables at the latest step."""
    path = tmp_path / "agent-state.db"
    with sqlite3.connect(path) as db:
        db.executescript(_UNVERSIONED)
    store = AgentStateStore(path)
    try:
        assert store.schema_version() == SCHEMA_VERSION == 3
        ident = store.identity()
        assert ident is not None
        assert ident.agent_id == "agt-old"
        assert store.hosts() == []
        assert store.placements() == []
    finally:
        store.close()


def test_a_state_file_from_a_newer_agent_is_refused(tmp_path: Path) -> None:
    """Opening a schema this agent does not know fails loudly instead of guessing."""
    path = tmp_path / "agent-state.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="newer than this agent knows"):
        AgentStateStore(path)


def test_hosts_and_placements_survive_a_reopen(tmp_path: Path) -> None:
    """Everything written is read back identically by a new store on the same file."""
    path = tmp_path / "agent-state.db"
    rec = HostRecord(
        host_key="ch-1", provider="aws", instance_type="c5.metal", phase=HostPhase.READY,
        vcpu=96, memory_mb=196608, gpus=0, kvm=True, price_per_hour=Decimal("4.08"),
        requested_at=1.5, phase_since=2.5, ready_by=901.5, provider_host_id="i-0abc",
        private_ip="10.0.0.5", idle_since=3.0, reason=None, replaces="ch-0",
    )
    placed = Placement("sbx-1", "ch-1", 2, 2048, 0, "microvm", 4.0)
    waiting = Placement("sbx-2", None, 64, 8192, 1, "gvisor", 5.0)
    store = AgentStateStore(path)
    store.put_host(rec)
    store.put_placement(placed)
    store.put_placement(waiting)
    store.close()
    again = AgentStateStore(path)
    try:
        assert again.hosts() == [rec]
        assert again.hosts(frozenset({HostPhase.FAILED})) == []
        assert again.placements() == [placed, waiting]
        assert again.placements("ch-1") == [placed]
        assert again.get_placement("sbx-2") == waiting
        again.delete_placement("sbx-1")
        assert again.placements("ch-1") == []
    finally:
        again.close()


def test_terminal_phases_never_change_and_live_phases_are_the_rest() -> None:
    """TERMINATED and FAILED allow no move; a host can fail until it is draining."""
    for phase in HostPhase:
        if phase in (HostPhase.TERMINATED, HostPhase.FAILED):
            assert ALLOWED[phase] == frozenset()
            assert phase not in LIVE
        else:
            assert phase in LIVE
    for phase in (HostPhase.REQUESTED, HostPhase.PROVISIONING, HostPhase.READY):
        assert can_move(phase, HostPhase.FAILED)
    assert not can_move(HostPhase.READY, HostPhase.PROVISIONING)
    assert not can_move(HostPhase.DRAINING, HostPhase.READY)  # no un-draining
