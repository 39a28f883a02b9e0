"""Test helpers shipped with the package: throwaway PostgreSQL databases, test settings."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

from control_plane.settings import Limits, Settings

PG_ADMIN_CONNINFO = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"
PG_URL_TEMPLATE = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
ADMIN_TOKEN = "test-operator-token-0123456789"  # noqa: S105 (a test-only operator token)


def postgres_unavailable_reason() -> str | None:
    """Why PostgreSQL cannot be used here, or ``None`` when it can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    try:
        with psycopg.connect(PG_ADMIN_CONNINFO, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        return f"PostgreSQL at 127.0.0.1:5432 is not reachable: {type(e).__name__}"
    return None


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, uniquely named database (dropped afterwards); yields its SQLAlchemy URL."""
    import psycopg

    name = f"corral_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_CONNINFO, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL_TEMPLATE.format(name=name)
    finally:
        with psycopg.connect(PG_ADMIN_CONNINFO, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_settings(
    home: Path,
    database_url: str,
    *,
    nats_url: str = "nats://127.0.0.1:4222",
    job_timeout_s: float = 10.0,
    heartbeat_offline_s: float = 15.0,
    limits: Limits | None = None,
) -> Settings:
    """Settings for a test: fixed operator token, a random master key, short timeouts."""
    return Settings(
        home=home,
        database_url=database_url,
        nats_url=nats_url,
        public_nats_url=nats_url,
        admin_token=ADMIN_TOKEN,
        master_key=secrets.token_bytes(32),
        limits=limits or Limits(),
        job_timeout_s=job_timeout_s,
        heartbeat_offline_s=heartbeat_offline_s,
    )
