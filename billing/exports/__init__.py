"""Exports for finance: CSV, Parquet (``billing.exports.parquet_export``) and FOCUS 1.2.

Every writer takes an iterable of :class:`ExportRow` (a generator is fine), writes it in
bounded batches and reports progress; :func:`reconcile` checks rows against invoices.
"""

from billing.exports.csv_export import read_csv, write_csv
from billing.exports.focus import read_focus, write_focus
from billing.exports.reconcile import Reconciliation, reconcile
from billing.exports.rows import EXPORT_FIELDS, ExportRow, iter_export_rows

__all__ = [
    "EXPORT_FIELDS",
    "ExportRow",
    "Reconciliation",
    "iter_export_rows",
    "read_csv",
    "read_focus",
    "reconcile",
    "write_csv",
    "write_focus",
]
