"""Isolation per workload: each sandbox records its isolation class; a tenant may require one.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(
            sa.Column("isolation", sa.String(length=16), nullable=False, server_default="gvisor")
        )
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("required_isolation", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("required_isolation")
    with op.batch_alter_table("sandboxes") as batch:
        batch.drop_column("isolation")
