"""Tenant isolation and roles on every endpoint of the control-plane API.

``MATRIX`` says, for every route the app has, who may call it; the test enumerates the
app's routes, so a new endpoint without an entry here fails. Every caller is tried on
every endpoint: allowed ones get the success status, others 403 (401 without a key).
Then tenant A's keys ask for tenant B's sandboxes, jobs, agents, usage, invoices, API
keys and tokens: always 404, and B's resources are untouched; A's lists never show B's.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from api_world import OPERATOR, World, bearer, world
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from byoc_agent.protocol.signing import SigningKey
from control_plane.api import create_app
from control_plane.testing import make_settings
from control_plane.transport import MemoryPublisher

TENANT_ROLES = ("owner", "admin", "member", "viewer", "billing")
PRINCIPALS = ("anonymous", "operator", "finance", *TENANT_ROLES)


@dataclass(frozen=True)
class Req:
    url: str
    json: dict[str, object] | None = None
    params: dict[str, str] = field(default_factory=dict)


Build = Callable[[World], Req]


@dataclass(frozen=True)
class Endpoint:
    allowed: frozenset[str]
    ok: int
    own: Build  # a request about tenant A's things (fresh ones where the call destroys)
    other: Build | None = None  # the same request naming tenant B's thing: 404 for A
    lists: bool = False  # a listing: A's answer must not mention B


_USERS = itertools.count(1)
PUBLIC = frozenset(PRINCIPALS)
OPERATOR_ONLY = frozenset({"operator"})
SANDBOX_READERS = frozenset({"owner", "admin", "member", "viewer"})
SANDBOX_WRITERS = frozenset({"owner", "admin", "member"})
READERS = SANDBOX_READERS | {"operator"}
KEY_MANAGERS = frozenset({"owner", "admin"})
BILLING = frozenset({"operator", "finance", "billing"})
NOV = "2026-11"


def fresh_key(w: World, role: str = "member") -> str:
    return w.mint_key(w.a.id, role)["id"]


def retired_kid(w: World) -> str:
    """Rotate the control plane's signing key and return the kid it retired."""
    listed = w.client.get("/v1/admin/signing-keys", headers=OPERATOR).json()["keys"]
    active = next(k["kid"] for k in listed if k["status"] == "active")
    w.client.post("/v1/admin/signing-keys/rotate", headers=OPERATOR).raise_for_status()
    return str(active)


def fresh_billing_key(w: World) -> str:
    r = w.client.post("/v1/billing/keys", json={"name": "spare"}, headers=OPERATOR)
    return str(r.json()["id"])


MATRIX: dict[tuple[str, str], Endpoint] = {
    ("GET", "/healthz"): Endpoint(PUBLIC, 200, lambda w: Req("/healthz")),
    ("GET", "/v1/signing-keys"): Endpoint(PUBLIC, 200, lambda w: Req("/v1/signing-keys")),
    ("POST", "/v1/agents/enroll"): Endpoint(
        PUBLIC,
        201,
        lambda w: Req("/v1/agents/enroll", json=w.enroll_body(w.a.id, SigningKey.generate())),
    ),
    # operator
    ("POST", "/v1/tenants"): Endpoint(
        OPERATOR_ONLY, 201, lambda w: Req("/v1/tenants", json={"name": "new"})
    ),
    ("GET", "/v1/tenants"): Endpoint(OPERATOR_ONLY, 200, lambda w: Req("/v1/tenants")),
    ("GET", "/v1/tenants/{tenant_id}"): Endpoint(
        OPERATOR_ONLY, 200, lambda w: Req(f"/v1/tenants/{w.a.id}")
    ),
    # audit log: the operator sees everything, a tenant key its own tenant's entries
    ("GET", "/v1/audit"): Endpoint(READERS, 200, lambda w: Req("/v1/audit"), lists=True),
    ("GET", "/v1/audit/verify"): Endpoint(OPERATOR_ONLY, 200, lambda w: Req("/v1/audit/verify")),
    # co-signing: no request is pending in this world, so an allowed caller gets 404 (the
    # role check comes first: a refused one gets 403)
    ("GET", "/v1/cosign-requests"): Endpoint(
        SANDBOX_READERS, 200, lambda w: Req("/v1/cosign-requests"), lists=True
    ),
    ("GET", "/v1/cosign-requests/{request_id}"): Endpoint(
        SANDBOX_READERS, 404, lambda w: Req("/v1/cosign-requests/j_nonexistent")
    ),
    ("POST", "/v1/cosign-requests/{request_id}/cosignature"): Endpoint(
        SANDBOX_WRITERS,
        404,
        lambda w: Req("/v1/cosign-requests/j_nonexistent/cosignature", json={"cosignature": "x"}),
    ),
    ("PUT", "/v1/tenants/{tenant_id}/policy"): Endpoint(
        OPERATOR_ONLY,
        200,
        lambda w: Req(f"/v1/tenants/{w.a.id}/policy", json={"required_isolation": None}),
    ),
    ("POST", "/v1/console/users"): Endpoint(
        OPERATOR_ONLY,
        201,
        lambda w: Req(
            "/v1/console/users",
            json={"username": f"user-{next(_USERS)}", "password": "a-long-enough-passphrase-42"},
        ),
    ),
    ("GET", "/v1/console/users"): Endpoint(OPERATOR_ONLY, 200, lambda w: Req("/v1/console/users")),
    ("POST", "/v1/tenants/{tenant_id}/api-keys"): Endpoint(
        OPERATOR_ONLY, 201, lambda w: Req(f"/v1/tenants/{w.a.id}/api-keys", json={"name": "k"})
    ),
    ("GET", "/v1/tenants/{tenant_id}/api-keys"): Endpoint(
        OPERATOR_ONLY, 200, lambda w: Req(f"/v1/tenants/{w.a.id}/api-keys")
    ),
    ("DELETE", "/v1/tenants/{tenant_id}/api-keys/{key_id}"): Endpoint(
        OPERATOR_ONLY, 204, lambda w: Req(f"/v1/tenants/{w.a.id}/api-keys/{fresh_key(w)}")
    ),
    ("POST", "/v1/agents/enrollment-tokens"): Endpoint(
        OPERATOR_ONLY,
        201,
        lambda w: Req("/v1/agents/enrollment-tokens", json={"tenant_id": w.a.id}),
    ),
    # the tenant's own keys
    ("GET", "/v1/api-keys"): Endpoint(KEY_MANAGERS, 200, lambda w: Req("/v1/api-keys"), lists=True),
    ("POST", "/v1/api-keys"): Endpoint(
        KEY_MANAGERS, 201, lambda w: Req("/v1/api-keys", json={"name": "k", "role": "viewer"})
    ),
    ("DELETE", "/v1/api-keys/{key_id}"): Endpoint(
        KEY_MANAGERS,
        204,
        lambda w: Req(f"/v1/api-keys/{fresh_key(w)}"),
        other=lambda w: Req(f"/v1/api-keys/{w.b.key_ids['member']}"),
    ),
    # agents and jobs
    ("GET", "/v1/agents"): Endpoint(READERS, 200, lambda w: Req("/v1/agents"), lists=True),
    ("GET", "/v1/agents/{agent_id}"): Endpoint(
        READERS,
        200,
        lambda w: Req(f"/v1/agents/{w.a.agent_id}"),
        other=lambda w: Req(f"/v1/agents/{w.b.agent_id}"),
    ),
    ("GET", "/v1/jobs/{job_id}"): Endpoint(
        READERS,
        200,
        lambda w: Req(f"/v1/jobs/{w.a.job_id}"),
        other=lambda w: Req(f"/v1/jobs/{w.b.job_id}"),
    ),
    # sandboxes
    ("POST", "/v1/sandboxes"): Endpoint(
        SANDBOX_WRITERS, 201, lambda w: Req("/v1/sandboxes", json={"template": "base", "cpu": 1})
    ),
    ("GET", "/v1/sandboxes"): Endpoint(
        SANDBOX_READERS, 200, lambda w: Req("/v1/sandboxes"), lists=True
    ),
    ("GET", "/v1/sandboxes/{sandbox_id}"): Endpoint(
        SANDBOX_READERS,
        200,
        lambda w: Req(f"/v1/sandboxes/{w.a.sandbox_id}"),
        other=lambda w: Req(f"/v1/sandboxes/{w.b.sandbox_id}"),
    ),
    ("POST", "/v1/sandboxes/{sandbox_id}/timeout"): Endpoint(
        SANDBOX_WRITERS,
        200,
        lambda w: Req(f"/v1/sandboxes/{w.a.sandbox_id}/timeout", json={"timeout_s": 600}),
        other=lambda w: Req(f"/v1/sandboxes/{w.b.sandbox_id}/timeout", json={"timeout_s": 1}),
    ),
    # pause then resume, in this order (the sandbox is running again afterwards)
    ("POST", "/v1/sandboxes/{sandbox_id}/pause"): Endpoint(
        SANDBOX_WRITERS,
        200,
        lambda w: Req(f"/v1/sandboxes/{w.a.sandbox_id}/pause"),
        other=lambda w: Req(f"/v1/sandboxes/{w.b.sandbox_id}/pause"),
    ),
    ("POST", "/v1/sandboxes/{sandbox_id}/resume"): Endpoint(
        SANDBOX_WRITERS,
        200,
        lambda w: Req(f"/v1/sandboxes/{w.a.sandbox_id}/resume"),
        other=lambda w: Req(f"/v1/sandboxes/{w.b.sandbox_id}/resume"),
    ),
    ("DELETE", "/v1/sandboxes/{sandbox_id}"): Endpoint(
        SANDBOX_WRITERS,
        204,
        lambda w: Req(f"/v1/sandboxes/{w.sandbox(w.a)}"),
        other=lambda w: Req(f"/v1/sandboxes/{w.b.sandbox_id}"),
    ),
    ("POST", "/v1/sandboxes/{sandbox_id}/token"): Endpoint(
        SANDBOX_WRITERS,
        200,
        lambda w: Req(f"/v1/sandboxes/{w.a.sandbox_id}/token"),
        other=lambda w: Req(f"/v1/sandboxes/{w.b.sandbox_id}/token"),
    ),
    # billing
    ("GET", "/v1/billing/usage"): Endpoint(
        BILLING,
        200,
        lambda w: Req("/v1/billing/usage", params={"period": NOV}),
        other=lambda w: Req("/v1/billing/usage", params={"period": NOV, "tenant_id": w.b.id}),
        lists=True,
    ),
    ("GET", "/v1/billing/export"): Endpoint(
        BILLING,
        200,
        lambda w: Req("/v1/billing/export", params={"period": NOV}),
        other=lambda w: Req("/v1/billing/export", params={"period": NOV, "tenant_id": w.b.id}),
        lists=True,
    ),
    ("GET", "/v1/billing/invoices"): Endpoint(
        BILLING,
        200,
        lambda w: Req("/v1/billing/invoices", params={"period": NOV}),
        other=lambda w: Req("/v1/billing/invoices", params={"period": NOV, "tenant_id": w.b.id}),
        lists=True,
    ),
    ("GET", "/v1/billing/invoices/{tenant_id}/{period}"): Endpoint(
        BILLING,
        200,
        lambda w: Req(f"/v1/billing/invoices/{w.a.id}/{NOV}"),
        other=lambda w: Req(f"/v1/billing/invoices/{w.b.id}/{NOV}"),
    ),
    ("POST", "/v1/billing/invoices/{tenant_id}/{period}/finalize"): Endpoint(
        OPERATOR_ONLY, 200, lambda w: Req(f"/v1/billing/invoices/{w.a.id}/2026-10/finalize")
    ),
    ("POST", "/v1/billing/keys"): Endpoint(
        OPERATOR_ONLY, 201, lambda w: Req("/v1/billing/keys", json={"name": "f"})
    ),
    ("GET", "/v1/billing/keys"): Endpoint(OPERATOR_ONLY, 200, lambda w: Req("/v1/billing/keys")),
    ("DELETE", "/v1/billing/keys/{key_id}"): Endpoint(
        OPERATOR_ONLY, 204, lambda w: Req(f"/v1/billing/keys/{fresh_billing_key(w)}")
    ),
    # control-plane signing keys (operator only); last: rotating makes the scripted agent
    # refuse jobs signed with the new key, so nothing may need a job after these
    ("GET", "/v1/admin/signing-keys"): Endpoint(
        OPERATOR_ONLY, 200, lambda w: Req("/v1/admin/signing-keys")
    ),
    ("POST", "/v1/admin/signing-keys/rotate"): Endpoint(
        OPERATOR_ONLY, 201, lambda w: Req("/v1/admin/signing-keys/rotate")
    ),
    ("POST", "/v1/admin/signing-keys/{kid}/revoke"): Endpoint(
        OPERATOR_ONLY, 200, lambda w: Req(f"/v1/admin/signing-keys/{retired_kid(w)}/revoke")
    ),
}


def _api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """Every APIRoute, including those of included routers (FastAPI keeps them nested)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        nested = getattr(route, "original_router", None) or getattr(route, "router", None)
        if nested is not None and nested is not route:
            yield from _api_routes(nested.routes)


def _is_e2b(path: str) -> bool:
    """E2B's own paths (``X-API-KEY``, not a bearer token, and not in Corral's OpenAPI
    document): their roles and isolation are tested in test_e2b_api_roles.py."""
    return path.startswith(("/sandboxes", "/v2/", "/snapshots"))


def test_every_endpoint_of_the_app_has_a_matrix_entry(tmp_path: Path) -> None:
    """A new route fails here until someone decides who may call it and writes it down.

    Routes are enumerated from the app's OpenAPI document, and every APIRoute the app
    holds must be in that document (none hidden with ``include_in_schema=False``).
    """
    app = create_app(
        make_settings(tmp_path, f"sqlite:///{tmp_path / 'routes.db'}"),
        publisher=MemoryPublisher(),
    )
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
        if not _is_e2b(path)
    }
    # The web console (HTML, its own sessions, CSRF and roles) is tested in tests/e2e and
    # tests/unit/control_plane/test_console.py; only its redirect sits on the app itself.
    held = {
        (m, r.path)
        for r in _api_routes(app.routes)
        for m in r.methods
        if not r.path.startswith("/console") and not _is_e2b(r.path)
    }
    assert len(held) >= len(MATRIX) - 1
    assert held - documented == set(), "routes hidden from the OpenAPI document"
    assert documented - MATRIX.keys() == set(), "routes without an isolation/permission entry"
    assert MATRIX.keys() - documented == set(), "matrix entries for routes that no longer exist"


def headers_of(w: World, principal: str) -> dict[str, str]:
    if principal == "anonymous":
        return {}
    if principal == "operator":
        return OPERATOR
    if principal == "finance":
        return bearer(w.finance_key)
    return bearer(w.a.keys[principal])


def call(w: World, method: str, req: Req, principal: str) -> tuple[int, str]:
    r = w.client.request(
        method, req.url, json=req.json, params=req.params, headers=headers_of(w, principal)
    )
    return r.status_code, r.text


def test_every_role_gets_exactly_what_the_matrix_allows(tmp_path: Path, database_url: str) -> None:
    """Each of 8 callers on each endpoint: the success status if allowed, else 403 or 401."""
    with world(tmp_path, database_url) as w:
        wrong: list[str] = []
        for (method, path), endpoint in MATRIX.items():
            for principal in PRINCIPALS:
                status, text = call(w, method, endpoint.own(w), principal)
                if principal in endpoint.allowed:
                    expected = endpoint.ok
                elif principal == "anonymous":
                    expected = 401
                else:
                    expected = 403
                if status != expected:
                    wrong.append(
                        f"{method} {path} as {principal}: {status} != {expected} {text[:200]}"
                    )
        assert wrong == []


def test_tenant_a_gets_404_for_everything_of_tenant_b(tmp_path: Path, database_url: str) -> None:
    """Sandboxes, jobs, agents, usage, invoices, API keys and tokens of B are 'not found'
    for every key of A allowed on the endpoint; A's listings never mention B."""
    with world(tmp_path, database_url) as w:
        b_ids = [w.b.id, w.b.sandbox_id, w.b.agent_id, w.b.job_id, "rec-b", *w.b.key_ids.values()]
        wrong: list[str] = []
        checked = 0
        for (method, path), endpoint in MATRIX.items():
            tenant_callers = [p for p in TENANT_ROLES if p in endpoint.allowed]
            for principal in tenant_callers:
                if endpoint.other is not None:
                    status, text = call(w, method, endpoint.other(w), principal)
                    checked += 1
                    if status != 404:
                        wrong.append(f"{method} {path} as A's {principal}: {status} {text[:200]}")
                if endpoint.lists:
                    status, text = call(w, method, endpoint.own(w), principal)
                    checked += 1
                    leaked = [i for i in b_ids if i in text]
                    if status != 200 or leaked:
                        wrong.append(f"{method} {path} as A's {principal}: {status} shows {leaked}")
        assert wrong == []
        assert checked >= 30
        # B's things are as they were: its sandbox runs, its keys work, its usage is intact.
        b = bearer(w.b.keys["owner"])
        got = w.client.get(f"/v1/sandboxes/{w.b.sandbox_id}", headers=b).json()
        assert (got["state"], got["timeout_s"]) == ("running", 300)
        assert w.client.get("/v1/sandboxes", headers=bearer(w.b.keys["member"])).status_code == 200
        b_billing = bearer(w.b.keys["billing"])
        usage = w.client.get("/v1/billing/usage", params={"period": NOV}, headers=b_billing).json()
        assert [u["record_id"] for u in usage["items"]] == ["rec-b"]
        # And the data-plane token A asked for names A's sandbox only.
        token = w.client.post(
            f"/v1/sandboxes/{w.a.sandbox_id}/token", headers=bearer(w.a.keys["member"])
        )
        assert token.status_code == 200


def test_key_management_follows_the_role_rules(tmp_path: Path, database_url: str) -> None:
    """An admin cannot mint or revoke owner keys, an owner can; revoked keys get 401;
    listings show roles and never secrets."""
    with world(tmp_path, database_url) as w:
        admin, owner = bearer(w.a.keys["admin"]), bearer(w.a.keys["owner"])
        r = w.client.post("/v1/api-keys", json={"name": "x", "role": "owner"}, headers=admin)
        assert r.status_code == 403, r.text
        r = w.client.delete(f"/v1/api-keys/{w.a.key_ids['owner']}", headers=admin)
        assert r.status_code == 403, r.text
        r = w.client.post("/v1/api-keys", json={"name": "second", "role": "owner"}, headers=owner)
        assert (r.status_code, r.json()["role"]) == (201, "owner"), r.text
        second = r.json()
        r = w.client.post("/v1/api-keys", json={"name": "ci", "role": "root"}, headers=owner)
        assert (r.status_code, r.json()["error"]["field"]) == (400, "role")
        listed = w.client.get("/v1/api-keys", headers=admin).json()["items"]
        assert {k["role"] for k in listed} == set(TENANT_ROLES)
        assert all("key" not in k and "secret_hash" not in k for k in listed)
        assert {k["tenant_id"] for k in listed} == {w.a.id}
        r = w.client.delete(f"/v1/api-keys/{second['id']}", headers=owner)
        assert r.status_code == 204
        assert w.client.get("/v1/sandboxes", headers=bearer(second["key"])).status_code == 401
        r = w.client.delete(f"/v1/api-keys/{w.a.key_ids['viewer']}", headers=admin)
        assert r.status_code == 204
        assert w.client.get("/v1/sandboxes", headers=bearer(w.a.keys["viewer"])).status_code == 401
        r = w.client.delete(f"/v1/api-keys/{w.a.key_ids['admin']}", headers=admin)
        assert r.status_code == 204  # a key may revoke itself ...
        assert w.client.get("/v1/api-keys", headers=admin).status_code == 401  # ... for good
