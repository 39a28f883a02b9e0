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
    NotFoundError,
    PermissionDeniedError,
    Sandbox,
    SandboxNotFoundError,
    delete_snapshot,
    list_snapshots,
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


@pytest.mark.console
def test_cli_creates_a_console_user_who_can_sign_in(
    control_plane_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`corral admin console-user create` makes a user that signs in to /console."""
    import re

    import httpx
    from typer.testing import CliRunner

    from corral.cli import app as cli_app

    monkeypatch.setenv("CORRAL_API_URL", control_plane_url)
    monkeypatch.setenv("CORRAL_ADMIN_TOKEN", ADMIN_TOKEN)
    runner = CliRunner()
    password = "a long enough passphrase"
    made = runner.invoke(
        cli_app,
        ["admin", "console-user", "create", "cli-ops", "--role", "viewer", "--password-stdin"],
        input=password + "\n",
    )
    assert made.exit_code == 0, made.output
    assert "created console user cli-ops (viewer)" in made.stdout
    listed = runner.invoke(cli_app, ["admin", "console-user", "ls"])
    assert "cli-ops" in listed.stdout
    assert password not in listed.stdout
    again = runner.invoke(
        cli_app, ["admin", "console-user", "create", "cli-ops", "--password-stdin"],
        input=password + "\n",
    )
    assert again.exit_code == 1
    assert "already exists" in again.output
    with httpx.Client(base_url=control_plane_url, follow_redirects=False) as web:
        page = web.get("/console/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token
        r = web.post(
            "/console/login",
            data={"username": "cli-ops", "password": password, "csrf_token": token.group(1)},
        )
        assert r.status_code == 303
        assert web.get("/console/tenants").status_code == 200


def test_snapshot_calls_agree_with_the_real_api_on_shapes_and_errors(
    admin: AdminClient, control_plane_url: str
) -> None:
    """Listing, restoring from and deleting snapshots; an unknown one is NotFoundError."""
    key = admin.create_tenant("contract-snapshots").api_key.key
    auth = {"api_key": key, "api_url": control_plane_url}
    assert list_snapshots(**auth) == []  # type: ignore[arg-type]
    with pytest.raises(NotFoundError, match="snapshot"):
        Sandbox.create(snapshot="snap_0123456789abcdef", **auth)  # type: ignore[arg-type]
    with pytest.raises(NotFoundError, match="snapshot"):
        delete_snapshot("snap_0123456789abcdef", **auth)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="snapshot id"):
        Sandbox.create(snapshot="../etc", **auth)  # type: ignore[arg-type]


def test_egress_is_checked_by_the_real_api_before_any_agent_is_asked(
    admin: AdminClient, control_plane_url: str
) -> None:
    """A malformed entry, egress on a gVisor sandbox and egress beside a snapshot are 400s
    naming the egress field."""
    key = admin.create_tenant("contract-egress").api_key.key
    auth = {"api_key": key, "api_url": control_plane_url}
    with pytest.raises(InvalidArgumentError, match="'localhost:80'") as bad:
        Sandbox.create(isolation="microvm", egress=["localhost:80"], **auth)  # type: ignore[arg-type]
    assert bad.value.field == "egress"
    with pytest.raises(InvalidArgumentError, match="isolation=microvm") as gvisor:
        Sandbox.create(egress=["192.0.2.10:443"], **auth)  # type: ignore[arg-type]
    assert gvisor.value.field == "egress"
    with pytest.raises(InvalidArgumentError, match="snapshot's") as restore:
        Sandbox.create(
            snapshot="snap_0123456789abcdef", egress=["192.0.2.10:443"], **auth  # type: ignore[arg-type]
        )
    assert restore.value.field == "egress"
