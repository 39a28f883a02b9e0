"""The billing role: finance reads usage, invoices and exports with a billing key, nothing else."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_cp_billing import HOUR, NOV, sandbox_on, until_stored
from test_cp_sandbox_flows import OPERATOR, ControlPlane, control_plane
from typer.testing import CliRunner

from billing.exports import read_focus
from corral.cli import app as cli_app
from corral.testing import NatsServer

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


async def billing_key(cp: ControlPlane, name: str = "finance") -> tuple[str, str]:
    """Mint a billing key as the operator; return its id and secret."""
    r = await cp.http.post("/v1/billing/keys", json={"name": name}, headers=OPERATOR)
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"id", "name", "key", "created_at"}
    assert body["key"].startswith("cbk_")
    return body["id"], body["key"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_billing_key_reads_usage_invoices_and_exports(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """Usage, invoices (list and one) and the export answer a billing key as the operator."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        tenant_id, auth = await cp.tenant()
        agent = await cp.agent(tenant_id)
        sandbox_id, _ = await sandbox_on(cp, auth)
        await agent.emit_usage(sandbox_id, "b-1", NOV, NOV + 2 * HOUR, vcpu=2)
        await until_stored(cp, "b-1")
        _, key = await billing_key(cp)
        reads = [
            ("/v1/billing/usage", {"period": "2026-11"}),
            ("/v1/billing/invoices", {"period": "2026-11"}),
            (f"/v1/billing/invoices/{tenant_id}/2026-11", {}),
            ("/v1/billing/export", {"period": "2026-11", "format": "csv"}),
        ]
        for path, params in reads:
            as_finance = await cp.http.get(path, params=params, headers=bearer(key))
            assert as_finance.status_code == 200, (path, as_finance.text)
            as_operator = await cp.http.get(path, params=params, headers=OPERATOR)
            assert as_finance.content == as_operator.content, path
        usage = (await cp.http.get(reads[0][0], params=reads[0][1], headers=bearer(key))).json()
        assert [item["record_id"] for item in usage["items"]] == ["b-1"]
        r = await cp.http.get(reads[1][0], params=reads[1][1], headers=bearer(key))
        invoices = r.json()
        assert [invoice["tenant_id"] for invoice in invoices["items"]] == [tenant_id]


async def test_a_billing_key_is_refused_everything_but_billing_reads(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """Finalize, key minting, tenants, sandboxes, agents and jobs are 403 for a billing key."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        tenant_id, _ = await cp.tenant()
        _, key = await billing_key(cp)
        refused = [
            ("POST", f"/v1/billing/invoices/{tenant_id}/2026-10/finalize", None),
            ("POST", "/v1/billing/keys", {"name": "more"}),
            ("GET", "/v1/billing/keys", None),
            ("POST", "/v1/tenants", {"name": "evil"}),
            ("GET", "/v1/tenants", None),
            ("GET", "/v1/sandboxes", None),
            ("POST", "/v1/sandboxes", {"template": "base", "cpu": 1, "memory_mb": 512}),
            ("GET", "/v1/agents", None),
            ("GET", "/v1/jobs/j_nothing", None),
        ]
        for method, path, body in refused:
            r = await cp.http.request(method, path, json=body, headers=bearer(key))
            assert r.status_code == 403, (method, path, r.text)
        r = await cp.http.post(
            f"/v1/billing/invoices/{tenant_id}/2026-10/finalize", headers=OPERATOR
        )
        assert r.status_code == 200, r.text


async def test_a_revoked_billing_key_is_401_and_a_tenant_key_is_403_on_billing(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """Keys are listed without secrets; a revoked one is a 401; a tenant key is 403 on billing."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        _, tenant_auth = await cp.tenant()
        key_id, key = await billing_key(cp)
        listed = (await cp.http.get("/v1/billing/keys", headers=OPERATOR)).json()["items"]
        assert [(k["id"], k["name"], k["revoked_at"]) for k in listed] == [
            (key_id, "finance", None)
        ]
        assert "key" not in listed[0]
        usage = ("/v1/billing/usage", {"period": "2026-11"})
        for path in (usage[0], "/v1/billing/invoices", "/v1/billing/export", "/v1/billing/keys"):
            r = await cp.http.get(path, params=usage[1], headers=tenant_auth)
            assert r.status_code == 403, (path, r.text)
        r = await cp.http.delete(f"/v1/billing/keys/{key_id}", headers=tenant_auth)
        assert r.status_code == 403
        r = await cp.http.delete(f"/v1/billing/keys/{key_id}", headers=OPERATOR)
        assert r.status_code == 204
        r = await cp.http.get(usage[0], params=usage[1], headers=bearer(key))
        assert r.status_code == 401, r.text
        r = await cp.http.get(usage[0], params=usage[1], headers=bearer(key + "x"))
        assert r.status_code == 401
        listed = (await cp.http.get("/v1/billing/keys", headers=OPERATOR)).json()["items"]
        assert listed[0]["revoked_at"] is not None
        r = await cp.http.delete("/v1/billing/keys/0123456789abcdef", headers=OPERATOR)
        assert r.status_code == 404


async def test_cli_exports_with_a_billing_key_minted_by_the_cli(
    nats_server: NatsServer, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`corral admin billing-key create` prints a key; `corral billing export` needs only it."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        tenant_id, auth = await cp.tenant()
        agent = await cp.agent(tenant_id)
        sandbox_id, _ = await sandbox_on(cp, auth)
        await agent.emit_usage(sandbox_id, "k-1", NOV, NOV + HOUR, vcpu=1)
        await until_stored(cp, "k-1")
        monkeypatch.setenv("CORRAL_API_URL", cp.base_url)
        monkeypatch.setenv("CORRAL_ADMIN_TOKEN", OPERATOR["Authorization"].removeprefix("Bearer "))
        runner = CliRunner()
        created = await asyncio.to_thread(
            runner.invoke, cli_app, ["admin", "billing-key", "create", "finance"]
        )
        assert created.exit_code == 0, created.output
        keys = [word for word in created.stdout.split() if word.startswith("cbk_")]
        assert len(keys) == 1, created.stdout

        monkeypatch.delenv("CORRAL_ADMIN_TOKEN")
        monkeypatch.setenv("CORRAL_BILLING_KEY", keys[0])
        target = tmp_path / "nov.focus.csv"
        args = ["billing", "export", "--period", "2026-11", "--format", "focus", "-o", str(target)]
        result = await asyncio.to_thread(runner.invoke, cli_app, args)
        assert result.exit_code == 0, result.output
        served = await cp.http.get(
            "/v1/billing/export", params={"period": "2026-11", "format": "focus"}, headers=OPERATOR
        )
        assert target.read_bytes() == served.content
        assert {row.record_id for row in read_focus(target)} == {"k-1"}

        monkeypatch.setenv("CORRAL_BILLING_KEY", keys[0] + "x")
        bad = tmp_path / "bad.csv"
        args[-1] = str(bad)
        result = await asyncio.to_thread(runner.invoke, cli_app, args)
        assert result.exit_code == 1
        assert "CORRAL_BILLING_KEY" in result.stderr
        assert not bad.exists()
