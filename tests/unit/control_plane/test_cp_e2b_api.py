"""The E2B-compatible API without a network: E2B's auth header, error shape and refusals."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from control_plane.api import create_app
from control_plane.e2b.routes import _metadata_query
from control_plane.testing import ADMIN_TOKEN, make_settings
from control_plane.transport import MemoryPublisher

OPERATOR = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

pytestmark = pytest.mark.e2b



@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app for the module, on SQLite: these routes add no SQL of their own."""
    home = tmp_path_factory.mktemp("e2b-api")
    app = create_app(
        make_settings(home, f"sqlite:///{home / 'cp.db'}"), publisher=MemoryPublisher()
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def key(client: TestClient) -> dict[str, str]:
    r = client.post("/v1/tenants", json={"name": "acme"}, headers=OPERATOR)
    assert r.status_code == 201
    return {"X-API-KEY": r.json()["api_key"]["key"]}


@pytest.mark.parametrize("headers", [{}, {"X-API-KEY": "ck_0123456789abcdef_nope"},
                                     {"Authorization": f"Bearer {ADMIN_TOKEN}"}])
def test_without_a_tenant_key_in_x_api_key_e2b_gets_401(
    client: TestClient, headers: dict[str, str]
) -> None:
    """Only a Corral tenant API key in E2B's header is accepted; errors are E2B-shaped."""
    r = client.get("/v2/sandboxes", headers=headers)
    assert r.status_code == 401
    assert r.json()["code"] == 401
    assert r.json()["message"]


def test_a_tenant_with_no_sandboxes_lists_none(client: TestClient, key: dict[str, str]) -> None:
    r = client.get("/v2/sandboxes", headers=key)
    assert r.status_code == 200
    assert r.json() == []
    assert "x-next-token" not in r.headers


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"templateID": "base", "network": {"allowOut": ["1.1.1.1"]}}, "network"),
        ({"templateID": "base", "autoPause": True}, "autoPause"),
        ({"templateID": "base", "allow_internet_access": True}, "network"),
        ({"templateID": "Not A Template"}, "templateID"),
        ({"templateID": "base", "timeout": 0}, "timeout"),
        ({"templateID": "base", "metadata": {"bad key!": "x"}}, "metadata"),
        ({"templateID": "base", "envVars": {"1BAD": "x"}}, "envVars"),
        ({"timeout": 30}, "templateID"),
    ],
)
def test_create_refuses_what_corral_cannot_honour(
    client: TestClient, key: dict[str, str], body: dict[str, object], needle: str
) -> None:
    """Unsupported or invalid fields are a 400 naming them, never silently dropped."""
    r = client.post("/v2/sandboxes", json=body, headers=key)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == 400
    assert needle in r.json()["message"]


def test_bad_json_is_a_400(client: TestClient, key: dict[str, str]) -> None:
    headers = {**key, "Content-Type": "application/json"}
    r = client.post("/v2/sandboxes", content=b"{nope", headers=headers)
    assert r.status_code == 400
    assert r.json() == {"code": 400, "message": "body is not valid JSON"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/sandboxes/sbx_missing"),
        ("DELETE", "/sandboxes/sbx_missing"),
        ("POST", "/v2/sandboxes/sbx_missing/connect"),
        ("POST", "/sandboxes/sbx_missing/pause"),
    ],
)
def test_an_unknown_sandbox_is_a_404(
    client: TestClient, key: dict[str, str], method: str, path: str
) -> None:
    r = client.request(method, path, headers=key, json={})
    assert r.status_code == 404
    assert r.json()["code"] == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/sandboxes/sbx_1/fork"),
        ("POST", "/sandboxes/sbx_1/snapshots"),
        ("GET", "/sandboxes/sbx_1/metrics"),
        ("PUT", "/sandboxes/sbx_1/network"),
        ("GET", "/v2/sandboxes/sbx_1/logs"),
    ],
)
def test_calls_corral_has_no_counterpart_for_are_501(
    client: TestClient, key: dict[str, str], method: str, path: str
) -> None:
    """Not a bare 404, which the SDK would report as "sandbox not found"."""
    r = client.request(method, path, headers=key, json={})
    assert r.status_code == 501
    assert "not supported" in r.json()["message"]


def test_no_agent_online_is_e2bs_503(client: TestClient, key: dict[str, str]) -> None:
    """Placement failures keep their status: the SDK retries 503s, then raises."""
    r = client.post("/v2/sandboxes", json={"templateID": "base"}, headers=key)
    assert r.status_code == 503
    assert r.json()["code"] == 503


def test_the_metadata_filter_reads_the_sdks_double_encoding() -> None:
    """The SDK escapes keys and values, joins them as a query string, and sends that."""
    wanted = {"run": "a b&c", "team/x": "é=1"}
    sent = urllib.parse.urlencode(
        {urllib.parse.quote(k): urllib.parse.quote(v) for k, v in wanted.items()}
    )
    assert _metadata_query(sent) == wanted
    assert _metadata_query(None) == {}
