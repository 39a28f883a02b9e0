"""The SDK against the real control-plane app (SQLite, in-memory job publisher, served by uvicorn).

No agent is running, so sandbox creation is out of scope here; these tests pin the shapes
and error bodies the SDK and the control plane must agree on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.api import create_app
from control_plane.testing import ADMIN_TOKEN, make_settings
from control_plane.transport import MemoryPublisher
from corral import (
    AdminClient,
    AuthenticationError,
    InvalidArgumentError,
    PermissionDeniedError,
    Sandbox,
    SandboxNotFoundError,
)

from .fake_corral import ServedApp


@pytest.fixture(scope="module")
def control_plane_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real control plane on a free port, with a fresh SQLite database."""
    home = Path(tmp_path_factory.mktemp("control-plane"))
    settings = make_settings(home, f"sqlite:///{home / 'cp.db'}")
    served = ServedApp(create_app(settings, publisher=MemoryPublisher()), lifespan="on").start()
    try:
        yield served.url
    finally:
        served.stop()


@pytest.fixture
def admin(control_plane_url: str) -> Iterator[AdminClient]:
    """An operator client for the real control plane."""
    with AdminClient(ADMIN_TOKEN, api_url=control_plane_url) as client:
        yield client


def test_tenant_keys_and_listings_round_trip_through_the_real_api(
    admin: AdminClient, control_plane_url: str
) -> None:
    """A tenant made by the SDK gets a working key that lists (no) sandboxes."""
    created = admin.create_tenant("contract-acme")
    assert created.api_key.key
    assert created.tenant.id in [t.id for t in admin.list_tenants()]
    assert Sandbox.list(api_key=created.api_key.key, api_url=control_plane_url) == []
    extra = admin.create_api_key(created.tenant.id, "ci")
    assert {k.name for k in admin.list_api_keys(created.tenant.id)} >= {"ci"}
    admin.revoke_api_key(created.tenant.id, extra.id)
    with pytest.raises(AuthenticationError, match="CORRAL_API_KEY"):
        Sandbox.list(api_key=extra.key, api_url=control_plane_url)


def test_enrollment_tokens_and_agents_parse(admin: AdminClient) -> None:
    """Enrollment tokens and the (empty) agent list have the shapes the SDK reads."""
    tenant = admin.create_tenant("contract-enroll").tenant
    token = admin.create_enrollment_token(tenant.id, ttl_s=600)
    assert token.token
    assert token.expires_at is not None
    assert admin.list_agents() == []


def test_real_error_bodies_map_to_typed_errors(admin: AdminClient, control_plane_url: str) -> None:
    """401, 403, 404 and 400 from the real API become the documented exceptions."""
    key = admin.create_tenant("contract-errors").api_key.key
    with pytest.raises(SandboxNotFoundError):
        Sandbox.connect("sb-does-not-exist", api_key=key, api_url=control_plane_url)
    with pytest.raises(InvalidArgumentError) as info:
        Sandbox.create(cpu=0, api_key=key, api_url=control_plane_url)
    assert info.value.field
    with (
        AdminClient(key, api_url=control_plane_url) as as_tenant,
        pytest.raises(PermissionDeniedError),
    ):
        as_tenant.list_tenants()
    with pytest.raises(AuthenticationError):
        Sandbox.list(api_key="ck_0123456789abcdef_nope", api_url=control_plane_url)
