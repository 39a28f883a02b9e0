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

from billing.exports._batching import DEFAULT_BATCH_SIZE, Progress, batched
from billing.exports.rows import ExportRow, row_from_text, row_to_text
from billing.invoices import LineKind

FOCUS_VERSION = "1.2"
PROVIDER = "Corral"
SERVICE_NAME = "Corral Sandboxes"

_Cell = Callable[[dict[str, str]], str]


def _field(name: str) -> _Cell:
    return lambda cells: cells[name]


def _const(text: str) -> _Cell:
    return lambda cells: text


def _charge_class(cells: dict[str, str]) -> str:
    return "Correction" if cells["line_kind"] == LineKind.ADJUSTMENT.value else ""


def _description(cells: dict[str, str]) -> str:
    late = f", late usage from {cells['usage_period']}" if cells["line_kind"] != "usage" else ""
    return f"{cells['sku_id']} held by sandbox {cells['sandbox_id']}{late}"


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
    rows: Iterable[ExportRow],
    path: Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> int:
    """Stream rows into a FOCUS 1.2 CSV file in batches; return how many rows were written."""
    written = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(FOCUS_COLUMNS)
        for batch in batched(rows, batch_size):
            for row in batch:
                cells = row_to_text(row)
                writer.writerow([render(cells) for render in FOCUS_COLUMNS.values()])
            written += len(batch)
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
