"""Check an export against the invoices it came from: billed cost must match to the cent."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from billing.exports.rows import ExportRow
from billing.invoices import Invoice
from billing.money import ZERO, exact_add, exact_sum


@dataclass(frozen=True, slots=True)
class Mismatch:
    """An invoice (or one of its lines) whose exported billed cost differs from the invoice."""

    invoice_id: str
    line_id: str | None
    exported: Decimal
    invoiced: Decimal


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The outcome of :func:`reconcile`: totals on both sides and every difference found."""

    rows: int
    exported_total: Decimal
    invoiced_total: Decimal
    mismatches: tuple[Mismatch, ...]

    @property
    def ok(self) -> bool:
        """True when every invoice and every line matches to the cent."""
        return not self.mismatches


def reconcile(export_rows: Iterable[ExportRow], invoices: Iterable[Invoice]) -> Reconciliation:
    """Sum exported billed cost per invoice and per line, streaming, and compare with invoices."""
    by_line: dict[tuple[str, str], Decimal] = {}
    rows = 0
    for row in export_rows:
        key = (row.invoice_id, row.line_id)
        by_line[key] = exact_add(by_line.get(key, ZERO), row.billed_cost)
        rows += 1
    expected: dict[tuple[str, str], Decimal] = {}
    invoice_totals: dict[str, Decimal] = {}
    for invoice in invoices:
        invoice_totals[invoice.invoice_id] = invoice.total
        for line in invoice.lines:
            expected[(invoice.invoice_id, line.line_id)] = line.amount
    mismatches: list[Mismatch] = []
    for key in sorted(set(by_line) | set(expected)):
        exported, invoiced = by_line.get(key, ZERO), expected.get(key, ZERO)
        if exported != invoiced:
            mismatches.append(Mismatch(key[0], key[1], exported, invoiced))
    exported_by_invoice: dict[str, Decimal] = {}
    for (invoice_id, _), amount in by_line.items():
        so_far = exported_by_invoice.get(invoice_id, ZERO)
        exported_by_invoice[invoice_id] = exact_add(so_far, amount)
    for invoice_id in sorted(set(exported_by_invoice) | set(invoice_totals)):
        exported = exported_by_invoice.get(invoice_id, ZERO)
        invoiced = invoice_totals.get(invoice_id, ZERO)
        if exported != invoiced:
            mismatches.append(Mismatch(invoice_id, None, exported, invoiced))
    return Reconciliation(
        rows=rows,
        exported_total=exact_sum(list(exported_by_invoice.values())),
        invoiced_total=exact_sum(list(invoice_totals.values())),
        mismatches=tuple(mismatches),
    )
