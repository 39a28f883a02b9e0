"""Billing from the database, streamed: batches of stored usage, ranks, exports that reconcile."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import anyio.to_thread
import pytest
from sqlalchemy import insert, select

from billing.exports import read_csv, reconcile
from control_plane.invoicing import InvoiceService, StoredUsageSource
from control_plane.store import Database, agents, sandboxes, tenants
from control_plane.store.agents import AgentReport, Capacity
from control_plane.store.sandboxes import NewSandbox
from control_plane.store.usage import UsageRow
from control_plane.usage_export import ExportFormat, UsageExporter, parse_period, stream_export

OCT = datetime(2026, 10, 1, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)
REPORT = AgentReport(
    data_plane_url="http://10.0.0.5:7000",
    runtimes=(),
    templates=(),
    capacity=Capacity(cpu_total=0, cpu_free=0, memory_mb_total=0, memory_mb_free=0, sandboxes=0),
)


def _tenant(db: Database, name: str) -> tuple[str, str, str]:
    """A tenant with an enrolled agent and one sandbox on it."""
    tenant, _ = db.run_sync(lambda s: tenants.create_tenant(s, name))
    token = db.run_sync(lambda s: agents.create_enrollment_token(s, tenant.id, 600))
    agent = db.run_sync(lambda s: agents.enroll(s, token.token, "a", "x" * 43, REPORT))
    new = NewSandbox(tenant.id, agent.id, "base", cpu=1, memory_mb=512, timeout_s=60)
    sandbox = db.run_sync(lambda s: sandboxes.create_sandbox(s, new))
    return tenant.id, agent.id, sandbox.id


def _store(db: Database, owner: tuple[str, str, str], prefix: str, starts: list[datetime],
           seconds: int = 700, memory_mb: int = 1000) -> None:
    tenant_id, agent_id, sandbox_id = owner
    rows = [
        {"tenant_id": tenant_id, "agent_id": agent_id, "record_id": f"{prefix}-{i}",
         "sandbox_id": sandbox_id, "start": start, "end": start + timedelta(seconds=seconds),
         "vcpu": 1 + i % 3, "memory_mb": memory_mb, "gpu_count": 0, "gpu_model": None,
         "isolation": "gvisor", "template": "base", "host": "h-1", "received_at": NOV}
        for i, start in enumerate(starts)
    ]
    db.run_sync(lambda s: s.execute(insert(UsageRow), rows))


@pytest.fixture
def billed(db: Database) -> tuple[str, str]:
    """Two tenants, interleaved: 1,200 records in October and November, some crossing."""
    acme, globex = _tenant(db, "acme"), _tenant(db, "globex")
    for chunk in range(4):
        _store(db, acme, f"a{chunk}", [OCT + timedelta(days=29, seconds=997 * i + chunk)
                                       for i in range(250)])
        _store(db, globex, f"g{chunk}", [NOV + timedelta(seconds=3001 * i + chunk)
                                         for i in range(50)])
    return acme[0], globex[0]


def test_stored_usage_streams_in_batches_with_ranks_over_every_month(
    db: Database, billed: tuple[str, str]
) -> None:
    """Only November's records come back, 100 at a time, ranked among all the tenant's."""
    acme, _ = billed
    november = parse_period("2026-11")

    def read(s: object) -> tuple[int, list[int]]:
        source = StoredUsageSource(s, batch_size=100)  # type: ignore[arg-type]
        sizes, ranks = [], []
        for batch in source.batches(acme, [november]):
            sizes.append(batch.num_rows)
            ranks.extend(batch["seq"].to_pylist())
        return source.watermark_for(acme), [*sizes, -1, *ranks]

    watermark, out = db.run_sync(read)
    split = out.index(-1)
    sizes, ranks = out[:split], out[split + 1:]
    assert watermark == 1000
    assert max(sizes) == 100
    assert len(sizes) > 3
    assert ranks == sorted(ranks)
    # The first 250-record chunk (October only) still counts: ranks start after it.
    assert ranks[0] > 1
    assert len(ranks) < 1000


def test_an_export_read_in_small_batches_reconciles_with_the_invoices(
    db: Database, billed: tuple[str, str], tmp_path: Path
) -> None:
    """Read 64 records at a time, the CSV's billed cost equals every invoice, to the cent."""
    november = parse_period("2026-11")
    steps: list[int] = []
    path = tmp_path / "nov.csv"
    written = UsageExporter(db, read_batch=64).write(
        november, ExportFormat.CSV, path, progress=steps.append
    )
    invoices = InvoiceService(db).invoices(november)
    assert len(invoices) == 2
    assert all(invoice.total > 0 for invoice in invoices)
    assert written == steps[-1]
    assert len(steps) > 5
    assert max(b - a for a, b in zip([0, *steps], steps, strict=False)) <= 64 * 2
    result = reconcile(read_csv(path), invoices)
    assert result.ok, result.mismatches
    assert result.rows == written


def test_late_usage_after_finalizing_october_is_exported_as_an_adjustment(
    db: Database, billed: tuple[str, str], tmp_path: Path
) -> None:
    """A record for October stored after October was finalized lands on November, once."""
    acme, _ = billed
    service = InvoiceService(db, clock=lambda: datetime(2026, 11, 2, tzinfo=UTC))
    october = service.finalize(acme, parse_period("2026-10"))
    owner = db.run_sync(lambda s: s.execute(
        select(UsageRow.tenant_id, UsageRow.agent_id, UsageRow.sandbox_id)
        .where(UsageRow.tenant_id == acme).limit(1)
    ).one())
    _store(db, (owner[0], owner[1], owner[2]), "late", [OCT + timedelta(days=3)], seconds=3600)
    november = service.invoice(acme, parse_period("2026-11"))
    adjustments = [line for line in november.lines if line.kind.value == "adjustment"]
    assert adjustments
    assert sum((line.amount for line in adjustments), Decimal(0)) > 0
    path = tmp_path / "nov.csv"
    UsageExporter(db, read_batch=50).write(parse_period("2026-11"), ExportFormat.CSV, path)
    rows = list(read_csv(path))
    assert reconcile(rows, InvoiceService(db).invoices(parse_period("2026-11"))).ok
    assert [r.record_id for r in rows if r.line_kind == "adjustment"] == ["late-0", "late-0"]
    # October's export is still exactly its finalized invoice.
    oct_path = tmp_path / "oct.csv"
    UsageExporter(db, read_batch=50).write(parse_period("2026-10"), ExportFormat.CSV, oct_path)
    assert reconcile(read_csv(oct_path), [october]).ok


def _export_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("billing-export-")]


@pytest.mark.anyio
async def test_the_http_stream_sends_chunks_in_order_and_stops_when_closed(
    db: Database, billed: tuple[str, str], tmp_path: Path
) -> None:
    """The streamed bytes equal the file export; closing the stream early ends the worker."""
    november = parse_period("2026-11")
    exporter = UsageExporter(db, read_batch=100)
    tenants = exporter.check(november)
    chunks = [chunk async for chunk in stream_export(exporter, november, ExportFormat.FOCUS,
                                                     tenants)]
    path = tmp_path / "nov.csv"
    exporter.write(november, ExportFormat.FOCUS, path)
    assert b"".join(chunks) == path.read_bytes()
    assert len(chunks) > 1

    # 1 KiB chunks: the worker fills the bounded queue and waits for the client.
    body = stream_export(exporter, november, ExportFormat.FOCUS, tenants, chunk_bytes=1024)
    assert await anext(body)
    await body.aclose()
    for worker in _export_threads():
        await anyio.to_thread.run_sync(worker.join, 10)
    assert _export_threads() == []
