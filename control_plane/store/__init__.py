"""SQLAlchemy models and Alembic migrations (SQLite by default, PostgreSQL in production).

Models are split by concern; each module also holds the small unit-of-work functions
that read and write its tables and return frozen records, never ORM rows.
"""

from control_plane.store import (
    agents,
    audit,
    billing_keys,
    console_users,
    cosign_requests,
    invoices,
    jobs,
    nats_keys,
    sandboxes,
    signing_keys,
    tenants,
    usage,
)
from control_plane.store.base import Base, Database, new_id, utcnow
from control_plane.store.migrate import upgrade_to_head
from control_plane.store.pages import MAX_PAGE, Page

__all__ = [
    "MAX_PAGE",
    "Base",
    "Database",
    "Page",
    "agents",
    "audit",
    "billing_keys",
    "console_users",
    "cosign_requests",
    "invoices",
    "jobs",
    "nats_keys",
    "new_id",
    "sandboxes",
    "signing_keys",
    "tenants",
    "upgrade_to_head",
    "usage",
    "utcnow",
]
