"""Properties of billing over random usage: exact per-second totals, idempotent replay, exports.

The expected amounts are computed here independently and simply: every second of every
record is priced on its own, as a :class:`fractions.Fraction`, at the rate in force at that
second, and each invoice line (usage month, resource, rate) is rounded to the cent once
with Python's own half-even ``round``. The window straddles a month boundary and a
tenant price change, so records are split both ways.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction

import pyarrow as pa  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import (
    Period,
    PriceBook,
    Rate,
    Resource,
    UnpricedResourceError,
    UsageLedger,
    UsageRecord,
    build_draft,
    finalize,
    rate_record,
)
from billing.columns import entries_to_batches, round_ratio_column, round_ratio_int
from billing.exports import ExportRow, iter_export_rows, reconcile
from billing.testing import usage_record, utc

WINDOW_START = utc(2025, 1, 31, 23)
WINDOW_SECONDS = 2 * 3600
"""Records start in the last hour of January or the first of February."""

TENANT = "t-acme"
DEFAULT_VCPU = Decimal("0.01667")
GPU_RATE = Decimal("2.74")
MEMORY_RATE = Decimal("0.00833")

PROPERTY_SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def usage_sets(draw: st.DrawFn) -> tuple[list[UsageRecord], int, Decimal]:
    """Random records in the window, and a tenant vCPU price taking effect inside it."""
    change_at = draw(st.integers(1, WINDOW_SECONDS - 1))
    override = Decimal(draw(st.integers(1, 10**7))).scaleb(-9)  # up to 0.01 USD, 9 places
    count = draw(st.integers(1, 12))
    records: list[UsageRecord] = []
    for i in range(count):
        offset = draw(st.integers(0, WINDOW_SECONDS - 1))
        seconds = draw(st.integers(1, 1500))
        gpus = draw(st.integers(0, 2))
        records.append(usage_record(
            f"r-{i}",
            agent_id=draw(st.sampled_from(["a-1", "a-2"])),
            sandbox_id=f"sbx-{i % 3}",
            start=WINDOW_START + timedelta(seconds=offset),
            seconds=seconds,
            vcpu=draw(st.integers(0, 8)),
            memory_gib=Decimal(draw(st.integers(0, 16 * 10**6))).scaleb(-6),
            gpu_count=gpus,
            gpu_model="H100" if gpus else None,
        ))
    return records, change_at, override


def _pricebook(change_at: int, override: Decimal) -> PriceBook:
    effective = WINDOW_START + timedelta(seconds=change_at)
    return PriceBook().with_rate(Rate(Resource.VCPU, override, effective, tenant_id=TENANT))


def _expected_lines(
    records: Iterable[UsageRecord], change_at: int, override: Decimal
) -> dict[str, dict[tuple[str, Decimal], Fraction]]:
    """Per usage month, per (resource, hourly rate): the exact sum of per-second charges."""
    changed = WINDOW_START + timedelta(seconds=change_at)
    lines: dict[str, dict[tuple[str, Decimal], Fraction]] = defaultdict(Counter)  # type: ignore[arg-type]
    for record in records:
        second = record.start
        while second < record.end:
            month = f"{second.year:04d}-{second.month:02d}"
            vcpu_rate = override if second >= changed else DEFAULT_VCPU
            held = ((Resource.VCPU.value, vcpu_rate, record.vcpu),
                    (Resource.MEMORY.value, MEMORY_RATE, record.memory_gib),
                    (Resource.GPU.value, GPU_RATE, record.gpu_count))
            for resource, rate, units in held:
                if units:
                    charge = Fraction(rate) * Fraction(units) / 3600
                    lines[month][(resource, rate)] += charge
            second += timedelta(seconds=1)
    return lines


def _ledger(records: Iterable[UsageRecord]) -> UsageLedger:
    ledger = UsageLedger()
    for record in records:
        ledger.ingest(record)
    return ledger


@PROPERTY_SETTINGS
@given(usage_sets())
def test_an_invoice_total_is_the_exact_sum_of_per_second_charges_rounded_per_line(
    drawn: tuple[list[UsageRecord], int, Decimal],
) -> None:
    """Each line is the exact per-second sum rounded once; the total adds those lines."""
    records, change_at, override = drawn
    pricebook = _pricebook(change_at, override)
    ledger = _ledger(records)
    expected = _expected_lines(records, change_at, override)
    for period in ("2025-01", "2025-02"):
        draft = build_draft(TENANT, period, ledger, pricebook)
        want = expected.get(period, {})
        got = {(line.resource.value, line.unit_price): line.amount for line in draft.lines}
        assert set(got) == {key for key, exact in want.items() if exact}
        for key, amount in got.items():
            assert Fraction(amount) == round(want[key], 2), key
        assert draft.total == sum((round(v, 2) for v in want.values()), Fraction(0))
        exact_total = sum(want.values(), Fraction(0))
        assert abs(Fraction(draft.total) - exact_total) <= Fraction(len(want), 200)


@PROPERTY_SETTINGS
@given(usage_sets(), st.data())
def test_replaying_any_subset_of_records_changes_nothing(
    drawn: tuple[list[UsageRecord], int, Decimal], data: st.DataObject
) -> None:
    """Redelivering any records, in any order, is refused as a duplicate and bills nothing."""
    records, change_at, override = drawn
    pricebook = _pricebook(change_at, override)
    ledger = _ledger(records)
    before = {p: build_draft(TENANT, p, ledger, pricebook) for p in ("2025-01", "2025-02")}
    january = finalize(before["2025-01"], finalized_at=utc(2025, 2, 1, 3))
    replay = data.draw(st.lists(st.sampled_from(records), max_size=2 * len(records)))
    assert not any(ledger.ingest(record) for record in replay)
    assert len(ledger) == len(records)
    assert build_draft(TENANT, "2025-01", ledger, pricebook) == before["2025-01"]
    # With January finalized, a replay is not late usage: February gets no adjustment line.
    february = build_draft(TENANT, "2025-02", ledger, pricebook, [january])
    assert {line.kind.value for line in february.lines} <= {"usage"}
    assert february.lines == before["2025-02"].lines


class _Batched:
    """A UsageSource over a ledger that cuts batches of a chosen size."""

    def __init__(self, ledger: UsageLedger, size: int) -> None:
        self._ledger = ledger
        self._size = size

    def watermark_for(self, tenant_id: str) -> int:
        return self._ledger.watermark

    def batches(self, tenant_id: str, periods: Sequence[Period]) -> Iterator[pa.RecordBatch]:
        return entries_to_batches(self._ledger.entries(tenant_id), self._size)


def _cost_lines(
    records: Iterable[UsageRecord], pricebook: PriceBook
) -> Counter[tuple[object, ...]]:
    return Counter(
        (c.record.record_id, c.resource.value, c.start, c.end, c.unit_seconds, c.quantity_hours,
         c.cost, c.list_cost)
        for record in records for c in rate_record(record, pricebook)
    )


def _row_keys(rows: Iterable[ExportRow]) -> Counter[tuple[object, ...]]:
    return Counter(
        (r.record_id, r.resource, r.charge_period_start, r.charge_period_end, r.unit_seconds,
         r.quantity, r.contracted_cost, r.list_cost)
        for r in rows
    )


@PROPERTY_SETTINGS
@given(usage_sets(), st.integers(1, 7))
def test_export_rows_match_per_record_rating_and_reconcile_whatever_the_batch_size(
    drawn: tuple[list[UsageRecord], int, Decimal], batch_size: int
) -> None:
    """Column-wise rows equal the per-record cost lines; cents add up to each invoice line
    and are allocated to the same rows whatever the batch size."""
    records, change_at, override = drawn
    pricebook = _pricebook(change_at, override)
    ledger = _ledger(records)
    invoices = [build_draft(TENANT, p, ledger, pricebook) for p in ("2025-01", "2025-02")]
    rows = list(iter_export_rows(invoices, ledger, pricebook))
    assert _row_keys(rows) == _cost_lines(records, pricebook)
    assert reconcile(rows, invoices).ok
    small = list(iter_export_rows(invoices, _Batched(ledger, batch_size), pricebook))
    assert small == rows


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 2**62), min_size=1, max_size=20),
    st.integers(1, 10**12),
    st.integers(1, 10**7),
)
def test_column_rounding_equals_integer_rounding_or_refuses(
    values: list[int], k: int, d: int
) -> None:
    """The int64 kernel gives Python's exact half-even result, or raises on overflow."""
    expected = [round_ratio_int(v, k, d) for v in values]
    assert expected == [round(Fraction(k * v, d)) for v in values]
    try:
        got = round_ratio_column(pa.array(values, pa.int64()), k, d).to_pylist()
    except pa.ArrowInvalid:
        assert max(expected) > 2**63 - 1 or k * max(values) > 2**63 - 1 or k * d > 2**63 - 1
    else:
        assert got == expected


def test_usage_too_large_for_int64_columns_is_still_rated_exactly() -> None:
    """A million GiB for a month overflows the int64 fast path; Python integers take over."""
    huge = usage_record("r-huge", start=utc(2025, 1, 1), seconds=31 * 86_400, vcpu=0,
                        memory_gib="1000000.5")
    ledger = _ledger([huge, usage_record("r-small", memory_gib="0.25")])
    pricebook = PriceBook()
    draft = build_draft(TENANT, "2025-01", ledger, pricebook)
    rows = list(iter_export_rows([draft], ledger, pricebook))
    assert _row_keys(rows) == _cost_lines([huge, usage_record("r-small", memory_gib="0.25")],
                                          pricebook)
    assert reconcile(rows, [draft]).ok
    memory = next(line for line in draft.lines if line.resource is Resource.MEMORY)
    exact = Fraction(MEMORY_RATE) * (Fraction("1000000.5") * 31 * 86_400 + Fraction("0.25") * 3600)
    assert Fraction(memory.amount) == round(exact / 3600, 2)


@pytest.mark.parametrize("seconds", [1, 59, 3600])
def test_one_record_split_per_second_costs_what_the_whole_record_costs(seconds: int) -> None:
    """Per-second records and one record over the same time give the same invoice line."""
    pricebook = PriceBook()
    whole = build_draft(TENANT, "2025-01", _ledger([usage_record(seconds=seconds)]), pricebook)
    pieces = _ledger(
        usage_record(f"r-{i}", start=utc(2025, 1, 10) + timedelta(seconds=i), seconds=1)
        for i in range(seconds)
    )
    assert build_draft(TENANT, "2025-01", pieces, pricebook).lines == whole.lines


def test_a_draft_with_an_unpriced_gpu_model_refuses_instead_of_billing_zero() -> None:
    """A B200 has no rate: drafting raises rather than leaving it off the invoice."""
    ledger = _ledger([usage_record("r-1"), usage_record("r-2", gpu_count=1, gpu_model="B200")])
    with pytest.raises(UnpricedResourceError):
        build_draft(TENANT, "2025-01", ledger, PriceBook())
