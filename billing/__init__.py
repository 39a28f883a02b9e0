"""Per-second billing: idempotent usage ingest, Decimal rating, monthly invoices, exports.

A pure library: no database, no network. The control plane feeds it usage (as Arrow record
batches, streamed) and stores what it returns. Exports live in :mod:`billing.exports`.
"""

from billing.drafts import build_draft
from billing.errors import (
    InvalidRateError,
    InvalidUsageError,
    InvoiceFinalizedError,
    InvoiceIntegrityError,
    UnpricedResourceError,
    UsageConflictError,
)
from billing.invoices import (
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
    SourceRange,
    finalize,
    verify,
)
from billing.periods import Period
from billing.pricebook import DEFAULT_RATES, PriceBook, Rate, Resource
from billing.rating import CostLine, rate_record
from billing.usage import LedgerEntry, UsageKey, UsageLedger, UsageRecord, UsageSource

__all__ = [
    "DEFAULT_RATES",
    "CostLine",
    "InvalidRateError",
    "InvalidUsageError",
    "Invoice",
    "InvoiceFinalizedError",
    "InvoiceIntegrityError",
    "InvoiceLine",
    "InvoiceStatus",
    "LedgerEntry",
    "LineKind",
    "Period",
    "PriceBook",
    "Rate",
    "Resource",
    "SourceRange",
    "UnpricedResourceError",
    "UsageConflictError",
    "UsageKey",
    "UsageLedger",
    "UsageRecord",
    "UsageSource",
    "build_draft",
    "finalize",
    "rate_record",
    "verify",
]
