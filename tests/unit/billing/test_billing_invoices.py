"""Invoices: drafts round per line, finalized ones never change, late usage is adjusted later."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from billing import (
    InvoiceFinalizedError,
    InvoiceIntegrityError,
    InvoiceStatus,
    LineKind,
    PriceBook,
    UsageLedger,
    build_draft,
    finalize,
    verify,
)
from billing.testing import usage_record, utc

FINALIZED_AT = utc(2025, 2, 1, 2)


def test_a_draft_totals_lines_that_are_each_rounded_once(
    ledger: UsageLedger, pricebook: PriceBook
) -> None:
    """Line amounts are rounded from exact sums, and the total adds the rounded lines."""
    for i in range(3):
        ledger.ingest(usage_record(f"r-{i}", seconds=1000, memory_gib="1"))
    draft = build_draft("t-acme", "2025-01", ledger, pricebook)
    amounts = {line.resource.value: line.amount for line in draft.lines}
    # 3,000 vCPU-seconds: 0.0138916.. -> 0.01; 3,000 GiB-seconds: 0.0069416.. -> 0.01
    assert amounts == {"vcpu": Decimal("0.01"), "memory": Decimal("0.01")}
    assert draft.total == Decimal("0.02")
    assert draft.status is InvoiceStatus.DRAFT


def test_an_invoice_only_bills_its_own_tenant_and_month(
    ledger: UsageLedger, pricebook: PriceBook
) -> None:
    """Usage of other tenants and other months stays off the invoice."""
    ledger.ingest(usage_record("r-1"))
    ledger.ingest(usage_record("r-2", tenant_id="t-other"))
    ledger.ingest(usage_record("r-3", start=utc(2025, 2, 3)))
    draft = build_draft("t-acme", "2025-01", ledger, pricebook)
    assert [line.unit_seconds for line in draft.lines] == [Decimal(3600)]


def test_finalizing_records_a_hash_that_verifies(ledger: UsageLedger, pricebook: PriceBook) -> None:
    """A freshly finalized invoice verifies."""
    ledger.ingest(usage_record())
    final = finalize(build_draft("t-acme", "2025-01", ledger, pricebook), finalized_at=FINALIZED_AT)
    assert final.status is InvoiceStatus.FINALIZED
    assert final.content_hash is not None
    assert verify(final)


def test_any_change_to_a_finalized_invoice_is_detected(
    ledger: UsageLedger, pricebook: PriceBook
) -> None:
    """Changing a line amount, dropping a line or moving a watermark breaks verification."""
    ledger.ingest(usage_record(memory_gib="2"))
    final = finalize(build_draft("t-acme", "2025-01", ledger, pricebook), finalized_at=FINALIZED_AT)
    first = final.lines[0]
    tampered = [
        replace(final, lines=(replace(first, amount=first.amount + Decimal("0.01")),
                              *final.lines[1:])),
        replace(final, lines=final.lines[1:]),
        replace(final, watermark=final.watermark + 1),
        replace(final, finalized_at=utc(2025, 2, 2)),
    ]
    assert not any(verify(invoice) for invoice in tampered)


def test_a_finalized_invoice_cannot_be_finalized_or_redrafted(
    ledger: UsageLedger, pricebook: PriceBook
) -> None:
    """The period is closed: no second finalization and no new draft."""
    ledger.ingest(usage_record())
    final = finalize(build_draft("t-acme", "2025-01", ledger, pricebook), finalized_at=FINALIZED_AT)
    with pytest.raises(InvoiceFinalizedError):
        finalize(final, finalized_at=FINALIZED_AT)
    with pytest.raises(InvoiceFinalizedError):
        build_draft("t-acme", "2025-01", ledger, pricebook, [final])


def test_a_tampered_finalized_invoice_is_refused_when_drafting_the_next(
    ledger: UsageLedger, pricebook: PriceBook
) -> None:
    """Drafting on top of an invoice that fails its hash check raises."""
    ledger.ingest(usage_record())
    final = finalize(build_draft("t-acme", "2025-01", ledger, pricebook), finalized_at=FINALIZED_AT)
    with pytest.raises(InvoiceIntegrityError):
        build_draft("t-acme", "2025-02", ledger, pricebook, [replace(final, watermark=0)])


def test_late_usage_is_billed_as_an_adjustment_in_the_next_period(
    ledger: UsageLedger, pricebook: PriceBook
) -> None:
    """A January record arriving after January closed lands on February as an adjustment."""
    ledger.ingest(usage_record("r-1"))
    january = finalize(
        build_draft("t-acme", "2025-01", ledger, pricebook), finalized_at=FINALIZED_AT
    )
    ledger.ingest(usage_record("r-late", start=utc(2025, 1, 20), seconds=7200))
    ledger.ingest(usage_record("r-feb", start=utc(2025, 2, 2)))
    february = build_draft("t-acme", "2025-02", ledger, pricebook, [january])
    kinds = {(line.kind, line.usage_period, line.unit_seconds) for line in february.lines}
    assert kinds == {
        (LineKind.ADJUSTMENT, "2025-01", Decimal(7200)),
        (LineKind.USAGE, "2025-02", Decimal(3600)),
    }
    assert verify(january)
    assert january.total == Decimal("0.02")


def test_late_usage_skips_finalized_months_to_the_first_open_one(
    ledger: UsageLedger, pricebook: PriceBook
) -> None:
    """With January and February closed, late January usage goes to March, once."""
    ledger.ingest(usage_record("r-1"))
    january = finalize(
        build_draft("t-acme", "2025-01", ledger, pricebook), finalized_at=FINALIZED_AT
    )
    february = finalize(
        build_draft("t-acme", "2025-02", ledger, pricebook, [january]), finalized_at=FINALIZED_AT
    )
    ledger.ingest(usage_record("r-late", start=utc(2025, 1, 5), seconds=60))
    closed = [january, february]
    assert all(line.kind is LineKind.USAGE for line in february.lines)
    april = build_draft("t-acme", "2025-04", ledger, pricebook, closed)
    assert april.lines == ()
    march = finalize(
        build_draft("t-acme", "2025-03", ledger, pricebook, closed), finalized_at=FINALIZED_AT
    )
    assert [(line.kind, line.unit_seconds) for line in march.lines] == [
        (LineKind.ADJUSTMENT, Decimal(60))
    ]
    april = build_draft("t-acme", "2025-04", ledger, pricebook, [*closed, march])
    assert april.lines == ()


def test_a_record_split_across_a_closed_month_bills_only_its_open_part(
    ledger: UsageLedger, pricebook: PriceBook
) -> None:
    """The February half of a late record is usage; the January half is an adjustment."""
    january = finalize(
        build_draft("t-acme", "2025-01", ledger, pricebook), finalized_at=FINALIZED_AT
    )
    ledger.ingest(usage_record("r-1", start=utc(2025, 1, 31, 23), seconds=7200))
    february = build_draft("t-acme", "2025-02", ledger, pricebook, [january])
    assert sorted((line.kind.value, line.unit_seconds) for line in february.lines) == [
        ("adjustment", Decimal(3600)),
        ("usage", Decimal(3600)),
    ]


def test_redelivered_late_usage_is_not_adjusted_twice(
    ledger: UsageLedger, pricebook: PriceBook
) -> None:
    """A duplicate of an already invoiced record changes nothing."""
    record = usage_record("r-1")
    ledger.ingest(record)
    january = finalize(
        build_draft("t-acme", "2025-01", ledger, pricebook), finalized_at=FINALIZED_AT
    )
    assert ledger.ingest(record) is False
    february = build_draft("t-acme", "2025-02", ledger, pricebook, [january])
    assert february.lines == ()
