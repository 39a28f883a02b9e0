"""The E2B-compatible lifecycle API keeps ``/v1``'s roles and tenant isolation.

E2B's SDK sends a Corral API key in ``X-API-KEY``; what that key may do must not depend on
which API it uses. Runs on SQLite and PostgreSQL with the scripted agent of api_world.
"""

from __future__ import annotations

from pathlib import Path

from api_world import World, world


def e2b(key: str) -> dict[str, str]:
    return {"X-API-KEY": key}


def create(w: World, key: str) -> int:
    r = w.client.post("/v2/sandboxes", json={"templateID": "base", "timeout": 60}, headers=e2b(key))
    return r.status_code


def test_roles_decide_what_an_e2b_key_may_do(tmp_path: Path, database_url: str) -> None:
    """Owner, admin and member create; viewer and billing keys get 403; no key is 401."""
    with world(tmp_path, database_url) as w:
        got = {role: create(w, w.a.keys[role]) for role in ("owner", "admin", "member")}
        assert got == {"owner": 201, "admin": 201, "member": 201}
        assert create(w, w.a.keys["viewer"]) == 403
        assert create(w, w.a.keys["billing"]) == 403
        assert w.client.post("/v2/sandboxes", json={"templateID": "base"}).status_code == 401
        # A viewer may read but not kill.
        viewer = e2b(w.a.keys["viewer"])
        assert w.client.get(f"/sandboxes/{w.a.sandbox_id}", headers=viewer).status_code == 200
        assert w.client.delete(f"/sandboxes/{w.a.sandbox_id}", headers=viewer).status_code == 403


def test_one_tenant_cannot_see_or_touch_anothers_sandbox(tmp_path: Path, database_url: str) -> None:
    """Tenant A's owner key: 404 for B's sandbox on every call; B's sandbox stays running."""
    with world(tmp_path, database_url) as w:
        a = e2b(w.a.keys["owner"])
        other = w.b.sandbox_id
        assert w.client.get(f"/sandboxes/{other}", headers=a).status_code == 404
        assert (
            w.client.post(
                f"/sandboxes/{other}/connect", json={"timeout": 60}, headers=a
            ).status_code
            == 404
        )
        assert (
            w.client.post(
                f"/sandboxes/{other}/timeout", json={"timeout": 60}, headers=a
            ).status_code
            == 404
        )
        assert w.client.delete(f"/sandboxes/{other}", headers=a).status_code == 404
        listed = w.client.get("/v2/sandboxes", headers=a).json()
        assert other not in str(listed)
        b = e2b(w.b.keys["owner"])
        mine = w.client.get(f"/sandboxes/{other}", headers=b)
        assert mine.status_code == 200
        assert mine.json()["state"] == "running"
