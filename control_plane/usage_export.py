"""Billing exports for one period: stored usage → :mod:`billing` invoices → a file, streamed.

For each tenant with usage in the period (one at a time, so memory is bounded by one
tenant's month, not the whole table), the stored records are loaded in arrival order
into a :class:`billing.UsageLedger`, rated with the default :class:`billing.PriceBook`,
billed as a draft invoice, and their export rows written by the chosen ``billing``
writer into a temporary file. The HTTP layer streams that file and deletes it.

Memory (MiB) becomes GiB as ``memory_mb / 1024`` rounded half-even to the 6 places the
ledger accepts; any multiple of 16 MiB converts exactly.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from functools import partial
from pathlib import Path

from billing import Invoice, Period, PriceBook, UsageLedger, UsageRecord, build_draft
from billing.exports import ExportRow, iter_export_rows, write_csv, write_focus
from billing.usage import MAX_MEMORY_DECIMALS
from byoc_agent.protocol.errors import InvalidArgumentError
from control_plane.store import Database, usage
from control_plane.store.usage import StoredUsage

MIB_PER_GIB = Decimal(1024)
_GIB_QUANTUM = Decimal(1).scaleb(-MAX_MEMORY_DECIMALS)


class ExportFormat(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"
    FOCUS = "focus"

    @property
    def media_type(self) -> str:
        if self is ExportFormat.PARQUET:
            return "application/vnd.apache.parquet"
        return "text/csv; charset=utf-8"

    @property
    def suffix(self) -> str:
        return "parquet" if self is ExportFormat.PARQUET else "csv"


def parse_period(text: str) -> Period:
    """``YYYY-MM`` → :class:`billing.Period`; anything else is a 400 naming ``period``."""
    try:
        return Period.parse(text)
    except InvalidArgumentError:
        raise InvalidArgumentError(
            f"period must be a month as YYYY-MM, got {text[:16]!r}", field="period"
        ) from None


def parse_format(text: str) -> ExportFormat:
    try:
        return ExportFormat(text)
    except ValueError:
        choices = ", ".join(f.value for f in ExportFormat)
        raise InvalidArgumentError(
            f"format must be one of {choices}, got {text[:16]!r}", field="format"
        ) from None


def memory_gib(memory_mb: int) -> Decimal:
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


@dataclass(frozen=True, slots=True)
class TenantBill:
    """One tenant's draft invoice for the period and the ledger it was built from."""

    invoice: Invoice
    ledger: UsageLedger


class UsageExporter:
    """Builds draft invoices and exports for a period from the stored usage."""

    def __init__(self, db: Database, pricebook: PriceBook | None = None) -> None:
        self._db = db
        self._pricebook = pricebook or PriceBook()

    def tenants(self, period: Period) -> list[str]:
        return self._db.run_sync(
            lambda s: usage.tenants_with_usage(s, start=period.start, end=period.end)
        )

    def bill(self, tenant_id: str, period: Period) -> TenantBill:
        """Load one tenant's usage of the period into a ledger and draft its invoice."""
        ledger = UsageLedger()
        after = 0
        while True:
            read = partial(
                usage.usage_batch,
                tenant_id=tenant_id,
                start=period.start,
                end=period.end,
                after_seq=after,
            )
            batch = self._db.run_sync(read)
            if not batch:
                break
            for stored in batch:
                ledger.ingest(usage_record(stored))
            after = batch[-1].seq
        invoice = build_draft(tenant_id, str(period), ledger, self._pricebook)
        return TenantBill(invoice, ledger)

    def bills(self, period: Period) -> Iterator[TenantBill]:
        """Each tenant's bill in turn; only one tenant's ledger is alive at a time."""
        for tenant_id in self.tenants(period):
            yield self.bill(tenant_id, period)

    def rows(self, period: Period) -> Iterator[ExportRow]:
        """Every export row of the period, tenant by tenant."""
        for bill in self.bills(period):
            yield from iter_export_rows([bill.invoice], bill.ledger, self._pricebook)

    def write(self, period: Period, fmt: ExportFormat, directory: Path | None = None) -> Path:
        """Write the period's export to a new temporary file and return its path."""
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 (the caller deletes the file)
            prefix=f"corral-usage-{period}-", suffix=f".{fmt.suffix}", dir=directory, delete=False
        )
        handle.close()
        path = Path(handle.name)
        try:
            rows = self.rows(period)
            if fmt is ExportFormat.CSV:
                write_csv(rows, path)
            elif fmt is ExportFormat.FOCUS:
                write_focus(rows, path)
            else:
                from billing.exports.parquet_export import write_parquet

                write_parquet(rows, path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path
