"""API key roles: ``api_keys.role`` (owner, admin, member, viewer, billing).

Revision ID: 0007
Revises: 0006
Keys that existed before roles become ``member``: the role that can do exactly what every
key could do until now (sandboxes, jobs, agents of its tenant), and nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column("role", sa.String(length=16), nullable=False, server_default="member")
        )


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("role")
