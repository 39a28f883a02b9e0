"""Invoices end to end: live drafts, finalization with a hash, tampering, late usage, errors."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import text
from test_cp_billing import sandbox_on, stored
from test_cp_sandbox_flows import OPERATOR, ControlPlane, control_plane

from billing.exports import read_csv
from control_plane.store.base import make_engine
from corral.testing import NatsServer, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

OCT = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp())
NOV = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())
HOUR = 3600

Item = dict[str, object]


async def until_listed(cp: ControlPlane, period: str, record_id: str) -> None:
    """Wait until the record is stored (the stream is in order: all before it were handled)."""

    async def present() -> bool:
        return any(item["record_id"] == record_id for item in await stored(cp, period))

    await eventually(present)


async def get_invoice(cp: ControlPlane, tenant_id: str, period: str) -> Item:
    r = await cp.http.get(f"/v1/billing/invoices/{tenant_id}/{period}", headers=OPERATOR)
    assert r.status_code == 200, r.text
    body: Item = r.json()
    return body


async def finalize(cp: ControlPlane, tenant_id: str, period: str) -> Item:
    r = await cp.http.post(f"/v1/billing/invoices/{tenant_id}/{period}/finalize", headers=OPERATOR)
    assert r.status_code == 200, r.text
    body: Item = r.json()
    return body


def amounts(invoice: Item) -> dict[str, str]:
    """Line id → amount, as the API spells them."""
    lines = invoice["lines"]
    assert isinstance(lines, list)
    return {str(line["line_id"]): str(line["amount"]) for line in lines}


def sql(database_url: str, statement: str, **params: object) -> list[tuple[object, ...]]:
    """Run one statement straight against the database, bypassing the control plane."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(statement), params)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


async def test_a_draft_bills_the_month_and_finalizing_records_its_hash_once(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """The draft prices the month's usage per line, rounded once; finalize stores its hash once."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        tenant_id, auth = await cp.tenant()
        agent = await cp.agent(tenant_id)
        box, _ = await sandbox_on(cp, auth)
        await agent.emit_usage(box, "o-1", OCT, OCT + 10 * HOUR, vcpu=4, memory_mb=2048)
        # Crosses into November: only its October hour is billed on the October invoice.
        await agent.emit_usage(box, "o-2", NOV - HOUR, NOV + HOUR, vcpu=1, memory_mb=512)
        await until_listed(cp, "2026-10", "o-2")

        draft = await get_invoice(cp, tenant_id, "2026-10")
        assert (draft["status"], draft["content_hash"], draft["finalized_at"]) == (
            "draft",
            None,
            None,
        )
        # vCPU: 41 vCPU-hours x 0.01667 = 0.68347 -> 0.68; memory: 20.5 GiB-hours x 0.00833
        # = 0.170765 -> 0.17 (half-even, once per line).
        assert sorted(amounts(draft).values()) == ["0.17", "0.68"]
        assert draft["total"] == "0.85"
        assert draft["currency"] == "USD"
        assert {line["kind"] for line in draft["lines"]} == {"usage"}  # type: ignore[union-attr]

        listed = await cp.http.get(
            "/v1/billing/invoices", params={"period": "2026-10"}, headers=OPERATOR
        )
        assert listed.status_code == 200, listed.text
        assert listed.json()["items"] == [draft]

        final = await finalize(cp, tenant_id, "2026-10")
        assert final["status"] == "finalized"
        assert final["total"] == "0.85"
        assert amounts(final) == amounts(draft)
        content_hash = str(final["content_hash"])
        assert len(content_hash) == 64
        assert set(content_hash) <= set("0123456789abcdef")
        assert final["finalized_at"] is not None
        rows = sql(
            database_url,
            "SELECT status, total, content_hash FROM invoices WHERE tenant_id = :t",
            t=tenant_id,
        )
        assert rows == [("finalized", "0.85", content_hash)]
        assert await get_invoice(cp, tenant_id, "2026-10") == final

        again = await cp.http.post(
            f"/v1/billing/invoices/{tenant_id}/2026-10/finalize", headers=OPERATOR
        )
        assert again.status_code == 409, again.text
        assert again.json()["error"]["code"] == "conflict"
        unfinished = await cp.http.post(
            f"/v1/billing/invoices/{tenant_id}/2099-01/finalize", headers=OPERATOR
        )
        assert unfinished.status_code == 409, unfinished.text
        assert await get_invoice(cp, tenant_id, "2026-10") == final


async def test_a_tampered_finalized_invoice_is_refused_loudly(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """Editing a finalized row in SQL makes every read that depends on it fail with a 500."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        tenant_id, auth = await cp.tenant()
        agent = await cp.agent(tenant_id)
        box, _ = await sandbox_on(cp, auth)
        await agent.emit_usage(box, "o-1", OCT, OCT + 10 * HOUR, vcpu=4, memory_mb=2048)
        await until_listed(cp, "2026-10", "o-1")
        final = await finalize(cp, tenant_id, "2026-10")
        ((document, total),) = sql(
            database_url, "SELECT document, total FROM invoices WHERE tenant_id = :t", t=tenant_id
        )
        tampered = json.loads(str(document))
        tampered["lines"][0]["amount"] = str(Decimal(tampered["lines"][0]["amount"]) - 1)
        new_total = str(Decimal(str(total)) - 1)
        tampers = [
            ("UPDATE invoices SET total = :v WHERE tenant_id = :t", new_total),
            ("UPDATE invoices SET watermark = watermark + :v WHERE tenant_id = :t", 1),
            ("UPDATE invoices SET content_hash = :v WHERE tenant_id = :t", "0" * 64),
        ]
        both = "UPDATE invoices SET document = :v, total = :total WHERE tenant_id = :t"
        restore = "UPDATE invoices SET document = :d, total = :total, watermark = :w, "
        restore += "content_hash = :h WHERE tenant_id = :t"
        originals = {
            "d": document,
            "total": total,
            "w": final["watermark"],
            "h": final["content_hash"],
        }
        edits: list[tuple[str, dict[str, object]]] = [
            (statement, {"v": value}) for statement, value in tampers
        ]
        edits.append((both, {"v": json.dumps(tampered), "total": new_total}))
        for statement, params in edits:
            sql(database_url, statement, t=tenant_id, **params)
            for path in (
                f"/v1/billing/invoices/{tenant_id}/2026-10",
                f"/v1/billing/invoices/{tenant_id}/2026-11",
                f"/v1/billing/invoices?period=2026-10&tenant_id={tenant_id}",
            ):
                r = await cp.http.get(path, headers=OPERATOR)
                assert r.status_code == 500, (statement, path, r.text)
                assert r.json()["error"]["code"] == "internal", r.text
            r = await cp.http.get(
                "/v1/billing/export", params={"period": "2026-10"}, headers=OPERATOR
            )
            assert r.status_code == 500, (statement, r.text)
            sql(database_url, restore, t=tenant_id, **originals)
            assert await get_invoice(cp, tenant_id, "2026-10") == final


async def test_late_usage_lands_on_the_next_open_month_and_the_finalized_one_stands(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """October usage that arrives after October was finalized is a November adjustment line."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        tenant_id, auth = await cp.tenant()
        agent = await cp.agent(tenant_id)
        box, _ = await sandbox_on(cp, auth)
        await agent.emit_usage(box, "o-1", OCT, OCT + 10 * HOUR, vcpu=4, memory_mb=2048)
        await until_listed(cp, "2026-10", "o-1")
        final = await finalize(cp, tenant_id, "2026-10")

        await agent.emit_usage(box, "n-1", NOV, NOV + 2 * HOUR, vcpu=1, memory_mb=1024)
        # Late: October usage reported after October was finalized.
        await agent.emit_usage(
            box, "o-late", OCT + 20 * HOUR, OCT + 50 * HOUR, vcpu=2, memory_mb=1024
        )
        await until_listed(cp, "2026-10", "o-late")

        assert await get_invoice(cp, tenant_id, "2026-10") == final
        november = await get_invoice(cp, tenant_id, "2026-11")
        assert november["status"] == "draft"
        by_kind: dict[str, list[Item]] = defaultdict(list)
        for line in november["lines"]:  # type: ignore[union-attr]
            by_kind[line["kind"]].append(line)
        adjustments = {str(line["resource"]): line for line in by_kind["adjustment"]}
        assert set(adjustments) == {"vcpu", "memory"}
        assert {line["usage_period"] for line in adjustments.values()} == {"2026-10"}
        assert all("late usage from 2026-10" in str(a["description"]) for a in adjustments.values())
        # vCPU: 60 vCPU-hours x 0.01667 = 1.0002 -> 1.00; memory: 30 GiB-hours x 0.00833
        # = 0.2499 -> 0.25.
        assert adjustments["vcpu"]["quantity_hours"] == "60.000000000000"
        assert (adjustments["vcpu"]["amount"], adjustments["memory"]["amount"]) == ("1.00", "0.25")
        # November's own usage: 2 vCPU-hours -> 0.03334 -> 0.03; 2 GiB-hours -> 0.01666 -> 0.02.
        assert sorted(str(line["amount"]) for line in by_kind["usage"]) == ["0.02", "0.03"]
        assert november["total"] == "1.30"

        # Exports reconcile with the invoices to the cent: October's is the finalized one.
        for period, invoice, records in (
            ("2026-10", final, {"o-1"}),
            ("2026-11", november, {"n-1", "o-late"}),
        ):
            r = await cp.http.get("/v1/billing/export", params={"period": period}, headers=OPERATOR)
            assert r.status_code == 200, r.text
            path = tmp_path / f"{period}.csv"
            path.write_bytes(r.content)
            rows = list(read_csv(path))
            assert sum(row.billed_cost for row in rows) == Decimal(str(invoice["total"]))
            assert {row.record_id for row in rows} == records
            assert {row.invoice_status for row in rows} == {invoice["status"]}


async def test_invoice_endpoints_name_the_bad_field_and_refuse_tenants(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """A bad period is a 400 naming ``period``; a tenant key is a 403; no tenant is a 404."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        tenant_id, auth = await cp.tenant()
        base = f"/v1/billing/invoices/{tenant_id}"
        cases = [
            ("GET", "/v1/billing/invoices", {"period": "2026-13"}),
            ("GET", "/v1/billing/invoices", {}),
            ("GET", f"{base}/nov", {}),
            ("GET", f"{base}/2026-1", {}),
            ("POST", f"{base}/2026-13/finalize", {}),
        ]
        for method, path, params in cases:
            r = await cp.http.request(method, path, params=params, headers=OPERATOR)
            assert r.status_code == 400, (method, path, r.text)
            assert r.json()["error"]["field"] == "period", (method, path, r.text)
        for method, path, params in [
            ("GET", "/v1/billing/invoices", {"period": "2026-10"}),
            ("GET", f"{base}/2026-10", {}),
            ("POST", f"{base}/2026-10/finalize", {}),
        ]:
            r = await cp.http.request(method, path, params=params, headers=auth)
            assert r.status_code == 403, (method, path, r.text)
        for method in ("GET", "POST"):
            suffix = "/finalize" if method == "POST" else ""
            path = f"/v1/billing/invoices/t_nobody/2026-10{suffix}"
            r = await cp.http.request(method, path, headers=OPERATOR)
            assert r.status_code == 404, (method, r.text)
        empty = await get_invoice(cp, tenant_id, "2026-10")
        assert (empty["total"], empty["lines"], empty["status"]) == ("0", [], "draft")
