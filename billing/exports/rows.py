"""Export rows: one per cost line an invoice covers, each with its share of the line's cents.

A row's ``billed_cost`` is allocated by cumulative rounding inside its invoice line: after
each row, the line's running exact total is rounded (ROUND_HALF_EVEN, to the cent) and the
row gets the difference from the previous running rounded total. The shares are whole
cents, each within a cent of the row's exact cost, and they add up, by telescoping, to
exactly the line's amount on the invoice — so the billed-cost column reconciles to the cent
while rows stream through in constant memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from billing.errors import InvoiceIntegrityError
from billing.exports._format import (
    format_decimal,
    format_timestamp,
    optional_text,
    parse_optional,
    parse_timestamp,
)
from billing.invoices import (
    Invoice,
    InvoiceStatus,
    LineKind,
    covered_cost_lines,
    line_id_for,
    line_kind,
    verify,
)
from billing.money import ZERO, exact_add, to_cents
from billing.pricebook import PriceBook
from billing.usage import UsageLedger


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


def iter_export_rows(
    invoices: Iterable[Invoice], ledger: UsageLedger, pricebook: PriceBook
) -> Iterator[ExportRow]:
    """Yield every row of the given invoices, re-rated from the ledger, one at a time."""
    for invoice in invoices:
        if invoice.status is InvoiceStatus.FINALIZED and not verify(invoice):
            raise InvoiceIntegrityError(
                "finalized invoice fails its hash check",
                tenant_id=invoice.tenant_id, period=invoice.period,
            )
        yield from _invoice_rows(invoice, ledger, pricebook)


def _invoice_rows(
    invoice: Invoice, ledger: UsageLedger, pricebook: PriceBook
) -> Iterator[ExportRow]:
    exact: dict[str, Decimal] = {}
    allocated: dict[str, Decimal] = {}
    period = invoice.billing_period
    for source, cost in covered_cost_lines(invoice.tenant_id, invoice.sources, ledger, pricebook):
        kind: LineKind = line_kind(invoice.period, source.usage_period)
        line_id = line_id_for(kind, source.usage_period, cost.rate)
        running = exact_add(exact.get(line_id, ZERO), cost.numerator)
        rounded = to_cents(running)
        share = rounded - allocated.get(line_id, ZERO)
        exact[line_id] = running
        allocated[line_id] = rounded
        record = cost.record
        yield ExportRow(
            invoice_id=invoice.invoice_id,
            invoice_status=invoice.status.value,
            tenant_id=invoice.tenant_id,
            billing_period=invoice.period,
            billing_period_start=period.start,
            billing_period_end=period.end,
            line_id=line_id,
            line_kind=kind.value,
            usage_period=source.usage_period,
            charge_period_start=cost.start,
            charge_period_end=cost.end,
            agent_id=record.agent_id,
            record_id=record.record_id,
            sandbox_id=record.sandbox_id,
            host=record.host,
            isolation=record.isolation,
            template=record.template,
            resource=cost.resource.value,
            gpu_model=cost.rate.gpu_model,
            sku_id=cost.rate.sku_id,
            price_id=cost.rate.price_id,
            unit=cost.resource.unit,
            unit_seconds=cost.unit_seconds,
            quantity=cost.quantity_hours,
            unit_price=cost.rate.per_hour,
            list_unit_price=cost.list_rate.per_hour,
            contracted_cost=cost.cost,
            list_cost=cost.list_cost,
            billed_cost=share,
            currency=invoice.currency,
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
