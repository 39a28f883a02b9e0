"""Rate one usage record into unrounded cost lines, split at month and price boundaries.

This is the per-record, object-at-a-time statement of rating — for explaining one record
and as the reference the column-wise :class:`billing.rater.InvoiceRater` is tested against.
Invoices and exports use the rater.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import pairwise

from billing.money import SECONDS_PER_HOUR, exact_mul, round_ratio
from billing.periods import Period
from billing.pricebook import PriceBook, Rate, Resource
from billing.usage import UsageRecord

COST_DECIMALS = 10
"""Places at which an unrounded cost is *shown* (exports); sums use the exact numerator."""

QUANTITY_DECIMALS = 12
"""Places at which a resource-hour quantity is shown."""


@dataclass(frozen=True, slots=True)
class CostLine:
    """One resource of one record over one stretch with a single rate, inside one month.

    ``unit_seconds`` (units held times seconds) and ``numerator`` (``rate * unit_seconds``,
    i.e. the cost times 3,600) are exact; the cost itself is a repeating decimal in general,
    so it is only ever shown rounded (:attr:`cost`) and summed through the numerator.
    """

    record: UsageRecord
    period: Period
    start: datetime
    end: datetime
    resource: Resource
    units: Decimal
    rate: Rate
    list_rate: Rate

    @property
    def seconds(self) -> int:
        """Whole seconds this line covers."""
        return int((self.end - self.start).total_seconds())

    @property
    def unit_seconds(self) -> Decimal:
        """Units held times seconds held, exact."""
        return exact_mul(self.units, Decimal(self.seconds))

    @property
    def numerator(self) -> Decimal:
        """Cost times 3,600 (rate per hour times unit-seconds), exact."""
        return exact_mul(self.rate.per_hour, self.unit_seconds)

    @property
    def list_numerator(self) -> Decimal:
        """List cost times 3,600, exact."""
        return exact_mul(self.list_rate.per_hour, self.unit_seconds)

    @property
    def cost(self) -> Decimal:
        """The cost, shown to :data:`COST_DECIMALS` places (never used for sums)."""
        return round_ratio(self.numerator, SECONDS_PER_HOUR, COST_DECIMALS)

    @property
    def list_cost(self) -> Decimal:
        """The cost at list price, shown to :data:`COST_DECIMALS` places."""
        return round_ratio(self.list_numerator, SECONDS_PER_HOUR, COST_DECIMALS)

    @property
    def quantity_hours(self) -> Decimal:
        """Resource-hours, shown to :data:`QUANTITY_DECIMALS` places."""
        return round_ratio(self.unit_seconds, SECONDS_PER_HOUR, QUANTITY_DECIMALS)


def held_units(record: UsageRecord) -> list[tuple[Resource, str | None, Decimal]]:
    """Return the resources a record holds, with their unit counts, skipping zeros."""
    held: list[tuple[Resource, str | None, Decimal]] = []
    if record.vcpu:
        held.append((Resource.VCPU, None, Decimal(record.vcpu)))
    if record.memory_gib:
        held.append((Resource.MEMORY, None, record.memory_gib))
    if record.gpu_count:
        held.append((Resource.GPU, record.gpu_model, Decimal(record.gpu_count)))
    return held


def split_points(
    record: UsageRecord, pricebook: PriceBook, resource: Resource, gpu_model: str | None
) -> list[datetime]:
    """Return start, every month boundary and change of the SKU's rate inside the record, end."""
    points = {record.start, record.end}
    period = Period.containing(record.start).next()
    while period.start < record.end:
        points.add(period.start)
        period = period.next()
    points.update(pricebook.changes_between(
        record.tenant_id, [(resource, gpu_model)], record.start, record.end
    ))
    return sorted(points)


_ORDER = {Resource.VCPU: 0, Resource.MEMORY: 1, Resource.GPU: 2}


def rate_record(record: UsageRecord, pricebook: PriceBook) -> Iterator[CostLine]:
    """Rate a record: one cost line per resource per stretch of constant month and rate.

    Each resource is split only where its own rate (or the month) changes; lines come in
    time order, vCPU before memory before GPU at the same instant — the order of export rows.
    """
    lines: list[CostLine] = []
    for resource, model, units in held_units(record):
        for start, end in pairwise(split_points(record, pricebook, resource, model)):
            lines.append(CostLine(
                record=record,
                period=Period.containing(start),
                start=start,
                end=end,
                resource=resource,
                units=units,
                rate=pricebook.rate_at(record.tenant_id, resource, model, start),
                list_rate=pricebook.list_rate_at(resource, model, start),
            ))
    lines.sort(key=lambda line: (line.start, _ORDER[line.resource]))
    return iter(lines)
