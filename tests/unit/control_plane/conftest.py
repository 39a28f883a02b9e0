"""Control-plane unit fixtures: every database-backed test runs on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from control_plane.store import Database, upgrade_to_head


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A migrated database."""
    upgrade_to_head(database_url)
    database = Database(database_url)
    yield database
    database.dispose()
