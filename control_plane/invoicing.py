"""Invoices per tenant per calendar month (UTC): live drafts, finalization, verified reads.

A draft is never stored: it is built on demand by :func:`billing.build_draft` from the
tenant's stored usage and its finalized invoices, with the default :class:`billing.PriceBook`.
Finalizing freezes the draft (:func:`billing.finalize`, SHA-256 content hash) and inserts it
in one transaction; a month is finalized once, and only after it has ended.

Every read of a finalized invoice recomputes its hash; a mismatch is an
:class:`billing.InvoiceIntegrityError` (HTTP 500), logged as an error, never papered over.

Usage reaches :mod:`billing` through :class:`StoredUsageSource`, which streams a tenant's
records from the database in Arrow batches (one query, a server-side cursor, only the
months the invoice covers), so no draft or export holds a tenant's history in memory.
A record's billing sequence number is its rank among *all* the tenant's records in arrival
(``seq``) order, and the watermark is the tenant's record count; ranks stay the same from
one draft to the next. That is what lets :mod:`billing` tell usage of a finalized month
that arrived after finalization (rank above the invoice's watermark) and bill it once, as
an ``adjustment`` line, on the next month that is not finalized.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information
import structlog
from sqlalchemy.orm import Session

from billing import (
    Invoice,
    InvoiceFinalizedError,
    InvoiceIntegrityError,
    Period,
    PriceBook,
    UsageRecord,
    build_draft,
    finalize,
    verify,
)
from billing.columns import USAGE_SCHEMA, round_ratio_column
from billing.usage import MAX_MEMORY_DECIMALS
from control_plane.errors import ConflictError
from control_plane.store import Database, invoices, tenants, usage, utcnow
from control_plane.store.usage import RANKED_COLUMNS, StoredUsage

READ_BATCH = 10_000
"""Records per batch read from the database while drafting or exporting."""

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


class StoredUsageSource:
    """A :class:`billing.UsageSource` over ``usage_records``, inside one session (transaction)."""

    def __init__(self, session: Session, batch_size: int = READ_BATCH) -> None:
        self._session = session
        self._batch_size = batch_size

    def watermark_for(self, tenant_id: str) -> int:
        """The tenant's record count: the rank of its newest record."""
        return usage.tenant_usage_count(self._session, tenant_id=tenant_id)

    def batches(self, tenant_id: str, periods: Sequence[Period]) -> Iterator[pa.RecordBatch]:
        """The tenant's records overlapping the periods, ranked, streamed in Arrow batches."""
        if not periods:
            return
        rows = usage.stream_ranked_usage(
            self._session,
            tenant_id=tenant_id,
            start=min(p.start for p in periods),
            end=max(p.end for p in periods),
            batch_size=self._batch_size,
        )
        for part in rows:
            yield _usage_batch(part)


def _usage_batch(rows: Sequence[Sequence[object]]) -> pa.RecordBatch:
    columns = dict(zip(RANKED_COLUMNS, zip(*rows, strict=True), strict=True))
    memory_mb = pa.array(columns["memory_mb"], pa.int64())
    arrays = {
        "seq": pa.array(columns["rank"], pa.int64()),
        "memory_micro_gib": round_ratio_column(memory_mb, 10**MAX_MEMORY_DECIMALS, 1024),
    }
    for field in USAGE_SCHEMA:
        if field.name not in arrays:
            arrays[field.name] = pa.array(columns[field.name], field.type)
    return pa.RecordBatch.from_arrays([arrays[f.name] for f in USAGE_SCHEMA], schema=USAGE_SCHEMA)


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

    def draft(self, tenant_id: str, period: Period) -> Invoice:
        """The month's draft from the usage stored now; a finalized month is a conflict."""
        finalized = self.finalized(tenant_id)

        def rate(s: Session) -> Invoice:
            source = StoredUsageSource(s)
            return build_draft(tenant_id, str(period), source, self._pricebook, finalized)

        try:
            return self._db.run_sync(rate)
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
