"""Rating is exact per second, honours overrides and effective dates, and splits at months."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing import PriceBook, Rate, Resource, UnpricedResourceError, rate_record
from billing.money import round_ratio, to_cents
from billing.testing import usage_record, utc


def test_one_second_of_one_vcpu_costs_exactly_the_hourly_rate_over_3600() -> None:
    """The exact numerator of one vCPU-second is the hourly rate itself."""
    (line,) = rate_record(usage_record(seconds=1), PriceBook())
    assert line.numerator == Decimal("0.01667")
    assert line.cost == Decimal("0.0000046306")


def test_proration_is_linear_in_seconds_with_no_drift() -> None:
    """3,600 one-second records cost exactly what one one-hour record costs."""
    book = PriceBook()
    seconds = [
        line.numerator
        for i in range(3600)
        for line in rate_record(
            usage_record(f"r-{i}", start=utc(2025, 1, 10, 0, i // 60, i % 60), seconds=1), book
        )
    ]
    (hour,) = rate_record(usage_record(seconds=3600), book)
    assert sum(seconds, Decimal(0)) == hour.numerator
    assert to_cents(hour.numerator) == Decimal("0.02")


def test_memory_and_gpus_are_rated_per_unit_second() -> None:
    """Memory is GiB-seconds and GPUs are GPU-seconds at their own hourly rates."""
    record = usage_record(seconds=1800, vcpu=0, memory_gib="2.5", gpu_count=2, gpu_model="H100")
    lines = {line.resource: line for line in rate_record(record, PriceBook())}
    assert set(lines) == {Resource.MEMORY, Resource.GPU}
    assert lines[Resource.MEMORY].unit_seconds == Decimal("4500.0")
    assert to_cents(lines[Resource.GPU].numerator) == Decimal("2.74")


def test_amounts_round_half_to_even_at_the_cent() -> None:
    """Exact half cents go to the even cent, both up and down."""
    assert round_ratio(Decimal("0.125"), 1, 2) == Decimal("0.12")
    assert round_ratio(Decimal("0.135"), 1, 2) == Decimal("0.14")
    assert round_ratio(Decimal("0.1250001"), 1, 2) == Decimal("0.13")
    assert round_ratio(Decimal("-0.125"), 1, 2) == Decimal("-0.12")
    assert round_ratio(Decimal("45"), 3600, 2) == Decimal("0.01")  # 0.0125 -> 0.01


def test_a_tenant_override_applies_from_its_effective_second() -> None:
    """A record crossing an override's effective date is split and each side priced."""
    book = PriceBook().with_rate(
        Rate(Resource.VCPU, Decimal("0.01"), utc(2025, 1, 10, 0, 30), tenant_id="t-acme")
    )
    lines = list(rate_record(usage_record(seconds=3600), book))
    assert [(line.seconds, line.rate.per_hour) for line in lines] == [
        (1800, Decimal("0.01667")),
        (1800, Decimal("0.01")),
    ]
    assert all(line.list_rate.per_hour == Decimal("0.01667") for line in lines)


def test_an_override_for_one_tenant_leaves_others_at_list_price() -> None:
    """Overrides are per tenant."""
    book = PriceBook().with_rate(Rate(Resource.VCPU, Decimal("0.01"), tenant_id="t-acme"))
    (other,) = rate_record(usage_record(tenant_id="t-other"), book)
    assert other.rate.per_hour == Decimal("0.01667")


def test_a_new_list_price_splits_records_for_tenants_without_overrides() -> None:
    """A default rate change takes effect at its second for everyone on list price."""
    book = PriceBook().with_rate(Rate(Resource.VCPU, Decimal("0.02"), utc(2025, 1, 10, 0, 0, 1)))
    lines = list(rate_record(usage_record(seconds=3), book))
    assert [(line.seconds, line.rate.per_hour) for line in lines] == [
        (1, Decimal("0.01667")),
        (2, Decimal("0.02")),
    ]


def test_a_record_crossing_months_is_split_at_midnight_utc() -> None:
    """Each part lands in its own calendar month, and no second is lost."""
    record = usage_record(start=utc(2025, 1, 31, 23, 59, 50), seconds=20, memory_gib="1")
    lines = list(rate_record(record, PriceBook()))
    periods = sorted({(str(line.period), line.seconds) for line in lines})
    assert periods == [("2025-01", 10), ("2025-02", 10)]
    assert sum(line.seconds for line in lines) == 2 * record.seconds


def test_a_record_spanning_several_months_is_split_at_every_boundary() -> None:
    """A long-running sandbox is billed in every month it ran."""
    record = usage_record(start=utc(2024, 12, 15), seconds=60 * 86_400)
    periods = [str(line.period) for line in rate_record(record, PriceBook())]
    assert periods == ["2024-12", "2025-01", "2025-02"]


def test_a_gpu_model_without_a_price_is_refused() -> None:
    """Usage of an unpriced GPU raises rather than billing zero."""
    record = usage_record(gpu_count=1, gpu_model="B200")
    with pytest.raises(UnpricedResourceError):
        list(rate_record(record, PriceBook()))
