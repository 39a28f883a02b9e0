"""Snapshots, restore and fork through the control plane: real uvicorn and nats-server, a
scripted fake agent (the real agent and runtimes are covered by tests/e2e/test_snapshots.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_cp_sandbox_flows import OPERATOR, control_plane

from byoc_agent.protocol.messages import (
    CreateSandboxBody,
    DeleteSnapshotBody,
    RestoreSandboxBody,
    SnapshotSandboxBody,
)
from corral.testing import NatsServer, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.nats, pytest.mark.microvm]

CREATE = {"template": "base", "cpu": 1, "memory_mb": 1024, "timeout_s": 120}


async def test_snapshot_restore_fork_and_delete_with_tenant_isolation(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        tenant_id, auth = await cp.tenant()
        agent = await cp.agent(tenant_id)
        _, other_auth = await cp.tenant("globex")
        r = await cp.http.post(
            "/v1/sandboxes", json={**CREATE, "metadata": {"team": "red"}}, headers=auth
        )
        assert r.status_code == 201, r.text
        source = r.json()

        # Snapshot: a snapshot_sandbox job to the sandbox's agent, then a record.
        r = await cp.http.post(f"/v1/sandboxes/{source['id']}/snapshots", headers=auth)
        assert r.status_code == 201, r.text
        snap = r.json()
        assert snap["sandbox_id"] == source["id"]
        assert snap["agent_id"] == agent.agent_id
        assert (snap["template"], snap["cpu"], snap["memory_mb"]) == ("base", 1, 1024)
        assert snap["isolation"] == "gvisor"
        sent = agent.received[-1].job.body
        assert sent == SnapshotSandboxBody(sandbox_id=source["id"], snapshot_id=snap["id"])
        listed = (await cp.http.get("/v1/snapshots", headers=auth)).json()
        assert [s["id"] for s in listed["items"]] == [snap["id"]]
        assert (await cp.http.get(f"/v1/snapshots/{snap['id']}", headers=auth)).json() == snap

        # Restore: a new sandbox on the same agent with the snapshot's size and template.
        r = await cp.http.post(
            "/v1/sandboxes",
            json={"snapshot_id": snap["id"], "timeout_s": 60, "env": {"A": "1"}},
            headers=auth,
        )
        assert r.status_code == 201, r.text
        restored = r.json()
        assert restored["id"] != source["id"]
        assert restored["state"] == "running"
        assert restored["agent_id"] == agent.agent_id
        assert (restored["template"], restored["cpu"], restored["memory_mb"]) == ("base", 1, 1024)
        assert restored["timeout_s"] == 60
        assert restored["access_token"]
        assert agent.received[-1].job.body == RestoreSandboxBody(
            sandbox_id=restored["id"],
            snapshot_id=snap["id"],
            timeout_s=60,
            env={"A": "1"},
            isolation="gvisor",
        )

        # A restore takes the snapshot's size: asking for one is a clear 400.
        r = await cp.http.post(
            "/v1/sandboxes", json={"snapshot_id": snap["id"], "cpu": 4}, headers=auth
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["field"] == "cpu"
        r = await cp.http.post("/v1/sandboxes", json={"timeout_s": 60}, headers=auth)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["field"] == "template"

        # Another tenant sees none of it.
        assert (
            await cp.http.get(f"/v1/snapshots/{snap['id']}", headers=other_auth)
        ).status_code == 404
        assert (await cp.http.get("/v1/snapshots", headers=other_auth)).json()["items"] == []
        r = await cp.http.post(
            "/v1/sandboxes", json={"snapshot_id": snap["id"]}, headers=other_auth
        )
        assert r.status_code == 404, r.text
        r = await cp.http.delete(f"/v1/snapshots/{snap['id']}", headers=other_auth)
        assert r.status_code == 404
        r = await cp.http.post(f"/v1/sandboxes/{source['id']}/snapshots", headers=other_auth)
        assert r.status_code == 404
        r = await cp.http.post(f"/v1/sandboxes/{source['id']}/fork", json={"count": 1},
                               headers=other_auth)  # fmt: skip
        assert r.status_code == 404

        # Fork: one snapshot, n restores, then the fork's snapshot is deleted.
        for bad in (0, 11):
            r = await cp.http.post(
                f"/v1/sandboxes/{source['id']}/fork", json={"count": bad}, headers=auth
            )
            assert r.status_code == 400, r.text
        before = len(agent.received)
        r = await cp.http.post(
            f"/v1/sandboxes/{source['id']}/fork", json={"count": 3}, headers=auth
        )
        assert r.status_code == 201, r.text
        forks = r.json()["items"]
        ids = {f["id"] for f in forks}
        assert len(ids) == 3
        assert not ids & {source["id"], restored["id"]}
        assert all(f["state"] == "running" and f["metadata"] == {"team": "red"} for f in forks)
        kinds = [rcv.job.body for rcv in agent.received[before:]]
        snap_body, *restores, delete = kinds
        assert isinstance(snap_body, SnapshotSandboxBody)
        assert [b.sandbox_id for b in restores if isinstance(b, RestoreSandboxBody)] == [
            f["id"] for f in forks
        ]
        assert {b.snapshot_id for b in restores if isinstance(b, RestoreSandboxBody)} == {
            snap_body.snapshot_id
        }
        assert delete == DeleteSnapshotBody(
            sandbox_id=source["id"], snapshot_id=snap_body.snapshot_id
        )
        listed = (await cp.http.get("/v1/snapshots", headers=auth)).json()
        assert [s["id"] for s in listed["items"]] == [snap["id"]]

        # Delete: a delete_snapshot job; then it is gone.
        r = await cp.http.delete(f"/v1/snapshots/{snap['id']}", headers=auth)
        assert r.status_code == 204, r.text
        assert agent.received[-1].job.body == DeleteSnapshotBody(
            sandbox_id=source["id"], snapshot_id=snap["id"]
        )
        assert (await cp.http.get("/v1/snapshots", headers=auth)).json()["items"] == []
        r = await cp.http.post("/v1/sandboxes", json={"snapshot_id": snap["id"]}, headers=auth)
        assert r.status_code == 404, r.text


async def test_a_restore_needs_the_agent_that_holds_the_snapshot(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """The snapshot lives on one agent: offline → 503, even when another agent has room."""
    async with control_plane(nats_server, database_url, tmp_path, heartbeat_offline_s=2.0) as cp:
        tenant_id, auth = await cp.tenant()
        holder = await cp.agent(tenant_id)
        r = await cp.http.post("/v1/sandboxes", json=CREATE, headers=auth)
        assert r.status_code == 201, r.text
        r = await cp.http.post(f"/v1/sandboxes/{r.json()['id']}/snapshots", headers=auth)
        assert r.status_code == 201, r.text
        snap = r.json()
        other = await cp.agent(tenant_id)
        await holder.stop()

        async def holder_offline() -> bool:
            got = await cp.http.get(f"/v1/agents/{holder.agent_id}", headers=OPERATOR)
            return bool(got.json()["status"] == "offline")

        await eventually(holder_offline, within_s=15)
        before = len(other.received)
        r = await cp.http.post("/v1/sandboxes", json={"snapshot_id": snap["id"]}, headers=auth)
        assert r.status_code == 503, r.text
        assert "offline" in r.json()["error"]["message"]
        await asyncio.sleep(0.2)  # deliberate: time for a wrongly sent job to arrive (none may)
        assert len(other.received) == before  # nothing was sent to the agent without it


async def test_a_fork_is_all_or_nothing_and_only_running_sandboxes_snapshot(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """The agent has room for three more 2-vCPU sandboxes, not four: a fork of four fails
    with 503, kills the three it made, and deletes its snapshot. A killed sandbox cannot be
    snapshotted (409)."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        tenant_id, auth = await cp.tenant()
        agent = await cp.agent(tenant_id)  # 8 vCPU
        r = await cp.http.post("/v1/sandboxes", json={**CREATE, "cpu": 2}, headers=auth)
        assert r.status_code == 201, r.text
        source = r.json()
        before = len(agent.received)
        r = await cp.http.post(
            f"/v1/sandboxes/{source['id']}/fork", json={"count": 4}, headers=auth
        )
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "capacity"
        bodies = [rcv.job.body for rcv in agent.received[before:]]
        restored = [b.sandbox_id for b in bodies if isinstance(b, RestoreSandboxBody)]
        assert len(restored) == 3
        killed = [b.sandbox_id for b in bodies if b.kind == "kill_sandbox"]
        assert sorted(killed) == sorted(restored)
        assert isinstance(bodies[-1], DeleteSnapshotBody)
        for sid in restored:
            got = (await cp.http.get(f"/v1/sandboxes/{sid}", headers=auth)).json()
            assert got["state"] == "killed"
        assert (await cp.http.get("/v1/snapshots", headers=auth)).json()["items"] == []

        assert (
            await cp.http.delete(f"/v1/sandboxes/{source['id']}", headers=auth)
        ).status_code == 204
        r = await cp.http.post(f"/v1/sandboxes/{source['id']}/snapshots", headers=auth)
        assert r.status_code == 409, r.text


async def test_egress_travels_in_the_create_job_is_shown_and_restores_keep_it(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    """A microVM create sends its egress list in the signed job and the sandbox shows it; a
    restore and a fork take the source's list (the job carries none: the agent's snapshot
    has it); a create without one sends a job without the field."""
    async with control_plane(nats_server, database_url, tmp_path) as cp:
        tenant_id, auth = await cp.tenant()
        agent = await cp.agent(tenant_id, runtimes=("gvisor", "qemu-microvm"))
        egress = ["192.0.2.10:443", "198.51.100.7:5432"]
        r = await cp.http.post(
            "/v1/sandboxes", json={**CREATE, "isolation": "microvm", "egress": egress},
            headers=auth,
        )
        assert r.status_code == 201, r.text
        source = r.json()
        assert (source["isolation"], source["egress"]) == ("microvm", egress)
        sent = agent.received[-1].job.body
        assert isinstance(sent, CreateSandboxBody)
        assert (sent.isolation, sent.egress) == ("microvm", egress)
        got = await cp.http.get(f"/v1/sandboxes/{source['id']}", headers=auth)
        assert got.json()["egress"] == egress

        r = await cp.http.post(f"/v1/sandboxes/{source['id']}/snapshots", headers=auth)
        snap = r.json()
        r = await cp.http.post("/v1/sandboxes", json={"snapshot_id": snap["id"]}, headers=auth)
        assert r.status_code == 201, r.text
        assert r.json()["egress"] == egress
        r = await cp.http.post(f"/v1/sandboxes/{source['id']}/fork", json={"count": 2},
                               headers=auth)  # fmt: skip
        assert r.status_code == 201, r.text
        assert [f["egress"] for f in r.json()["items"]] == [egress, egress]

        r = await cp.http.post("/v1/sandboxes", json=CREATE, headers=auth)
        assert r.status_code == 201, r.text
        assert r.json()["egress"] == []
        plain = agent.received[-1].job.body
        assert isinstance(plain, CreateSandboxBody)
        assert plain.egress == []
        assert "egress" not in plain.model_dump(mode="json")
