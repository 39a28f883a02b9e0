"""Billing end to end: signed usage over a real nats-server, stored once, exported, downloaded."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from test_cp_sandbox_flows import OPERATOR, ControlPlane, control_plane
from typer.testing import CliRunner

from billing import PriceBook, UsageLedger, build_draft
from billing.exports import read_csv, read_focus, reconcile
from billing.exports.parquet_export import read_parquet
from byoc_agent.protocol.signing import SigningKey
from control_plane.store.usage import StoredUsage, Usage
from control_plane.testing import ADMIN_TOKEN
from control_plane.usage_export import usage_record
from corral.cli import app as cli_app
from corral.testing import NatsServer, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

NOV = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())
HOUR = 3600


async def sandbox_on(cp: ControlPlane, auth: dict[str, str]) -> tuple[str, str]:
    """Create a sandbox; return its id and the agent it landed on."""
    r = await cp.http.post(
        "/v1/sandboxes",
        json={"template": "base", "cpu": 1, "memory_mb": 512, "timeout_s": 600},
        headers=auth,
    )
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["agent_id"]


Item = dict[str, object]


async def stored(cp: ControlPlane, period: str = "2026-11", **params: str) -> list[Item]:
    """Every usage record the API lists for the period, following cursors."""
    items: list[dict[str, object]] = []
    query: dict[str, str | int] = {"period": period, "limit": 2, **params}
    while True:
        r = await cp.http.get("/v1/billing/usage", params=query, headers=OPERATOR)
        assert r.status_code == 200, r.text
        body = r.json()
        items.extend(body["items"])
        if body["next_cursor"] is None:
            return items
        query["cursor"] = body["next_cursor"]


async def until_stored(cp: ControlPlane, record_id: str) -> list[dict[str, object]]:
    """Wait until ``record_id`` is listed (the stream is in order: all before it were handled)."""
    found: list[dict[str, object]] = []

    async def present() -> bool:
        found[:] = await stored(cp)
        return any(item["record_id"] == record_id for item in found)

    await eventually(present)
    return found


async def test_signed_usage_is_stored_once_whatever_the_order_and_redelivery(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """Out-of-order records are kept, a duplicate counts once, a conflicting one is ignored."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        tenant_id, auth = await cp.tenant()
        agent = await cp.agent(tenant_id)
        sandbox_id, _ = await sandbox_on(cp, auth)
        await agent.emit_usage(sandbox_id, "u-3", NOV + 2 * HOUR, NOV + 3 * HOUR)
        await agent.emit_usage(sandbox_id, "u-1", NOV, NOV + HOUR, vcpu=2)
        await agent.emit_usage(sandbox_id, "u-1", NOV, NOV + HOUR, vcpu=2)
        await agent.emit_usage(sandbox_id, "u-1", NOV, NOV + HOUR, vcpu=8)
        await agent.emit_usage(sandbox_id, "u-2", NOV + HOUR, NOV + 2 * HOUR)
        items = await until_stored(cp, "u-2")
        assert [item["record_id"] for item in items] == ["u-3", "u-1", "u-2"]
        first = next(item for item in items if item["record_id"] == "u-1")
        assert first["vcpu"] == 2
        assert (first["tenant_id"], first["agent_id"], first["sandbox_id"]) == (
            tenant_id,
            agent.agent_id,
            sandbox_id,
        )
        assert first["start"] == "2026-11-01T00:00:00Z"
        assert await stored(cp, tenant_id="t_nobody") == []
        assert await stored(cp, period="2026-10") == []


async def test_forged_usage_and_usage_for_another_agents_sandbox_are_rejected(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """Only a record signed by the sandbox's own agent, about its own sandbox, is stored."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        tenant_id, auth = await cp.tenant()
        first = await cp.agent(tenant_id)
        second = await cp.agent(tenant_id)
        sandbox_id, owner_id = await sandbox_on(cp, auth)
        owner, other = (first, second) if owner_id == first.agent_id else (second, first)
        await owner.emit_usage(sandbox_id, "forged", NOV, NOV + HOUR, key=SigningKey.generate())
        await other.emit_usage(sandbox_id, "not-mine", NOV, NOV + HOUR)
        await other.emit_usage(sandbox_id, "unknown", NOV, NOV + HOUR, key=owner.key)
        await owner.emit_usage("sbx_nonexistent", "no-sandbox", NOV, NOV + HOUR)
        await owner.emit_usage(sandbox_id, "genuine", NOV, NOV + HOUR)
        items = await until_stored(cp, "genuine")
        assert [(i["record_id"], i["agent_id"]) for i in items] == [("genuine", owner.agent_id)]


async def test_export_bills_each_tenant_and_its_rows_add_up_to_the_invoices(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """CSV, Parquet and FOCUS exports reconcile with invoices built from the same usage."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        acme, acme_auth = await cp.tenant("acme")
        globex, globex_auth = await cp.tenant("globex")
        acme_agent = await cp.agent(acme)
        globex_agent = await cp.agent(globex)
        acme_box, _ = await sandbox_on(cp, acme_auth)
        globex_box, _ = await sandbox_on(cp, globex_auth)
        # Crosses from October into November; only the November part is billed for 2026-11.
        await acme_agent.emit_usage(acme_box, "a-1", NOV - HOUR, NOV + HOUR, vcpu=2)
        for n in range(7):
            start = NOV + 86400 + n * 333
            await acme_agent.emit_usage(
                acme_box, f"a-s{n}", start, start + 333, vcpu=1, memory_mb=1000
            )
        await globex_agent.emit_usage(globex_box, "g-1", NOV + 5, NOV + 5 + 7 * HOUR, vcpu=4)
        await until_stored(cp, "a-s6")
        items = await until_stored(cp, "g-1")

        ledgers: dict[str, UsageLedger] = defaultdict(UsageLedger)
        for seq, item in enumerate(items, start=1):
            usage = Usage(
                tenant_id=str(item["tenant_id"]),
                agent_id=str(item["agent_id"]),
                record_id=str(item["record_id"]),
                sandbox_id=str(item["sandbox_id"]),
                start=datetime.fromisoformat(str(item["start"])),
                end=datetime.fromisoformat(str(item["end"])),
                vcpu=int(str(item["vcpu"])),
                memory_mb=int(str(item["memory_mb"])),
                gpu_count=0,
                gpu_model=None,
                isolation=str(item["isolation"]),
                template=str(item["template"]),
                host=str(item["host"]),
            )
            record = usage_record(StoredUsage(seq, usage, datetime.now(UTC)))
            ledgers[record.tenant_id].ingest(record)
        invoices = [
            build_draft(tenant, "2026-11", ledgers[tenant], PriceBook())
            for tenant in sorted(ledgers)
        ]
        assert all(invoice.total > 0 for invoice in invoices)

        readers = {"csv": read_csv, "parquet": read_parquet, "focus": read_focus}
        for fmt, reader in readers.items():
            r = await cp.http.get(
                "/v1/billing/export", params={"period": "2026-11", "format": fmt}, headers=OPERATOR
            )
            assert r.status_code == 200, r.text
            path = tmp_path / f"export.{fmt}"
            path.write_bytes(r.content)
            rows = list(reader(path))
            billed: dict[str, Decimal] = defaultdict(Decimal)
            for row in rows:
                billed[row.tenant_id] += row.billed_cost
            assert billed == {invoice.tenant_id: invoice.total for invoice in invoices}, fmt
            assert reconcile(rows, invoices).ok, fmt
            assert {row.record_id for row in rows} == {i["record_id"] for i in items}


async def test_export_and_usage_name_the_bad_field(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """A bad period or format is a 400 naming the field; tenants cannot export."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        _, auth = await cp.tenant()
        cases = [
            ("/v1/billing/export", {"period": "2026-13"}, "period"),
            ("/v1/billing/export", {"period": "nov"}, "period"),
            ("/v1/billing/export", {}, "period"),
            ("/v1/billing/export", {"period": "2026-11", "format": "xlsx"}, "format"),
            ("/v1/billing/usage", {"period": "2026-1"}, "period"),
            ("/v1/billing/usage", {"period": "2026-11", "cursor": "bogus"}, "cursor"),
        ]
        for path, params, field in cases:
            r = await cp.http.get(path, params=params, headers=OPERATOR)
            assert r.status_code == 400, (path, params, r.text)
            assert r.json()["error"]["field"] == field, (path, params, r.text)
        r = await cp.http.get("/v1/billing/export", params={"period": "2026-11"}, headers=auth)
        assert r.status_code == 403
        r = await cp.http.get("/v1/billing/export", params={"period": "2030-01"}, headers=OPERATOR)
        assert r.status_code == 200
        assert r.text.splitlines()[0].startswith("invoice_id,")
        assert len(r.text.splitlines()) == 1


async def test_cli_downloads_the_export_to_a_file(
    nats_server: NatsServer, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`corral billing export` writes the same FOCUS file the API serves; errors are one line."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        tenant_id, auth = await cp.tenant()
        agent = await cp.agent(tenant_id)
        sandbox_id, _ = await sandbox_on(cp, auth)
        await agent.emit_usage(sandbox_id, "c-1", NOV, NOV + 90 * 60, vcpu=3, memory_mb=2048)
        await until_stored(cp, "c-1")
        monkeypatch.setenv("CORRAL_API_URL", cp.base_url)
        monkeypatch.setenv("CORRAL_ADMIN_TOKEN", ADMIN_TOKEN)
        runner = CliRunner()
        target = tmp_path / "nov.focus.csv"
        args = ["billing", "export", "--period", "2026-11", "--format", "focus", "-o", str(target)]
        result = await asyncio.to_thread(runner.invoke, cli_app, args)
        assert result.exit_code == 0, result.output
        served = await cp.http.get(
            "/v1/billing/export", params={"period": "2026-11", "format": "focus"}, headers=OPERATOR
        )
        assert target.read_bytes() == served.content
        rows = list(read_focus(target))
        assert [row.record_id for row in rows] == ["c-1", "c-1"]
        assert not (tmp_path / "nov.focus.csv.part").exists()

        bad = tmp_path / "bad.csv"
        args = ["billing", "export", "--period", "2026-13", "--format", "csv", "-o", str(bad)]
        result = await asyncio.to_thread(runner.invoke, cli_app, args)
        assert result.exit_code == 1
        assert "period" in result.stderr
        assert not bad.exists()
        assert not (tmp_path / "bad.csv.part").exists()

        args = ["billing", "export", "--period", "2026-11", "--format", "xlsx", "-o", str(bad)]
        result = await asyncio.to_thread(runner.invoke, cli_app, args)
        assert result.exit_code == 2
        assert "--format" in result.stderr
