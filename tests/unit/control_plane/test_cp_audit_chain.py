"""The audit chain under concurrent writers: appends serialize, the chain never forks."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy.orm import Session

from control_plane.store import Database, audit
from control_plane.store.audit import AuditEvent

pytestmark = pytest.mark.security


def test_concurrent_appends_form_one_unbroken_chain(db: Database) -> None:
    """Eight writers appending at once leave a gap-free chain that verifies."""
    writers, each = 8, 12

    def write(n: int) -> None:
        for i in range(each):
            db.run_sync(lambda s, i=i: audit.append(s, AuditEvent(
                action="test.append", actor=f"writer-{n}", subject=str(i),
            )))

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(writers)))
    check = db.run_sync(audit.verify_chain)
    assert check.ok, check
    assert check.entries == writers * each
    page = db.run_sync(lambda s: audit.list_entries(s, tenant_id=None, after=None, limit=200))
    assert [e.seq for e in page.items] == list(range(1, writers * each + 1))
    assert len({e.prev_hash for e in page.items}) == writers * each


def test_an_entry_that_rolls_back_leaves_no_trace_in_the_chain(db: Database) -> None:
    """An append inside a failed transaction disappears with it; the chain stays whole."""
    db.run_sync(lambda s: audit.append(s, AuditEvent(action="test.kept", actor="t")))

    def failing(s: Session) -> None:
        audit.append(s, AuditEvent(action="test.lost", actor="t"))
        raise RuntimeError("the change it recorded failed")

    with pytest.raises(RuntimeError):
        db.run_sync(failing)
    db.run_sync(lambda s: audit.append(s, AuditEvent(action="test.after", actor="t")))
    check = db.run_sync(audit.verify_chain)
    assert check.ok
    page = db.run_sync(lambda s: audit.list_entries(s, tenant_id=None, after=None, limit=10))
    assert [e.action for e in page.items] == ["test.kept", "test.after"]
