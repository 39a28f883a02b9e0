"""Sandbox creation is rate limited per tenant; keys from before roles became ``member``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from alembic import command
from api_world import bearer, world
from sqlalchemy import text

from control_plane.api.rate_limit import TenantRateLimiter
from control_plane.errors import RateLimitedError
from control_plane.store import Database, tenants
from control_plane.store.credentials import mint_api_key
from control_plane.store.migrate import alembic_config
from control_plane.testing import make_settings
from corral._http import About, error_from_response
from corral.errors import RateLimitedError as SdkRateLimitedError

SANDBOX = {"template": "base", "cpu": 1, "memory_mb": 256}


def test_sandbox_creation_beyond_the_burst_gets_429_with_retry_after(
    tmp_path: Path, database_url: str
) -> None:
    """Tenant A's bucket empties after its burst; B's does not; the SDK reads Retry-After."""
    settings = dataclasses.replace(
        make_settings(tmp_path, database_url),
        sandbox_create_rate_per_s=0.05,  # one token every 20 s
        sandbox_create_burst=4,
    )
    with world(tmp_path, database_url, settings) as w:
        # The world already created one sandbox for each tenant: 3 tokens are left.
        a = bearer(w.a.keys["member"])
        codes = [
            w.client.post("/v1/sandboxes", json=SANDBOX, headers=a).status_code for _ in range(3)
        ]
        assert codes == [201, 201, 201]
        refused = w.client.post("/v1/sandboxes", json=SANDBOX, headers=a)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limited"
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 20
        # Another key of the same tenant shares the bucket; another tenant has its own.
        again = w.client.post("/v1/sandboxes", json=SANDBOX, headers=bearer(w.a.keys["owner"]))
        assert again.status_code == 429
        other = w.client.post("/v1/sandboxes", json=SANDBOX, headers=bearer(w.b.keys["member"]))
        assert other.status_code == 201, other.text
        # Invalid requests and reads are not counted or limited.
        assert w.client.post("/v1/sandboxes", json={"cpu": 1}, headers=a).status_code == 400
        assert w.client.get("/v1/sandboxes", headers=a).status_code == 200
        error = error_from_response(refused, About(plane="control"))
        assert isinstance(error, SdkRateLimitedError)
        assert error.retryable
        assert error.retry_after_s == retry_after


def test_a_token_bucket_refills_at_its_rate() -> None:
    """Burst, then one token per 1/rate seconds; Retry-After rounds the wait up."""
    now = [100.0]
    limiter = TenantRateLimiter(2.0, 3, clock=lambda: now[0])
    for _ in range(3):
        limiter.take("t1")
    with pytest.raises(RateLimitedError) as caught:
        limiter.take("t1")
    assert caught.value.retry_after_s == 1
    now[0] += 0.5  # one token back
    limiter.take("t1")
    with pytest.raises(RateLimitedError):
        limiter.take("t1")
    now[0] += 100  # refills only up to the burst
    for _ in range(3):
        limiter.take("t1")
    with pytest.raises(RateLimitedError):
        limiter.take("t1")
    limiter.take("t2")  # per tenant
    assert not TenantRateLimiter(0, 10).enabled


def test_keys_made_before_roles_become_members(tmp_path: Path, database_url: str) -> None:
    """Migration 0005 gives existing keys ``member``: they keep sandboxes, lose nothing,
    and gain no key management."""
    config = alembic_config(database_url)
    command.upgrade(config, "0006")
    db = Database(database_url)
    secret = mint_api_key()
    try:
        with db.engine.begin() as conn:
            conn.execute(
                text("INSERT INTO tenants (id, name, created_at) VALUES ('t_old', 'old', :now)"),
                {"now": "2026-01-01 00:00:00"},
            )
            conn.execute(
                text(
                    "INSERT INTO api_keys (id, tenant_id, name, secret_hash, created_at) "
                    "VALUES (:id, 't_old', 'legacy', :hash, :now)"
                ),
                {"id": secret.id, "hash": secret.hash, "now": "2026-01-01 00:00:00"},
            )
        command.upgrade(config, "head")
        caller = db.run_sync(lambda s: tenants.authenticate(s, secret.text))
        assert (caller.tenant_id, caller.role) == ("t_old", "member")
        with world(tmp_path, database_url) as w:
            key = bearer(secret.text)
            assert w.client.get("/v1/sandboxes", headers=key).status_code == 200
            assert w.client.get("/v1/api-keys", headers=key).status_code == 403
    finally:
        db.dispose()
