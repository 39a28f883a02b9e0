"""Exports: CSV and Parquet round trip, FOCUS passes the FinOps validator, all reconcile."""

from __future__ import annotations

import csv
import io
import resource
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pytest
from focus_validator_runner import FocusValidator

from billing import (
    Invoice,
    Period,
    PriceBook,
    Rate,
    Resource,
    UsageLedger,
    build_draft,
    finalize,
)
from billing.columns import TIMESTAMP, USAGE_SCHEMA
from billing.exports import (
    ExportRow,
    batches_from_rows,
    draft_batches,
    export_batches,
    iter_export_rows,
    read_csv,
    read_focus,
    reconcile,
    write_csv,
    write_focus,
)
from billing.exports.parquet_export import read_parquet, write_parquet
from billing.testing import usage_record, utc


@dataclass(frozen=True, slots=True)
class Billed:
    """A small but varied month of billing: invoices and the ledger behind them."""

    ledger: UsageLedger
    pricebook: PriceBook
    invoices: tuple[Invoice, ...]

    def rows(self) -> Iterator[ExportRow]:
        """Stream the export rows of every invoice."""
        return iter_export_rows(self.invoices, self.ledger, self.pricebook)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Stream the export batches of every invoice."""
        return export_batches(self.invoices, self.ledger, self.pricebook)


@pytest.fixture
def billed() -> Billed:
    """Two tenants, an override, GPUs, a month-crossing record and late usage."""
    pricebook = PriceBook().with_rate(
        Rate(Resource.VCPU, Decimal("0.0125"), utc(2025, 1, 15), tenant_id="t-acme")
    )
    ledger = UsageLedger()
    for i in range(40):
        ledger.ingest(usage_record(
            f"r-{i}", sandbox_id=f"sbx-{i % 7}", start=utc(2025, 1, 1 + i % 28, i % 24),
            seconds=37 + 911 * i, vcpu=1 + i % 4, memory_gib=f"{i % 5}.25",
        ))
    ledger.ingest(usage_record("r-gpu", start=utc(2025, 1, 14, 23), seconds=7201,
                               gpu_count=8, gpu_model="H100", memory_gib="512"))
    ledger.ingest(usage_record("r-cross", start=utc(2025, 1, 31, 22), seconds=14_400))
    ledger.ingest(usage_record("r-b", tenant_id="t-beta", seconds=12_345, memory_gib="0.5"))
    done = [
        finalize(build_draft(t, "2025-01", ledger, pricebook), finalized_at=utc(2025, 2, 1, 1))
        for t in ("t-acme", "t-beta")
    ]
    ledger.ingest(usage_record("r-late", start=utc(2025, 1, 30), seconds=3333, vcpu=2))
    ledger.ingest(usage_record("r-feb", start=utc(2025, 2, 3), seconds=999, memory_gib="3"))
    february = build_draft("t-acme", "2025-02", ledger, pricebook, done)
    return Billed(ledger, pricebook, (*done, february))


def test_the_fixture_bills_usage_overrides_and_adjustments(billed: Billed) -> None:
    """The scenario really exercises adjustments and non-zero totals."""
    february = billed.invoices[-1]
    assert {line.kind.value for line in february.lines} == {"usage", "adjustment"}
    assert all(invoice.total > 0 for invoice in billed.invoices)


def test_export_rows_reconcile_with_the_invoices_to_the_cent(billed: Billed) -> None:
    """Billed cost summed over rows equals every line and every invoice exactly."""
    result = reconcile(billed.rows(), billed.invoices)
    assert result.ok, result.mismatches
    assert result.exported_total == sum((i.total for i in billed.invoices), Decimal(0))
    assert all(row.billed_cost == row.billed_cost.quantize(Decimal("0.01"))
               for row in billed.rows())


def test_reconciliation_reports_a_missing_or_altered_row(billed: Billed) -> None:
    """Dropping a costly row or changing one cent is caught."""
    rows = list(billed.rows())
    costly = max(range(len(rows)), key=lambda i: rows[i].billed_cost)
    dropped = reconcile(rows[:costly] + rows[costly + 1:], billed.invoices)
    bumped = reconcile(
        [*rows[1:], replace(rows[0], billed_cost=rows[0].billed_cost + Decimal("0.01"))],
        billed.invoices,
    )
    assert not dropped.ok
    assert not bumped.ok
    assert {m.line_id for m in bumped.mismatches} == {rows[0].line_id, None}


def test_each_row_is_within_a_cent_of_its_exact_cost(billed: Billed) -> None:
    """Cumulative rounding never moves a row's billed cost a cent or more from its cost."""
    for row in billed.rows():
        assert abs(row.billed_cost - row.contracted_cost) < Decimal("0.01")


def test_csv_export_round_trips_exactly(billed: Billed, tmp_path: Path) -> None:
    """Rows written to CSV read back equal, with UTC Z timestamps in the file."""
    path = tmp_path / "usage.csv"
    assert write_csv(billed.batches(), path) == sum(1 for _ in billed.rows())
    assert list(read_csv(path)) == list(billed.rows())
    first = next(csv.DictReader(path.open()))
    assert first["charge_period_start"].endswith("Z")
    assert reconcile(read_csv(path), billed.invoices).ok


def test_parquet_export_round_trips_exactly(billed: Billed, tmp_path: Path) -> None:
    """Rows written to Parquet in small batches read back equal and reconcile."""
    path = tmp_path / "usage.parquet"
    seen: list[int] = []
    count = write_parquet(batches_from_rows(billed.rows(), 16), path, progress=seen.append)
    assert seen[-1] == count
    assert seen == sorted(seen)
    assert len(seen) > 1
    assert list(read_parquet(path)) == list(billed.rows())
    assert reconcile(read_parquet(path), billed.invoices).ok


def test_focus_export_round_trips_and_reconciles(billed: Billed, tmp_path: Path) -> None:
    """The FOCUS file reads back into the same rows and its BilledCost matches the invoices."""
    path = tmp_path / "focus.csv"
    write_focus(billed.batches(), path)
    assert list(read_focus(path)) == list(billed.rows())
    assert reconcile(read_focus(path), billed.invoices).ok
    header = next(csv.reader(path.open()))
    custom = [name for name in header if not name[0].isupper()]
    assert custom
    assert all(name.startswith("x_") for name in custom)


def test_focus_export_passes_the_finops_validator(
    billed: Billed, tmp_path: Path, focus_validator: FocusValidator
) -> None:
    """focus-validator 2.2.1 finds no error in the FOCUS 1.2 export."""
    path = tmp_path / "focus.csv"
    write_focus(billed.batches(), path)
    report = focus_validator.validate(path)
    assert report.passed > 100
    assert report.errors == frozenset(), report.output[-4000:]


def _drop_column(cells: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in cells.items() if name != "BilledCost"}


def _bad_category(cells: dict[str, str]) -> dict[str, str]:
    return {**cells, "ChargeCategory": "Sandbox"}


@pytest.mark.parametrize(
    "breakage", [_drop_column, _bad_category], ids=["no-BilledCost", "bad-ChargeCategory"]
)
def test_a_broken_focus_file_fails_the_validator(
    billed: Billed,
    tmp_path: Path,
    focus_validator: FocusValidator,
    breakage: object,
) -> None:
    """A missing mandatory column or a value outside FOCUS's allowed set is an error."""
    assert callable(breakage)
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    write_focus(billed.batches(), good)
    with good.open(newline="") as source:
        broken = [breakage(cells) for cells in csv.DictReader(source)]
    with bad.open("w", newline="") as target:
        writer = csv.DictWriter(target, fieldnames=list(broken[0]))
        writer.writeheader()
        writer.writerows(broken)
    assert focus_validator.validate(bad).errors


LARGE = 200_000
BATCH = 5_000


def _many_batches(template: ExportRow, count: int, pulled: list[int]) -> Iterator[pa.RecordBatch]:
    (batch,) = batches_from_rows([template])
    for start in range(0, count, BATCH):
        pulled[0] += BATCH
        ids = pa.array([f"r-{i}" for i in range(start, start + BATCH)], pa.string())
        repeated = batch.take(pa.array([0] * BATCH))
        index = batch.schema.get_field_index("record_id")
        yield repeated.set_column(index, batch.schema.field(index), ids)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.parametrize("writer", [write_csv, write_parquet, write_focus],
                         ids=["csv", "parquet", "focus"])
def test_a_large_export_streams_with_bounded_memory(
    billed: Billed, tmp_path: Path, writer: object
) -> None:
    """200,000 rows from a generator are written with at most one batch pulled ahead."""
    assert callable(writer)
    template = next(billed.rows())
    pulled = [0]
    lag: list[int] = []

    def progress(written: int) -> None:
        lag.append(pulled[0] - written)

    before = _peak_rss_bytes()
    count = writer(_many_batches(template, LARGE, pulled), tmp_path / "large", progress=progress)
    assert count == LARGE
    assert len(lag) == LARGE // BATCH
    assert max(lag) == 0
    # Holding all 200,000 rows would raise peak RSS by about 150 MiB.
    growth = _peak_rss_bytes() - before
    assert growth < 64 * 2**20, f"peak RSS grew by {growth / 2**20:.1f} MiB"


class _GeneratedUsage:
    """A UsageSource that makes a tenant's records column-wise, batch after batch, on demand."""

    def __init__(self, batches: int, size: int) -> None:
        self.count, self.size = batches, size
        self.pulled = 0

    def watermark_for(self, tenant_id: str) -> int:
        return self.count * self.size

    def batches(self, tenant_id: str, periods: Sequence[Period]) -> Iterator[pa.RecordBatch]:
        january = int(utc(2025, 1, 1).timestamp())
        for number in range(self.count):
            first = number * self.size
            seq = pa.array(range(first + 1, first + self.size + 1), pa.int64())
            start = pc.add(pc.multiply(pc.subtract(seq, 1), 2), january)
            self.pulled += 1
            yield pa.RecordBatch.from_arrays([
                seq,
                pa.repeat(pa.scalar("a-1"), self.size),
                pc.cast(seq, pa.string()),
                pa.repeat(pa.scalar("sbx-1"), self.size),
                start.cast(TIMESTAMP),
                pc.add(start, 3600).cast(TIMESTAMP),
                pa.repeat(pa.scalar(2), self.size),
                pa.repeat(pa.scalar(1_500_000), self.size),
                pa.repeat(pa.scalar(0), self.size),
                pa.nulls(self.size, pa.string()),
                pa.repeat(pa.scalar("gvisor"), self.size),
                pa.repeat(pa.scalar("base"), self.size),
                pa.repeat(pa.scalar("h-1"), self.size),
            ], schema=USAGE_SCHEMA)


class _Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        return len(data)


def test_drafting_and_exporting_400_000_records_holds_one_batch_at_a_time() -> None:
    """Usage is pulled a batch at a time while rows are written; memory does not follow N."""
    usage = _GeneratedUsage(batches=80, size=5_000)
    pricebook = PriceBook()
    before = _peak_rss_bytes()
    draft = build_draft("t-acme", "2025-01", usage, pricebook)
    pulled_by_draft = usage.pulled
    progress: list[tuple[int, int]] = []
    rows = draft_batches("t-acme", "2025-01", usage, pricebook)
    written = write_csv(rows, _Discard(),  # type: ignore[arg-type]
                        progress=lambda n: progress.append((usage.pulled, n)))
    assert pulled_by_draft == 80
    assert written == 2 * 400_000
    # Each batch of rows was written before the next batch of usage was made.
    assert [pulled - pulled_by_draft for pulled, _ in progress] == list(range(1, 81))
    assert draft.total > 0
    # 800,000 rows held at once would be several hundred MiB.
    growth = _peak_rss_bytes() - before
    assert growth < 96 * 2**20, f"peak RSS grew by {growth / 2**20:.1f} MiB"
