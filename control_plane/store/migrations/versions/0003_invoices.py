"""Finalized invoices, one per tenant per calendar month (UTC), with their content hash.

Revision ID: 0003
Revises: 0002
Drafts are computed live from ``usage_records`` and never stored. A finalized invoice's
lines, sources and amounts are one canonical JSON document (amounts as decimal strings,
never floats); ``total`` is a decimal string too and ``content_hash`` the SHA-256 that
:func:`billing.invoices.compute_hash` gives at finalization.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "invoices",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("period", sa.String(length=7), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("total", sa.String(length=40), nullable=False),
        sa.Column("watermark", sa.Integer(), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("finalized_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("tenant_id", "period"),
        sa.CheckConstraint("status IN ('draft', 'finalized')", name="ck_invoices_status"),
    )


def downgrade() -> None:
    op.drop_table("invoices")
