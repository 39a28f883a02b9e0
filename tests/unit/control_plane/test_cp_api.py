"""The HTTP API without a network: auth, roles, validation, limits and error shapes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from byoc_agent.protocol.signing import SigningKey
from control_plane.api import create_app
from control_plane.testing import ADMIN_TOKEN, make_settings
from control_plane.transport import MemoryPublisher

OPERATOR = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(make_settings(tmp_path, database_url), publisher=MemoryPublisher())
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def new_tenant(client: TestClient, name: str = "acme") -> tuple[str, dict[str, str]]:
    r = client.post("/v1/tenants", json={"name": name}, headers=OPERATOR)
    assert r.status_code == 201
    body = r.json()
    return body["tenant"]["id"], {"Authorization": f"Bearer {body['api_key']['key']}"}


def error_of(r: object) -> dict[str, str]:
    body = r.json()  # type: ignore[attr-defined]
    return body["error"]  # type: ignore[no-any-return]


def test_creating_a_tenant_returns_its_first_key_once(client: TestClient) -> None:
    """The key is in the create response and never in listings."""
    tenant_id, _ = new_tenant(client)
    keys = client.get(f"/v1/tenants/{tenant_id}/api-keys", headers=OPERATOR).json()["items"]
    assert len(keys) == 1
    assert "key" not in keys[0]
    assert client.get(f"/v1/tenants/{tenant_id}", headers=OPERATOR).json()["name"] == "acme"


@pytest.mark.parametrize(
    "header", [None, "Bearer", "Basic abc", "Bearer ck_0123456789abcdef_nope", "Bearer x" * 100]
)
def test_missing_or_invalid_credentials_get_401(client: TestClient, header: str | None) -> None:
    """Anything but the operator token or a live API key is unauthenticated."""
    headers = {"Authorization": header} if header else {}
    r = client.get("/v1/sandboxes", headers=headers)
    assert r.status_code == 401
    assert error_of(r)["code"] == "unauthenticated"


def test_a_revoked_api_key_gets_401(client: TestClient) -> None:
    """Revocation takes effect on the next request."""
    tenant_id, auth = new_tenant(client)
    assert client.get("/v1/sandboxes", headers=auth).status_code == 200
    key_id = client.get(f"/v1/tenants/{tenant_id}/api-keys", headers=OPERATOR).json()["items"][0]
    r = client.delete(f"/v1/tenants/{tenant_id}/api-keys/{key_id['id']}", headers=OPERATOR)
    assert r.status_code == 204
    assert client.get("/v1/sandboxes", headers=auth).status_code == 401


def test_roles_are_enforced_both_ways(client: TestClient) -> None:
    """A tenant key cannot use operator endpoints and the operator cannot create sandboxes."""
    _, auth = new_tenant(client)
    assert client.get("/v1/tenants", headers=auth).status_code == 403
    assert client.post("/v1/tenants", json={"name": "x"}, headers=auth).status_code == 403
    r = client.post("/v1/sandboxes", json={"template": "base"}, headers=OPERATOR)
    assert r.status_code == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"template": "base", "cpu": 9}, "cpu"),
        ({"template": "base", "cpu": 0}, "cpu"),
        ({"template": "base", "memory_mb": 64}, "memory_mb"),
        ({"template": "base", "memory_mb": 16385}, "memory_mb"),
        ({"template": "base", "timeout_s": 0}, "timeout_s"),
        ({"template": "base", "timeout_s": 86401}, "timeout_s"),
        ({"template": "base", "cpu": "2"}, "cpu"),
        ({"template": "Bad Name"}, "template"),
        ({"template": "base", "surprise": True}, "surprise"),
        ({"template": "base", "env": {"1BAD": "x"}}, "env.1BAD.[key]"),
        ({"template": "base", "metadata": {str(i): "v" for i in range(65)}}, "metadata"),
        ({}, "template"),
        ({"template": "base", "isolation": "microvm", "egress": ["localhost:443"]}, "egress"),
        ({"template": "base", "isolation": "microvm", "egress": ["10.0.0.0/8:443"]}, "egress"),
        ({"template": "base", "isolation": "microvm", "egress": ["10.0.0.5:0"]}, "egress"),
        ({"template": "base", "isolation": "microvm", "egress": ["[::1]:443"]}, "egress"),
        ({"template": "base", "isolation": "microvm", "egress": ["10.0.0.5:1-9"]}, "egress"),
        ({"template": "base", "isolation": "microvm", "egress": ["10.0.0.5:443"] * 2}, "egress"),
        ({"template": "base", "isolation": "microvm", "egress": [f"10.0.0.5:{p}" for p in
                                                                range(1, 18)]}, "egress"),
        ({"template": "base", "isolation": "microvm", "egress": "10.0.0.5:443"}, "egress"),
        ({"template": "base", "isolation": "microvm", "egress": [443]}, "egress.0"),
        ({"template": "base", "egress": ["10.0.0.5:443"]}, "egress"),
        ({"template": "base", "isolation": "gvisor", "egress": ["10.0.0.5:443"]}, "egress"),
        ({"snapshot_id": "snap_0123456789abcdef", "egress": ["10.0.0.5:443"]}, "egress"),
    ],
)
def test_invalid_sandbox_requests_get_400_naming_the_field(
    client: TestClient, body: dict[str, object], field: str
) -> None:
    """Out-of-range or unknown input is refused with the offending field named."""
    _, auth = new_tenant(client)
    r = client.post("/v1/sandboxes", json=body, headers=auth)
    assert r.status_code == 400
    assert error_of(r)["code"] == "invalid_argument"
    assert error_of(r)["field"] == field


def test_malformed_json_gets_400(client: TestClient) -> None:
    """A body that is not JSON is a 400 naming the body."""
    _, auth = new_tenant(client)
    r = client.post(
        "/v1/sandboxes",
        content=b'{"template": ',
        headers={**auth, "content-type": "application/json"},
    )
    assert r.status_code == 400
    assert error_of(r)["field"] == "body"


def test_a_body_over_one_mebibyte_gets_413(client: TestClient) -> None:
    """The limit applies before authentication or parsing."""
    r = client.post("/v1/tenants", content=b"x" * (1024 * 1024 + 1), headers=OPERATOR)
    assert r.status_code == 413
    assert error_of(r)["code"] == "payload_too_large"


def test_creating_a_sandbox_with_no_agent_online_gets_503(client: TestClient) -> None:
    """With no heartbeat from any agent there is nowhere to place a sandbox."""
    _, auth = new_tenant(client)
    r = client.post("/v1/sandboxes", json={"template": "base"}, headers=auth)
    assert r.status_code == 503
    assert error_of(r)["code"] == "capacity"


def test_a_gvisor_sandbox_asking_for_egress_is_told_to_use_microvm(client: TestClient) -> None:
    """gVisor sandboxes run without a network: egress there is a 400 that says what to do."""
    _, auth = new_tenant(client)
    r = client.post("/v1/sandboxes", json={"template": "base", "egress": ["10.0.0.5:443"]},
                    headers=auth)  # fmt: skip
    assert r.status_code == 400
    assert "isolation=microvm" in error_of(r)["message"]
    r = client.post("/v1/sandboxes", json={"template": "base", "isolation": "microvm",
                                           "egress": ["localhost:443"]}, headers=auth)  # fmt: skip
    assert "'localhost:443'" in error_of(r)["message"]
    # A well-formed microVM request gets as far as placement (no agent here: 503).
    r = client.post("/v1/sandboxes", json={"template": "base", "isolation": "microvm",
                                           "egress": ["10.0.0.5:443"]}, headers=auth)  # fmt: skip
    assert r.status_code == 503


def test_unknown_routes_and_resources_get_json_404(client: TestClient) -> None:
    """Missing things are 404 in the error shape, never HTML."""
    _, auth = new_tenant(client)
    assert error_of(client.get("/v1/nowhere", headers=auth))["code"] == "not_found"
    r = client.get("/v1/sandboxes/sb_missing", headers=auth)
    assert r.status_code == 404
    assert client.get("/v1/jobs/j_missing", headers=auth).status_code == 404


def test_a_bad_cursor_or_filter_gets_400(client: TestClient) -> None:
    """Opaque cursors are checked; malformed metadata filters name themselves."""
    _, auth = new_tenant(client)
    r = client.get("/v1/sandboxes", params={"cursor": "not-a-cursor"}, headers=auth)
    assert error_of(r)["field"] == "cursor"
    r = client.get("/v1/sandboxes", params={"metadata.bad key": "x"}, headers=auth)
    assert r.status_code == 400
    r = client.get("/v1/sandboxes", params={"state": "exploded"}, headers=auth)
    assert error_of(r)["field"] == "state"


def test_tenants_paginate_with_an_opaque_cursor(client: TestClient) -> None:
    """Following next_cursor visits every tenant once."""
    for i in range(5):
        new_tenant(client, f"t{i}")
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/tenants", params=params, headers=OPERATOR).json()
        seen += [t["name"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"t{i}" for i in range(5)]


def test_enrollment_returns_identity_nats_url_and_control_plane_keys(client: TestClient) -> None:
    """An agent enrolls once with its public key and learns the keys that sign its jobs."""
    tenant_id, auth = new_tenant(client)
    token = client.post(
        "/v1/agents/enrollment-tokens",
        json={"tenant_id": tenant_id, "ttl_s": 600},
        headers=OPERATOR,
    ).json()["token"]
    body = {
        "token": token,
        "name": "agent-1",
        "public_key": SigningKey.generate().public_text,
        "data_plane_url": "http://10.0.0.5:7000",
        "runtimes": ["gvisor"],
        "templates": ["base"],
        "capacity": {
            "cpu_total": 8,
            "cpu_free": 8,
            "memory_mb_total": 16384,
            "memory_mb_free": 16384,
            "sandboxes": 0,
        },
    }
    r = client.post("/v1/agents/enroll", json=body)
    assert r.status_code == 201
    enrolled = r.json()
    assert enrolled["tenant_id"] == tenant_id
    assert enrolled["control_plane_keys"][0]["status"] == "active"
    assert client.post("/v1/agents/enroll", json=body).status_code == 401
    agent = client.get(f"/v1/agents/{enrolled['agent_id']}", headers=auth).json()
    assert agent["status"] == "offline"
    assert client.get("/v1/signing-keys").json()["keys"] == enrolled["control_plane_keys"]
    bad = {**body, "public_key": "not-a-key"}
    assert error_of(client.post("/v1/agents/enroll", json=bad))["field"] == "public_key"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.dictionaries(
        st.sampled_from(["template", "cpu", "memory_mb", "timeout_s", "env", "metadata", "x"]),
        json_values,
    )
)
def test_no_sandbox_request_body_produces_a_500(
    client: TestClient, body: dict[str, object]
) -> None:
    """Whatever JSON arrives, the answer is a 4xx or 503, never a server error."""
    _, auth = new_tenant(client)
    r = client.post("/v1/sandboxes", json=body, headers=auth)
    assert r.status_code in (400, 404, 503)
    assert "error" in r.json()
