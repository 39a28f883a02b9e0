"""FOCUS 1.2 export (CostAndUsage dataset, CSV): every mandatory column, ``x_`` custom columns.

Mapping: the tenant is the billing account, the agent (the customer's BYOC install) the
sub account, the sandbox the resource. ``BilledCost`` and ``EffectiveCost`` carry the row's
cent share of its invoice line (see :mod:`billing.exports.rows`), so they add up to the
invoices exactly; ``ListCost`` and ``ContractedCost`` carry the unrounded cost at list and
at the tenant's price (10 places), equal to unit price times ``PricingQuantity``. Late
usage billed in a later period is ``ChargeClass = Correction``. Times are UTC with ``Z``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information
import pyarrow.compute as pc  # type: ignore[import-untyped]

from billing.exports._batching import Progress, Sink, opened
from billing.exports._format import csv_writer, text_batch, text_schema
from billing.exports.rows import ExportRow, row_from_text
from billing.invoices import LineKind

FOCUS_VERSION = "1.2"
PROVIDER = "Corral"
SERVICE_NAME = "Corral Sandboxes"

_Cell = Callable[[pa.RecordBatch], pa.Array]
"""Computes one FOCUS column from a text batch of export rows."""


def _field(name: str) -> _Cell:
    return lambda cells: cells.column(name)


def _const(text: str) -> _Cell:
    return lambda cells: pa.repeat(pa.scalar(text, pa.string()), cells.num_rows)


def _late(cells: pa.RecordBatch) -> pa.Array:
    return pc.not_equal(cells.column("line_kind"), LineKind.USAGE.value)


def _charge_class(cells: pa.RecordBatch) -> pa.Array:
    """``Correction`` for late usage billed in a later period, else null."""
    correction = pc.equal(cells.column("line_kind"), LineKind.ADJUSTMENT.value)
    return pc.if_else(correction, "Correction", pa.scalar(None, pa.string()))


def _description(cells: pa.RecordBatch) -> pa.Array:
    late = pc.if_else(
        _late(cells),
        pc.binary_join_element_wise(", late usage from ", cells.column("usage_period"), ""),
        "",
    )
    return pc.binary_join_element_wise(
        cells.column("sku_id"), " held by sandbox ", cells.column("sandbox_id"), late, ""
    )


FOCUS_COLUMNS: dict[str, _Cell] = {
    # Mandatory in FOCUS 1.2 (CostAndUsage).
    "BilledCost": _field("billed_cost"),
    "BillingAccountId": _field("tenant_id"),
    "BillingAccountName": _field("tenant_id"),
    "BillingCurrency": _field("currency"),
    "BillingPeriodEnd": _field("billing_period_end"),
    "BillingPeriodStart": _field("billing_period_start"),
    "ChargeCategory": _const("Usage"),
    "ChargeClass": _charge_class,
    "ChargeDescription": _description,
    "ChargePeriodEnd": _field("charge_period_end"),
    "ChargePeriodStart": _field("charge_period_start"),
    "ContractedCost": _field("contracted_cost"),
    "EffectiveCost": _field("billed_cost"),
    "InvoiceIssuerName": _const(PROVIDER),
    "ListCost": _field("list_cost"),
    "PricingCategory": _const("Standard"),
    "PricingQuantity": _field("quantity"),
    "PricingUnit": _field("unit"),
    "ProviderName": _const(PROVIDER),
    "PublisherName": _const(PROVIDER),
    "ServiceCategory": _const("Compute"),
    "ServiceName": _const(SERVICE_NAME),
    # Recommended and conditional columns Corral can fill.
    "ChargeFrequency": _const("Usage-Based"),
    "ConsumedQuantity": _field("quantity"),
    "ConsumedUnit": _field("unit"),
    "ContractedUnitPrice": _field("unit_price"),
    "InvoiceId": _field("invoice_id"),
    "ListUnitPrice": _field("list_unit_price"),
    "ResourceId": _field("sandbox_id"),
    "ResourceName": _field("sandbox_id"),
    "ResourceType": _const("Sandbox"),
    "ServiceSubcategory": _const("Other (Compute)"),
    "SkuId": _field("sku_id"),
    "SkuPriceId": _field("price_id"),
    "SubAccountId": _field("agent_id"),
    "SubAccountName": _field("agent_id"),
    # Corral's own columns (FOCUS reserves the x_ prefix for them).
    "x_InvoiceStatus": _field("invoice_status"),
    "x_BillingPeriod": _field("billing_period"),
    "x_InvoiceLineId": _field("line_id"),
    "x_LineKind": _field("line_kind"),
    "x_UsagePeriod": _field("usage_period"),
    "x_RecordId": _field("record_id"),
    "x_Host": _field("host"),
    "x_Isolation": _field("isolation"),
    "x_Template": _field("template"),
    "x_Resource": _field("resource"),
    "x_GpuModel": _field("gpu_model"),
    "x_UnitSeconds": _field("unit_seconds"),
}

_BACK = {
    "invoice_id": "InvoiceId",
    "invoice_status": "x_InvoiceStatus",
    "tenant_id": "BillingAccountId",
    "billing_period": "x_BillingPeriod",
    "billing_period_start": "BillingPeriodStart",
    "billing_period_end": "BillingPeriodEnd",
    "line_id": "x_InvoiceLineId",
    "line_kind": "x_LineKind",
    "usage_period": "x_UsagePeriod",
    "charge_period_start": "ChargePeriodStart",
    "charge_period_end": "ChargePeriodEnd",
    "agent_id": "SubAccountId",
    "record_id": "x_RecordId",
    "sandbox_id": "ResourceId",
    "host": "x_Host",
    "isolation": "x_Isolation",
    "template": "x_Template",
    "resource": "x_Resource",
    "gpu_model": "x_GpuModel",
    "sku_id": "SkuId",
    "price_id": "SkuPriceId",
    "unit": "PricingUnit",
    "unit_seconds": "x_UnitSeconds",
    "quantity": "PricingQuantity",
    "unit_price": "ContractedUnitPrice",
    "list_unit_price": "ListUnitPrice",
    "contracted_cost": "ContractedCost",
    "list_cost": "ListCost",
    "billed_cost": "BilledCost",
    "currency": "BillingCurrency",
}


def write_focus(
    batches: Iterable[pa.RecordBatch], sink: Sink, *, progress: Progress | None = None
) -> int:
    """Stream export batches into a FOCUS 1.2 CSV (path or binary stream); return rows written."""
    written = 0
    schema = text_schema(list(FOCUS_COLUMNS))
    with opened(sink) as handle, csv_writer(handle, schema) as writer:
        for batch in batches:
            cells = text_batch(batch)
            columns = [render(cells) for render in FOCUS_COLUMNS.values()]
            writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
            written += batch.num_rows
            if progress is not None:
                progress(written)
    return written


def read_focus(path: Path) -> Iterator[ExportRow]:
    """Read a FOCUS export written by :func:`write_focus` back into rows."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != tuple(FOCUS_COLUMNS):
            raise ValueError("not a Corral FOCUS export: unexpected header")
        for cells in reader:
            yield row_from_text({name: cells[column] for name, column in _BACK.items()})
