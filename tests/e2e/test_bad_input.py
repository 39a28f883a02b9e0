"""Bad input through the real stack: each gets a clear, typed error and nothing is lost."""

from __future__ import annotations

import httpx
import pytest

from corral import (
    AdminClient,
    AuthenticationError,
    InvalidArgumentError,
    NotFoundError,
    Sandbox,
    SandboxNotFoundError,
    TemplateNotFoundError,
)
from corral.testing.stack import StackInfo

pytestmark = [pytest.mark.e2e, pytest.mark.gvisor, pytest.mark.nats]


def test_an_invalid_api_key_is_refused_with_a_clear_message(info: StackInfo) -> None:
    """A key that does not exist gets AuthenticationError, not a crash."""
    with pytest.raises(AuthenticationError):
        Sandbox.create(api_url=info.api_url, api_key="ck_nope_nope")


def test_a_revoked_api_key_stops_working(admin: AdminClient, info: StackInfo) -> None:
    """Revoking a key takes effect on the next request."""
    new = admin.create_api_key(info.tenant_id, "short-lived")
    assert Sandbox.list(api_url=info.api_url, api_key=new.key) is not None
    admin.revoke_api_key(info.tenant_id, new.id)
    with pytest.raises(AuthenticationError):
        Sandbox.list(api_url=info.api_url, api_key=new.key)


def test_another_tenants_sandbox_is_not_found(admin: AdminClient, info: StackInfo) -> None:
    """Tenant B cannot see, connect to or kill tenant A's sandbox: 404, not 403."""
    other = admin.create_tenant("other-tenant")
    with Sandbox.create(api_url=info.api_url, api_key=info.api_key) as sb:
        with pytest.raises(SandboxNotFoundError):
            Sandbox.connect(sb.id, api_url=info.api_url, api_key=other.api_key.key)
        r = httpx.delete(f"{info.api_url}/v1/sandboxes/{sb.id}",
                         headers={"Authorization": f"Bearer {other.api_key.key}"})
        assert r.status_code == 404
        assert sb.commands.run("echo mine").stdout == "mine\n"


def test_malformed_json_is_a_400_naming_the_problem(info: StackInfo) -> None:
    """A body that is not JSON gets a 400 JSON error, not a 500."""
    r = httpx.post(f"{info.api_url}/v1/sandboxes", content=b"{not json",
                   headers={"Authorization": f"Bearer {info.api_key}",
                            "Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_argument"


def test_an_oversized_payload_is_a_413(info: StackInfo) -> None:
    """A request body over 1 MiB is refused before it is parsed."""
    r = httpx.post(f"{info.api_url}/v1/sandboxes",
                   json={"template": "base", "metadata": {"k": "x" * (2 * 1024 * 1024)}},
                   headers={"Authorization": f"Bearer {info.api_key}"})
    assert r.status_code == 413


def test_an_unknown_template_is_not_found(info: StackInfo) -> None:
    """Asking for a template no agent has gives TemplateNotFoundError."""
    with pytest.raises(TemplateNotFoundError):
        Sandbox.create(template="no-such-template", api_url=info.api_url, api_key=info.api_key)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"cpu": 0}, "cpu"), ({"cpu": 1000}, "cpu"), ({"memory_mb": 1}, "memory_mb"),
     ({"memory_mb": 10**9}, "memory_mb"), ({"timeout": 0}, "timeout_s")],
)
def test_out_of_range_resources_name_the_field(
    info: StackInfo, kwargs: dict[str, int], field: str
) -> None:
    """cpu, memory and timeout outside the limits are a 400 that names the field."""
    with pytest.raises(InvalidArgumentError) as e:
        Sandbox.create(api_url=info.api_url, api_key=info.api_key, **kwargs)  # type: ignore[arg-type]
    assert e.value.field == field
    assert field in str(e.value)


def test_reading_a_missing_file_is_not_found(info: StackInfo) -> None:
    """A path that does not exist is a NotFoundError naming the path."""
    with Sandbox.create(api_url=info.api_url, api_key=info.api_key) as sb, pytest.raises(
        NotFoundError, match="nowhere"
    ):
        sb.files.read("/nowhere/at/all")


def test_nothing_is_left_pending_after_bad_requests(info: StackInfo) -> None:
    """Refused creates leave no sandbox behind in the pending state."""
    pending = Sandbox.list(state="pending", api_url=info.api_url, api_key=info.api_key)
    assert pending == []
