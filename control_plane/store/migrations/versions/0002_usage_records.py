"""Usage records reported by agents, deduplicated on (tenant, agent, record_id).

Revision ID: 0002
Revises: 0001
Times are whole-second UTC (``timestamptz`` in PostgreSQL); sizes are integers. No money
is stored: usage is priced with :mod:`billing` when it is exported.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_records",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("agent_id", sa.String(length=64), nullable=False),
        sa.Column("record_id", sa.String(length=64), nullable=False),
        sa.Column("sandbox_id", sa.String(length=64), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("vcpu", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("gpu_model", sa.String(length=64), nullable=True),
        sa.Column("isolation", sa.String(length=16), nullable=False),
        sa.Column("template", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.ForeignKeyConstraint(["agent_id"], ["agents.id"]),
        sa.ForeignKeyConstraint(["sandbox_id"], ["sandboxes.id"]),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("tenant_id", "agent_id", "record_id", name="uq_usage_records_key"),
    )
    op.create_index("ix_usage_records_tenant_start", "usage_records", ["tenant_id", "start"])
    op.create_index("ix_usage_records_sandbox_id", "usage_records", ["sandbox_id"])


def downgrade() -> None:
    op.drop_index("ix_usage_records_sandbox_id", table_name="usage_records")
    op.drop_index("ix_usage_records_tenant_start", table_name="usage_records")
    op.drop_table("usage_records")
