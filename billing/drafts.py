"""Draft invoices, streamed: plan what a month's invoice covers, then rate the usage batch by batch.

Nothing here holds a tenant's usage in memory: :func:`build_draft` pulls
:data:`~billing.columns.USAGE_SCHEMA` batches from a :class:`~billing.usage.UsageSource`
(the in-memory :class:`~billing.UsageLedger` or the control plane's database reader) and
keeps only one integer sum per invoice line.
"""

from __future__ import annotations

from collections.abc import Iterable

from billing.errors import InvoiceIntegrityError
from billing.invoices import Invoice, InvoiceStatus, SourceRange, plan_sources, verify
from billing.periods import Period
from billing.pricebook import PriceBook
from billing.rater import InvoiceRater
from billing.usage import UsageSource


def check_finalized(finalized: Iterable[Invoice]) -> tuple[Invoice, ...]:
    """Return the invoices; a finalized one that fails its hash is an InvoiceIntegrityError."""
    found = tuple(finalized)
    for invoice in found:
        if invoice.status is InvoiceStatus.FINALIZED and not verify(invoice):
            raise InvoiceIntegrityError(
                "finalized invoice fails its hash check",
                tenant_id=invoice.tenant_id, period=invoice.period,
            )
    return found


def source_periods(sources: Iterable[SourceRange]) -> list[Period]:
    """The usage periods a set of source ranges reads, sorted."""
    return sorted({Period.parse(source.usage_period) for source in sources})


def plan_draft(
    tenant_id: str,
    period: str,
    usage: UsageSource,
    pricebook: PriceBook,
    finalized: Iterable[Invoice] = (),
) -> tuple[InvoiceRater, int]:
    """A rater for the month's draft and its watermark, before any usage is read."""
    billing_period = Period.parse(period)
    closed = check_finalized(finalized)
    watermark = usage.watermark_for(tenant_id)
    sources = plan_sources(tenant_id, billing_period, watermark, closed)
    return InvoiceRater(tenant_id, period, sources, pricebook), watermark


def build_draft(
    tenant_id: str,
    period: str,
    usage: UsageSource,
    pricebook: PriceBook,
    finalized: Iterable[Invoice] = (),
) -> Invoice:
    """Build a draft invoice for a tenant's month from the usage as it stands now.

    ``finalized`` are the tenant's finalized invoices (each is hash-checked); a finalized
    ``period`` raises :class:`~billing.InvoiceFinalizedError`.
    """
    rater, watermark = plan_draft(tenant_id, period, usage, pricebook, finalized)
    for batch in usage.batches(tenant_id, source_periods(rater.sources)):
        rater.add(batch)
    return rater.invoice(watermark)


__all__ = ["build_draft", "check_finalized", "plan_draft", "source_periods"]
