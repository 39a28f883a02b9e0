"""Control-plane unit fixtures: every database-backed test runs on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.store import Database, upgrade_to_head
from control_plane.testing import postgres_database, postgres_unavailable_reason


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh uniquely named PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'control-plane.db'}"
        return
    reason = postgres_unavailable_reason()
    if reason is not None:
        pytest.skip(f"PostgreSQL suite cannot run here: {reason}")
    with postgres_database() as url:
        yield url


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A migrated database."""
    upgrade_to_head(database_url)
    database = Database(database_url)
    yield database
    database.dispose()
