"""Export rows: one per record, resource and price stretch an invoice covers, with its cents.

Rows are produced as Arrow record batches (:data:`~billing.rater.EXPORT_SCHEMA`) by
:func:`export_batches`, streamed from a :class:`~billing.usage.UsageSource`; the writers
take those batches. :class:`ExportRow` is the same row as a Python object, for readers,
reconciliation and tests.

A row's ``billed_cost`` is allocated by cumulative rounding inside its invoice line: after
each row, the line's running exact total is rounded (ROUND_HALF_EVEN, to the cent) and the
row gets the difference from the previous running rounded total. The shares are whole
cents, each within a cent of the row's exact cost, and they add up, by telescoping, to
exactly the line's amount on the invoice — so the billed-cost column reconciles to the cent
while rows stream through in constant memory. Within an invoice, rows are in arrival order
of their records, then by time, then vCPU, memory, GPU, whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information

from billing.columns import DEFAULT_BATCH_SIZE
from billing.drafts import check_finalized, plan_draft, source_periods
from billing.exports._batching import batched
from billing.exports._format import (
    format_decimal,
    format_timestamp,
    optional_text,
    parse_optional,
    parse_timestamp,
)
from billing.invoices import Invoice
from billing.pricebook import PriceBook
from billing.rater import EXPORT_SCHEMA, InvoiceRater
from billing.usage import UsageSource


@dataclass(frozen=True, slots=True)
class ExportRow:
    """One resource of one usage record over one stretch at one rate, as finance sees it."""

    invoice_id: str
    invoice_status: str
    tenant_id: str
    billing_period: str
    billing_period_start: datetime
    billing_period_end: datetime
    line_id: str
    line_kind: str
    usage_period: str
    charge_period_start: datetime
    charge_period_end: datetime
    agent_id: str
    record_id: str
    sandbox_id: str
    host: str
    isolation: str
    template: str
    resource: str
    gpu_model: str | None
    sku_id: str
    price_id: str
    unit: str
    unit_seconds: Decimal
    quantity: Decimal
    unit_price: Decimal
    list_unit_price: Decimal
    contracted_cost: Decimal
    list_cost: Decimal
    billed_cost: Decimal
    currency: str


EXPORT_FIELDS: tuple[str, ...] = tuple(ExportRow.__dataclass_fields__)
"""Column names, in order, of the CSV and Parquet exports."""

if tuple(EXPORT_SCHEMA.names) != EXPORT_FIELDS:  # pragma: no cover - a programming error
    raise RuntimeError("ExportRow and EXPORT_SCHEMA disagree")


def invoice_batches(
    invoice: Invoice, usage: UsageSource, pricebook: PriceBook
) -> Iterator[pa.RecordBatch]:
    """Stream one invoice's export rows, a batch per usage batch, re-rated from ``usage``.

    A finalized invoice is hash-checked first; once the usage is exhausted the rated lines
    must equal the invoice's exactly, else :class:`InvoiceIntegrityError` (the export would
    not reconcile).
    """
    check_finalized([invoice])
    rater = InvoiceRater(
        invoice.tenant_id, invoice.period, invoice.sources, pricebook,
        status=invoice.status, currency=invoice.currency,
    )
    for batch in usage.batches(invoice.tenant_id, source_periods(invoice.sources)):
        rows = rater.rows(batch)
        if rows is not None:
            yield rows
    rater.check_against(invoice)


def draft_batches(
    tenant_id: str,
    period: str,
    usage: UsageSource,
    pricebook: PriceBook,
    finalized: Iterable[Invoice] = (),
) -> Iterator[pa.RecordBatch]:
    """Stream the export rows of the month's draft in one pass, drafting as the rows go.

    The rows are those of :func:`billing.build_draft` for the same usage, without reading
    the usage twice: the draft's lines are sums of the rows' unit-seconds, and each row's
    billed cost is its share of its line, which needs no total up front.
    """
    rater, _ = plan_draft(tenant_id, period, usage, pricebook, finalized)
    for batch in usage.batches(tenant_id, source_periods(rater.sources)):
        rows = rater.rows(batch)
        if rows is not None:
            yield rows


def export_batches(
    invoices: Iterable[Invoice], usage: UsageSource, pricebook: PriceBook
) -> Iterator[pa.RecordBatch]:
    """Stream the export rows of several invoices, one invoice after the other."""
    for invoice in invoices:
        yield from invoice_batches(invoice, usage, pricebook)


def iter_export_rows(
    invoices: Iterable[Invoice], usage: UsageSource, pricebook: PriceBook
) -> Iterator[ExportRow]:
    """Yield every row of the given invoices as :class:`ExportRow` objects (small exports)."""
    for batch in export_batches(invoices, usage, pricebook):
        yield from rows_of(batch)


def rows_of(batch: pa.RecordBatch) -> Iterator[ExportRow]:
    """The rows of an export batch as :class:`ExportRow` objects."""
    for values in batch.to_pylist():
        yield ExportRow(**values)


def batches_from_rows(
    rows: Iterable[ExportRow], batch_size: int = DEFAULT_BATCH_SIZE
) -> Iterator[pa.RecordBatch]:
    """Turn :class:`ExportRow` objects into export batches of at most ``batch_size`` rows."""
    for chunk in batched(rows, batch_size):
        columns = [[getattr(row, name) for row in chunk] for name in EXPORT_FIELDS]
        yield pa.RecordBatch.from_arrays(
            [pa.array(values, field.type) for values, field in zip(columns, EXPORT_SCHEMA,
                                                                     strict=True)],
            schema=EXPORT_SCHEMA,
        )


def row_to_text(row: ExportRow) -> dict[str, str]:
    """Render a row as text cells keyed by field name (UTC ``Z`` times, plain decimals)."""
    cells: dict[str, str] = {}
    for name in EXPORT_FIELDS:
        value = getattr(row, name)
        if isinstance(value, Decimal):
            cells[name] = format_decimal(value)
        elif isinstance(value, datetime):
            cells[name] = format_timestamp(value)
        else:
            cells[name] = optional_text(value)
    return cells


def row_from_text(cells: Mapping[str, str]) -> ExportRow:
    """Read a row back from text cells keyed by field name."""
    return ExportRow(
        invoice_id=cells["invoice_id"],
        invoice_status=cells["invoice_status"],
        tenant_id=cells["tenant_id"],
        billing_period=cells["billing_period"],
        billing_period_start=parse_timestamp(cells["billing_period_start"]),
        billing_period_end=parse_timestamp(cells["billing_period_end"]),
        line_id=cells["line_id"],
        line_kind=cells["line_kind"],
        usage_period=cells["usage_period"],
        charge_period_start=parse_timestamp(cells["charge_period_start"]),
        charge_period_end=parse_timestamp(cells["charge_period_end"]),
        agent_id=cells["agent_id"],
        record_id=cells["record_id"],
        sandbox_id=cells["sandbox_id"],
        host=cells["host"],
        isolation=cells["isolation"],
        template=cells["template"],
        resource=cells["resource"],
        gpu_model=parse_optional(cells["gpu_model"]),
        sku_id=cells["sku_id"],
        price_id=cells["price_id"],
        unit=cells["unit"],
        unit_seconds=Decimal(cells["unit_seconds"]),
        quantity=Decimal(cells["quantity"]),
        unit_price=Decimal(cells["unit_price"]),
        list_unit_price=Decimal(cells["list_unit_price"]),
        contracted_cost=Decimal(cells["contracted_cost"]),
        list_cost=Decimal(cells["list_cost"]),
        billed_cost=Decimal(cells["billed_cost"]),
        currency=cells["currency"],
    )
