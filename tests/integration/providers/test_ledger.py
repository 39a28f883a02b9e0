"""HostLedger: the GCP and Azure providers' memory of client tokens, on disk."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from byoc_agent.protocol.errors import InvalidArgumentError
from byoc_agent.providers.base import HostState
from byoc_agent.providers.ledger import HostLedger, LedgerEntry


def entry(host_id: str, token: str) -> LedgerEntry:
    return LedgerEntry(
        host_id=host_id,
        client_token=token,
        instance_type="n2-standard-32",
        tags={"corral:tenant": "t-1"},
        launched_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        private_ip="10.0.0.7",
    )


def test_entries_and_terminations_survive_a_reload(tmp_path: Path) -> None:
    """A second ledger on the same file knows every token and which hosts are gone."""
    path = tmp_path / "state" / "ledger.json"
    first = HostLedger(path)
    first.record(entry("h-1", "tok-1"))
    first.record(entry("h-2", "tok-2"))
    first.mark_terminated("h-2")

    second = HostLedger(path)
    live, gone = second.by_token("tok-1"), second.by_token("tok-2")
    assert live is not None
    assert live.terminated_at is None
    assert gone is not None
    assert gone.terminated_at is not None
    host = gone.terminated_host()
    assert (host.host_id, host.state, host.private_ip) == ("h-2", HostState.TERMINATED, "10.0.0.7")
    assert second.get("h-1") == live
    assert second.by_token("tok-3") is None
    assert not list(path.parent.glob(".ledger-*")), "a temporary file was left behind"


def test_terminating_twice_keeps_the_first_time(tmp_path: Path) -> None:
    """mark_terminated is idempotent and returns None for a host it never saw."""
    ledger = HostLedger(tmp_path / "ledger.json")
    ledger.record(entry("h-1", "tok-1"))
    first = ledger.mark_terminated("h-1")
    again = ledger.mark_terminated("h-1")
    assert first is not None
    assert again is not None
    assert again.terminated_at == first.terminated_at
    assert ledger.mark_terminated("h-unknown") is None


def test_a_corrupt_ledger_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """A half-written or edited file stops the provider instead of forgetting hosts."""
    path = tmp_path / "ledger.json"
    path.write_text("{not json")
    with pytest.raises(InvalidArgumentError, match="restore it from a backup"):
        HostLedger(path)
