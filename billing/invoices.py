"""Monthly invoices per tenant: drafts, finalization with a content hash, late-usage adjustments.

A draft for period Q covers, from the ledger up to its watermark ``W``:

- usage in Q (the parts of records that fall in Q), as ``usage`` lines;
- usage in an earlier, already finalized period P that arrived after P's invoices saw it
  (sequence above the highest ``through_seq`` any finalized invoice recorded for P), as
  ``adjustment`` lines — but only when Q is the first period after P that is not finalized.

Each invoice records what it covered as :class:`SourceRange` values, so every part of every
record is billed exactly once whatever the order of arrival, drafting and finalizing.
Amounts are rounded only on the line (see :mod:`billing.money` for the rule); the total is
the sum of the rounded lines. Drafts are built by :func:`billing.drafts.build_draft`,
which streams the usage through :class:`billing.rater.InvoiceRater`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from billing.errors import InvoiceFinalizedError
from billing.money import SECONDS_PER_HOUR, exact_sum, round_ratio
from billing.periods import Period, is_utc
from billing.pricebook import Rate, Resource
from billing.rating import QUANTITY_DECIMALS

CURRENCY = "USD"


class InvoiceStatus(StrEnum):
    """An invoice is a draft until finalized; a finalized invoice never changes."""

    DRAFT = "draft"
    FINALIZED = "finalized"


class LineKind(StrEnum):
    """Usage of the invoice's own period, or late usage of an earlier finalized one."""

    USAGE = "usage"
    ADJUSTMENT = "adjustment"


@dataclass(frozen=True, slots=True)
class SourceRange:
    """Usage in ``usage_period`` from ledger entries with ``after_seq < seq <= through_seq``."""

    usage_period: str
    after_seq: int
    through_seq: int

    def covers(self, period: str, seq: int) -> bool:
        """Return whether a cost line of ``period`` from entry ``seq`` falls in this range."""
        return period == self.usage_period and self.after_seq < seq <= self.through_seq


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """A priced line: one kind, usage period, resource and rate; its amount is in cents."""

    line_id: str
    kind: LineKind
    usage_period: str
    resource: Resource
    gpu_model: str | None
    unit_price: Decimal
    price_id: str
    unit_seconds: Decimal
    amount: Decimal

    @property
    def quantity_hours(self) -> Decimal:
        """Resource-hours on this line, shown to 12 places."""
        return round_ratio(self.unit_seconds, SECONDS_PER_HOUR, QUANTITY_DECIMALS)

    @property
    def description(self) -> str:
        """Human-readable text for the line."""
        what = f"{self.gpu_model} GPU" if self.gpu_model else self.resource.value
        late = f" (late usage from {self.usage_period})" if self.kind is LineKind.ADJUSTMENT else ""
        return f"{what} at {self.unit_price} USD per {self.resource.unit[:-1]}{late}"


@dataclass(frozen=True, slots=True)
class Invoice:
    """One tenant's invoice for one calendar month (UTC)."""

    tenant_id: str
    period: str
    status: InvoiceStatus
    lines: tuple[InvoiceLine, ...]
    sources: tuple[SourceRange, ...]
    watermark: int
    currency: str = CURRENCY
    finalized_at: datetime | None = None
    content_hash: str | None = None

    @property
    def invoice_id(self) -> str:
        """Stable id: tenant and period."""
        return f"{self.tenant_id}/{self.period}"

    @property
    def total(self) -> Decimal:
        """Sum of the (already rounded) line amounts."""
        return exact_sum([line.amount for line in self.lines])

    @property
    def billing_period(self) -> Period:
        """The month this invoice bills."""
        return Period.parse(self.period)

    def covering(self, period: str, seq: int) -> SourceRange | None:
        """Return the source range that covers a cost line, if this invoice covers it."""
        for source in self.sources:
            if source.covers(period, seq):
                return source
        return None


def line_id_for(kind: LineKind, usage_period: str, rate: Rate) -> str:
    """Return the deterministic id of the line a cost line lands on."""
    return f"{kind.value}/{usage_period}/{rate.price_id}"


def plan_sources(
    tenant_id: str, period: Period, watermark: int, finalized: Iterable[Invoice]
) -> tuple[SourceRange, ...]:
    """Decide which ledger ranges a draft for ``period`` covers, given the finalized invoices."""
    finalized = tuple(finalized)
    done: dict[str, int] = {}
    for invoice in finalized:
        if invoice.tenant_id != tenant_id or invoice.status is not InvoiceStatus.FINALIZED:
            continue
        if invoice.period == str(period):
            raise InvoiceFinalizedError(
                "period already finalized", tenant_id=tenant_id, period=str(period)
            )
        for source in invoice.sources:
            done[source.usage_period] = max(done.get(source.usage_period, 0), source.through_seq)
    finalized_periods = {
        inv.period for inv in finalized
        if inv.tenant_id == tenant_id and inv.status is InvoiceStatus.FINALIZED
    }
    sources = [SourceRange(str(period), 0, watermark)]
    for closed in sorted(finalized_periods):
        closed_period = Period.parse(closed)
        if closed_period >= period:
            continue
        first_open = closed_period.next()
        while str(first_open) in finalized_periods:
            first_open = first_open.next()
        if first_open == period and done[closed] < watermark:
            sources.append(SourceRange(closed, done[closed], watermark))
    return tuple(sorted(sources, key=lambda s: s.usage_period))


def line_kind(invoice_period: str, usage_period: str) -> LineKind:
    """Usage lines bill the invoice's own month; anything else is an adjustment."""
    return LineKind.USAGE if usage_period == invoice_period else LineKind.ADJUSTMENT


def finalize(draft: Invoice, *, finalized_at: datetime) -> Invoice:
    """Return the finalized invoice for a draft, with its content hash recorded."""
    if draft.status is not InvoiceStatus.DRAFT:
        raise InvoiceFinalizedError(
            "invoice is already finalized", tenant_id=draft.tenant_id, period=draft.period
        )
    if not is_utc(finalized_at):
        raise ValueError("finalized_at must be a UTC datetime")
    final = replace(draft, status=InvoiceStatus.FINALIZED, finalized_at=finalized_at)
    return replace(final, content_hash=compute_hash(final))


def verify(invoice: Invoice) -> bool:
    """Return whether a finalized invoice still matches the hash recorded when it was finalized."""
    return (
        invoice.status is InvoiceStatus.FINALIZED
        and invoice.content_hash is not None
        and invoice.content_hash == compute_hash(invoice)
    )


def compute_hash(invoice: Invoice) -> str:
    """Return the SHA-256 of the invoice's canonical JSON, every field but the hash itself."""
    document = {
        "tenant_id": invoice.tenant_id,
        "period": invoice.period,
        "status": invoice.status.value,
        "currency": invoice.currency,
        "watermark": invoice.watermark,
        "finalized_at": invoice.finalized_at.isoformat() if invoice.finalized_at else None,
        "total": str(invoice.total),
        "sources": [[s.usage_period, s.after_seq, s.through_seq] for s in invoice.sources],
        "lines": [
            {
                "line_id": line.line_id,
                "kind": line.kind.value,
                "usage_period": line.usage_period,
                "resource": line.resource.value,
                "gpu_model": line.gpu_model,
                "unit_price": str(line.unit_price),
                "price_id": line.price_id,
                "unit_seconds": str(line.unit_seconds),
                "amount": str(line.amount),
            }
            for line in invoice.lines
        ],
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
