"""Finalized invoices: one row per tenant and month, stored exactly as :mod:`billing` froze it.

Only finalized invoices are stored; a draft is computed live from ``usage_records``. The
lines and source ranges are one JSON document with every amount as a decimal string
(never a float), so the row decodes back to an :class:`billing.Invoice` whose hash can
be checked. These functions store and decode; checking the hash is the caller's job
(:mod:`control_plane.invoicing` does it on every read).
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String, Text, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from billing import (
    Invoice,
    InvoiceIntegrityError,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
    Resource,
    SourceRange,
)
from control_plane.errors import ConflictError
from control_plane.store.base import Base, UTCDateTime

_DOCUMENT_VERSION = 1


class InvoiceRow(Base):
    __tablename__ = "invoices"
    __table_args__ = (
        CheckConstraint("status IN ('draft', 'finalized')", name="ck_invoices_status"),
    )

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    currency: Mapped[str] = mapped_column(String(3))
    total: Mapped[str] = mapped_column(String(40))
    watermark: Mapped[int] = mapped_column(Integer)
    document: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    finalized_at: Mapped[datetime] = mapped_column(UTCDateTime())


def _document(invoice: Invoice) -> str:
    return json.dumps(
        {
            "version": _DOCUMENT_VERSION,
            "sources": [[s.usage_period, s.after_seq, s.through_seq] for s in invoice.sources],
            "lines": [
                {
                    "line_id": line.line_id,
                    "kind": line.kind.value,
                    "usage_period": line.usage_period,
                    "resource": line.resource.value,
                    "gpu_model": line.gpu_model,
                    "unit_price": str(line.unit_price),
                    "price_id": line.price_id,
                    "unit_seconds": str(line.unit_seconds),
                    "amount": str(line.amount),
                }
                for line in invoice.lines
            ],
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def _invoice(row: InvoiceRow) -> Invoice:
    """Decode a row; one that cannot be decoded, or whose ``total`` is not its lines' sum, is
    an :class:`InvoiceIntegrityError` (the hash itself is checked by the caller)."""
    try:
        invoice = _decode(row)
    except (ValueError, KeyError, TypeError, ArithmeticError) as e:
        raise InvoiceIntegrityError(
            "stored invoice cannot be decoded", tenant_id=row.tenant_id, period=row.period
        ) from e
    if str(invoice.total) != row.total:
        raise InvoiceIntegrityError(
            "stored invoice total is not the sum of its lines",
            tenant_id=row.tenant_id,
            period=row.period,
        )
    return invoice


def _decode(row: InvoiceRow) -> Invoice:
    document = json.loads(row.document)
    lines = tuple(
        InvoiceLine(
            line_id=str(line["line_id"]),
            kind=LineKind(line["kind"]),
            usage_period=str(line["usage_period"]),
            resource=Resource(line["resource"]),
            gpu_model=None if line["gpu_model"] is None else str(line["gpu_model"]),
            unit_price=Decimal(line["unit_price"]),
            price_id=str(line["price_id"]),
            unit_seconds=Decimal(line["unit_seconds"]),
            amount=Decimal(line["amount"]),
        )
        for line in document["lines"]
    )
    sources = tuple(
        SourceRange(str(period), int(after), int(through))
        for period, after, through in document["sources"]
    )
    return Invoice(
        tenant_id=row.tenant_id,
        period=row.period,
        status=InvoiceStatus(row.status),
        lines=lines,
        sources=sources,
        watermark=row.watermark,
        currency=row.currency,
        finalized_at=row.finalized_at,
        content_hash=row.content_hash,
    )


def get_invoice(s: Session, tenant_id: str, period: str) -> Invoice | None:
    """The stored (finalized) invoice of a tenant's month, decoded but not yet verified."""
    row = s.get(InvoiceRow, (tenant_id, period))
    return None if row is None else _invoice(row)


def finalized_invoices(s: Session, tenant_id: str) -> list[Invoice]:
    """Every stored invoice of a tenant, oldest month first, decoded but not yet verified."""
    rows = s.scalars(
        select(InvoiceRow).where(InvoiceRow.tenant_id == tenant_id).order_by(InvoiceRow.period)
    ).all()
    return [_invoice(row) for row in rows]


def tenants_with_invoices(s: Session, period: str) -> list[str]:
    """Tenants that have a stored invoice for the month, sorted."""
    query = select(InvoiceRow.tenant_id).where(InvoiceRow.period == period)
    return list(s.scalars(query.order_by(InvoiceRow.tenant_id)).all())


def store_finalized(s: Session, invoice: Invoice) -> None:
    """Insert a finalized invoice; a second one for the same tenant and month is a conflict."""
    if invoice.status is not InvoiceStatus.FINALIZED or invoice.content_hash is None:
        raise ValueError("only a finalized invoice with its hash is stored")
    if invoice.finalized_at is None:
        raise ValueError("a finalized invoice has a finalized_at")
    if s.get(InvoiceRow, (invoice.tenant_id, invoice.period)) is not None:
        raise ConflictError(
            "invoice is already finalized", tenant_id=invoice.tenant_id, period=invoice.period
        )
    s.add(
        InvoiceRow(
            tenant_id=invoice.tenant_id,
            period=invoice.period,
            status=invoice.status.value,
            currency=invoice.currency,
            total=str(invoice.total),
            watermark=invoice.watermark,
            document=_document(invoice),
            content_hash=invoice.content_hash,
            finalized_at=invoice.finalized_at,
        )
    )
    try:
        s.flush()
    except IntegrityError as e:  # a concurrent finalize of the same month won the insert
        raise ConflictError(
            "invoice is already finalized", tenant_id=invoice.tenant_id, period=invoice.period
        ) from e
