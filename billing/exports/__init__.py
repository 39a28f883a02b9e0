"""Exports for finance: CSV, Parquet (``billing.exports.parquet_export``) and FOCUS 1.2.

Every writer takes an iterable of Arrow record batches (:func:`export_batches` streams them
from usage, :func:`batches_from_rows` makes them from :class:`ExportRow` objects), writes
one batch at a time to a path or an open binary stream and reports progress;
:func:`reconcile` checks rows against invoices.
"""

from billing.exports.csv_export import read_csv, write_csv
from billing.exports.focus import read_focus, write_focus
from billing.exports.reconcile import Reconciliation, reconcile
from billing.exports.rows import (
    EXPORT_FIELDS,
    ExportRow,
    batches_from_rows,
    draft_batches,
    export_batches,
    invoice_batches,
    iter_export_rows,
    rows_of,
)

__all__ = [
    "EXPORT_FIELDS",
    "ExportRow",
    "Reconciliation",
    "batches_from_rows",
    "draft_batches",
    "export_batches",
    "invoice_batches",
    "iter_export_rows",
    "read_csv",
    "read_focus",
    "reconcile",
    "rows_of",
    "write_csv",
    "write_focus",
]
