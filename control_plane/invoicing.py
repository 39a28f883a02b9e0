"""Invoices per tenant per calendar month (UTC): live drafts, finalization, verified reads.

A draft is never stored: it is built on demand by :func:`billing.build_draft` from the
tenant's stored usage and its finalized invoices, with the default :class:`billing.PriceBook`.
Finalizing freezes the draft (:func:`billing.finalize`, SHA-256 content hash) and inserts it
in one transaction; a month is finalized once, and only after it has ended.

Every read of a finalized invoice recomputes its hash; a mismatch is an
:class:`billing.InvoiceIntegrityError` (HTTP 500), logged as an error, never papered over.

The ledger is the tenant's whole usage history in arrival (``seq``) order, so a ledger
sequence number is the record's rank among the tenant's records and stays the same from
one draft to the next. That is what lets :mod:`billing` tell usage of a finalized month
that arrived after finalization (rank above the invoice's watermark) and bill it once, as
an ``adjustment`` line, on the next month that is not finalized.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from functools import partial

import structlog
from sqlalchemy.orm import Session

from billing import (
    Invoice,
    InvoiceFinalizedError,
    InvoiceIntegrityError,
    Period,
    PriceBook,
    UsageLedger,
    UsageRecord,
    build_draft,
    finalize,
    verify,
)
from billing.usage import MAX_MEMORY_DECIMALS
from control_plane.errors import ConflictError
from control_plane.store import Database, invoices, tenants, usage, utcnow
from control_plane.store.usage import StoredUsage

log = structlog.get_logger("control_plane.invoicing")

MIB_PER_GIB = Decimal(1024)
_GIB_QUANTUM = Decimal(1).scaleb(-MAX_MEMORY_DECIMALS)


def memory_gib(memory_mb: int) -> Decimal:
    """MiB → GiB, rounded half-even to the 6 places the ledger accepts (multiples of 16 MiB
    convert exactly)."""
    return (Decimal(memory_mb) / MIB_PER_GIB).quantize(_GIB_QUANTUM, rounding=ROUND_HALF_EVEN)


def usage_record(stored: StoredUsage) -> UsageRecord:
    """The billing library's record for a stored one."""
    u = stored.usage
    return UsageRecord(
        tenant_id=u.tenant_id,
        agent_id=u.agent_id,
        record_id=u.record_id,
        sandbox_id=u.sandbox_id,
        start=u.start,
        end=u.end,
        vcpu=u.vcpu,
        memory_gib=memory_gib(u.memory_mb),
        gpu_count=u.gpu_count,
        gpu_model=u.gpu_model,
        isolation=u.isolation,
        template=u.template,
        host=u.host,
    )


class InvoiceService:
    """Drafts, finalizes and reads one tenant's monthly invoices over the store."""

    def __init__(
        self,
        db: Database,
        pricebook: PriceBook | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._pricebook = pricebook or PriceBook()
        self._clock = clock

    @property
    def pricebook(self) -> PriceBook:
        return self._pricebook

    def ledger(self, tenant_id: str) -> UsageLedger:
        """The tenant's usage, every month, loaded in arrival order, one batch at a time."""
        ledger = UsageLedger()
        after = 0
        while True:
            read = partial(usage.tenant_usage_batch, tenant_id=tenant_id, after_seq=after)
            batch = self._db.run_sync(read)
            if not batch:
                return ledger
            for stored in batch:
                ledger.ingest(usage_record(stored))
            after = batch[-1].seq

    def finalized(self, tenant_id: str) -> list[Invoice]:
        """The tenant's finalized invoices, each checked against its hash."""
        found = self._db.run_sync(lambda s: invoices.finalized_invoices(s, tenant_id))
        return [_verified(invoice) for invoice in found]

    def stored(self, tenant_id: str, period: Period) -> Invoice | None:
        """The finalized invoice of the month, checked against its hash, if there is one."""
        found = self._db.run_sync(lambda s: invoices.get_invoice(s, tenant_id, str(period)))
        return None if found is None else _verified(found)

    def invoice(self, tenant_id: str, period: Period) -> Invoice:
        """The finalized invoice of the month, or else its draft as of now."""
        self._db.run_sync(lambda s: tenants.get_tenant(s, tenant_id))
        stored = self.stored(tenant_id, period)
        if stored is not None:
            return stored
        return self.draft(tenant_id, period)

    def draft(self, tenant_id: str, period: Period, ledger: UsageLedger | None = None) -> Invoice:
        """The month's draft from the usage stored now; a finalized month is a conflict."""
        finalized = self.finalized(tenant_id)
        ledger = ledger if ledger is not None else self.ledger(tenant_id)
        try:
            return build_draft(tenant_id, str(period), ledger, self._pricebook, finalized)
        except InvoiceFinalizedError as e:
            raise ConflictError(
                "invoice is already finalized", tenant_id=tenant_id, period=str(period)
            ) from e

    def finalize(self, tenant_id: str, period: Period) -> Invoice:
        """Freeze the month's draft and store it with its hash; once, after the month ends."""
        self._db.run_sync(lambda s: tenants.get_tenant(s, tenant_id))
        now = self._clock().replace(microsecond=0)
        if now < period.end:
            raise ConflictError(
                f"period {period} has not ended yet", tenant_id=tenant_id, period=str(period)
            )
        final = finalize(self.draft(tenant_id, period), finalized_at=now)
        self._db.run_sync(lambda s: invoices.store_finalized(s, final))
        log.info(
            "invoice_finalized",
            tenant_id=tenant_id,
            period=str(period),
            total=str(final.total),
            watermark=final.watermark,
        )
        return final

    def tenants(self, period: Period) -> list[str]:
        """Tenants with usage in the month or a finalized invoice for it, sorted."""

        def both(s: Session) -> list[str]:
            with_usage = usage.tenants_with_usage(s, start=period.start, end=period.end)
            return sorted({*with_usage, *invoices.tenants_with_invoices(s, str(period))})

        return self._db.run_sync(both)

    def invoices(self, period: Period, tenant_id: str | None = None) -> list[Invoice]:
        """The month's invoice (finalized or draft) of one tenant, or of every billed tenant."""
        chosen = [tenant_id] if tenant_id is not None else self.tenants(period)
        return [self.invoice(tenant, period) for tenant in chosen]


def _verified(invoice: Invoice) -> Invoice:
    if not verify(invoice):
        log.error("invoice_integrity_failed", tenant_id=invoice.tenant_id, period=invoice.period)
        raise InvoiceIntegrityError(
            "stored invoice fails its hash check",
            tenant_id=invoice.tenant_id,
            period=invoice.period,
        )
    return invoice
