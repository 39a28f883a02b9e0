"""Usage records validate their fields; the ledger ingests idempotently in any order."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing import (
    InvalidUsageError,
    PriceBook,
    UsageConflictError,
    UsageLedger,
    UsageRecord,
    build_draft,
)
from billing.testing import usage_record, utc


def test_a_record_counts_whole_seconds_between_start_and_end() -> None:
    """A record's seconds are the whole seconds it spans."""
    assert usage_record(seconds=61).seconds == 61


@pytest.mark.parametrize(
    "change",
    [
        {"start": utc(2025, 1, 10).replace(tzinfo=None)},
        {"start": utc(2025, 1, 10).astimezone(timezone(timedelta(hours=2)))},
        {"start": utc(2025, 1, 10).replace(microsecond=5)},
        {"end": utc(2025, 1, 10)},
        {"vcpu": -1},
        {"vcpu": True},
        {"memory_gib": 1.5},
        {"memory_gib": Decimal("NaN")},
        {"memory_gib": Decimal("-1")},
        {"memory_gib": Decimal("0.0000001")},
        {"gpu_count": 1},
        {"gpu_model": "H100"},
        {"tenant_id": ""},
    ],
)
def test_a_record_that_breaks_a_rule_is_rejected(change: dict[str, object]) -> None:
    """Naive, non-UTC or fractional times, bad units and missing ids are refused."""
    with pytest.raises(InvalidUsageError):
        replace(usage_record(), **change)  # type: ignore[arg-type]


def test_ingesting_the_same_record_twice_stores_it_once(ledger: UsageLedger) -> None:
    """The second delivery of an identical record is reported as not new."""
    record = usage_record()
    assert ledger.ingest(record) is True
    assert ledger.ingest(record) is False
    assert len(ledger) == 1


def test_the_same_key_with_different_content_is_a_conflict(ledger: UsageLedger) -> None:
    """A dedupe key reused for different usage raises instead of silently winning."""
    ledger.ingest(usage_record(seconds=10))
    with pytest.raises(UsageConflictError):
        ledger.ingest(usage_record(seconds=11))


def test_dedupe_keys_are_scoped_by_tenant_and_agent(ledger: UsageLedger) -> None:
    """The same record id from another agent or tenant is a different record."""
    assert ledger.ingest(usage_record("r-1", agent_id="a-1"))
    assert ledger.ingest(usage_record("r-1", agent_id="a-2"))
    assert ledger.ingest(usage_record("r-1", tenant_id="t-other"))
    assert len(ledger) == 3


_RECORDS = [
    usage_record("r-1", seconds=1),
    usage_record("r-2", seconds=3599, memory_gib="0.5"),
    usage_record("r-3", start=utc(2025, 1, 31, 23, 59, 59), seconds=2, vcpu=3),
    usage_record("r-4", start=utc(2025, 1, 3), seconds=86_400, gpu_count=1, gpu_model="H100"),
    usage_record("r-5", agent_id="a-2", start=utc(2025, 1, 20, 7), seconds=777, vcpu=2),
    usage_record("r-6", start=utc(2024, 12, 31, 23), seconds=7200, memory_gib="3.25"),
]


deliveries = st.lists(st.sampled_from(_RECORDS), max_size=12).flatmap(
    lambda duplicates: st.permutations([*_RECORDS, *duplicates])
)


@settings(max_examples=60, deadline=None)
@given(deliveries)
def test_any_order_and_duplication_of_records_gives_the_same_invoice(
    delivered: list[UsageRecord],
) -> None:
    """Permuting and duplicating deliveries changes no line and no total."""
    pricebook = PriceBook()
    reference = UsageLedger()
    for record in _RECORDS:
        reference.ingest(record)
    shuffled = UsageLedger()
    new = [shuffled.ingest(record) for record in delivered]
    assert sum(new) == len(_RECORDS)
    for period in ("2024-12", "2025-01"):
        expected = build_draft("t-acme", period, reference, pricebook)
        actual = build_draft("t-acme", period, shuffled, pricebook)
        assert actual.lines == expected.lines
        assert actual.total == expected.total
