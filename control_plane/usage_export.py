"""Billing exports for one period: stored usage → :mod:`billing` invoices → a file, streamed.

For each tenant with usage in the period or a finalized invoice for it (one at a time,
so memory is bounded by one tenant's usage, not the whole table), the tenant's records are
loaded in arrival order into a :class:`billing.UsageLedger` and its invoice for the period
taken from :class:`control_plane.invoicing.InvoiceService`: the finalized invoice when
there is one (so the export reconciles with it to the cent), else the live draft, late-usage
adjustments included. Its export rows are written by the chosen ``billing`` writer into a
temporary file. The HTTP layer streams that file and deletes it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from billing import Invoice, Period, PriceBook, UsageLedger
from billing.exports import ExportRow, iter_export_rows, write_csv, write_focus
from byoc_agent.protocol.errors import InvalidArgumentError
from control_plane.invoicing import InvoiceService, memory_gib, usage_record
from control_plane.store import Database

__all__ = [
    "ExportFormat",
    "TenantBill",
    "UsageExporter",
    "memory_gib",
    "parse_format",
    "parse_period",
    "usage_record",
]


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


@dataclass(frozen=True, slots=True)
class TenantBill:
    """One tenant's invoice for the period and the ledger it was built from."""

    invoice: Invoice
    ledger: UsageLedger


class UsageExporter:
    """Builds draft invoices and exports for a period from the stored usage."""

    def __init__(self, db: Database, pricebook: PriceBook | None = None) -> None:
        self._invoices = InvoiceService(db, pricebook)
        self._pricebook = self._invoices.pricebook

    def tenants(self, period: Period) -> list[str]:
        return self._invoices.tenants(period)

    def bill(self, tenant_id: str, period: Period) -> TenantBill:
        """One tenant's finalized invoice of the period if there is one, else its draft."""
        ledger = self._invoices.ledger(tenant_id)
        invoice = self._invoices.stored(tenant_id, period)
        if invoice is None:
            invoice = self._invoices.draft(tenant_id, period, ledger)
        return TenantBill(invoice, ledger)

    def bills(self, period: Period, tenant_id: str | None = None) -> Iterator[TenantBill]:
        """Each tenant's bill in turn (or one tenant's); one ledger is alive at a time."""
        chosen = self.tenants(period) if tenant_id is None else [tenant_id]
        for tenant in chosen:
            yield self.bill(tenant, period)

    def rows(self, period: Period, tenant_id: str | None = None) -> Iterator[ExportRow]:
        """Every export row of the period (of one tenant, if given), tenant by tenant."""
        for bill in self.bills(period, tenant_id):
            yield from iter_export_rows([bill.invoice], bill.ledger, self._pricebook)

    def write(
        self,
        period: Period,
        fmt: ExportFormat,
        directory: Path | None = None,
        *,
        tenant_id: str | None = None,
    ) -> Path:
        """Write the period's export (one tenant's, if given) to a new temporary file."""
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 (the caller deletes the file)
            prefix=f"corral-usage-{period}-", suffix=f".{fmt.suffix}", dir=directory, delete=False
        )
        handle.close()
        path = Path(handle.name)
        try:
            rows = self.rows(period, tenant_id)
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
